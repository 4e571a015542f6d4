//! Triggers: what makes a step run.
//!
//! A trigger is a tree of [`step`] completions and route [`label`]s (or typed [`route`]s) joined
//! with [`or`] and [`and`], nested freely. Step names and route labels live in two separate
//! namespaces: a route called `write` never fires the listeners of a step called `write`.
//!
//! ```
//! use crewflow_core::trigger::{and, label, or, step};
//!
//! // run after `draft` completes, or whenever a router returns `revise`
//! let t = or([step("draft"), label("revise")]);
//! // run once both `legal` and `style` have completed (in the same round of a loop)
//! let join = and([step("legal"), step("style")]);
//! assert_eq!(t.to_string(), "or(draft, 'revise')");
//! assert_eq!(join.to_string(), "and(legal, style)");
//!
//! // the same with operators, spelled alike in `#[listen(..)]`: `&` binds tighter than `|`
//! assert_eq!(step("draft") | label("revise"), t);
//! assert_eq!(step("legal") & step("style"), join);
//! ```
//!
//! `or` and `and` take a list here (`and([step("a"), step("b")])`); in the macro's attributes
//! they take arguments (`#[listen(and(a, b))]`). The operators are one spelling for both:
//! `step("a") & step("b")` here, `#[listen(a & b)]` there.
//!
//! The exact semantics (rounds, joins inside loops, `or` firing once per round) are written down
//! in `docs/semantics.md`.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::route::Route;

/// A condition over step completions and route labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The completion of the named step.
    Step(Arc<str>),
    /// A route label returned by any router of the flow.
    Label(RouteLabel),
    /// Satisfied when any member is.
    Or(Vec<Trigger>),
    /// Satisfied when every member is.
    And(Vec<Trigger>),
}

/// A route label, with the name of the route type that declared it (for typed routes), so that
/// build errors can say where a label comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RouteLabel {
    /// The label.
    pub label: Arc<str>,
    /// The Rust type that returns it, for typed routes.
    #[serde(skip)]
    pub route_type: Option<&'static str>,
}

/// The completion of step `name`.
pub fn step(name: impl Into<Arc<str>>) -> Trigger {
    Trigger::Step(name.into())
}

/// The route label `name`, returned by a router.
pub fn label(name: impl Into<Arc<str>>) -> Trigger {
    Trigger::Label(RouteLabel { label: name.into(), route_type: None })
}

/// The label of a typed route value, e.g. `route(Lane::Security)`.
pub fn route<R: Route>(value: R) -> Trigger {
    Trigger::Label(RouteLabel { label: Arc::from(value.label().as_ref()), route_type: Some(R::TYPE_NAME) })
}

/// Satisfied when any member is.
pub fn or(members: impl IntoIterator<Item = Trigger>) -> Trigger {
    Trigger::Or(members.into_iter().collect())
}

/// Satisfied when every member is.
pub fn and(members: impl IntoIterator<Item = Trigger>) -> Trigger {
    Trigger::And(members.into_iter().collect())
}

/// `a | b`: [`Trigger::or`].
impl<T: Into<Trigger>> std::ops::BitOr<T> for Trigger {
    type Output = Trigger;
    fn bitor(self, other: T) -> Trigger {
        self.or(other)
    }
}

/// `a & b`: [`Trigger::and`].
impl<T: Into<Trigger>> std::ops::BitAnd<T> for Trigger {
    type Output = Trigger;
    fn bitand(self, other: T) -> Trigger {
        self.and(other)
    }
}

impl Trigger {
    /// `or(self, other)`, flattening nested `or`s.
    pub fn or(self, other: impl Into<Trigger>) -> Trigger {
        let other = other.into();
        match self {
            Trigger::Or(mut members) => {
                members.push(other);
                Trigger::Or(members)
            }
            this => Trigger::Or(vec![this, other]),
        }
    }

    /// `and(self, other)`, flattening nested `and`s.
    pub fn and(self, other: impl Into<Trigger>) -> Trigger {
        let other = other.into();
        match self {
            Trigger::And(mut members) => {
                members.push(other);
                Trigger::And(members)
            }
            this => Trigger::And(vec![this, other]),
        }
    }

    /// Every step name mentioned anywhere in the tree.
    pub fn steps(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.visit(&mut |t| {
            if let Trigger::Step(s) = t {
                out.push(&**s);
            }
        });
        out
    }

    /// Every route label mentioned anywhere in the tree.
    pub fn labels(&self) -> Vec<&RouteLabel> {
        let mut out = Vec::new();
        self.visit(&mut |t| {
            if let Trigger::Label(l) = t {
                out.push(l);
            }
        });
        out
    }

    fn visit<'a>(&'a self, f: &mut impl FnMut(&'a Trigger)) {
        f(self);
        if let Trigger::Or(members) | Trigger::And(members) = self {
            for m in members {
                m.visit(f);
            }
        }
    }
}

/// A step name converts into the trigger "that step completed".
impl From<&str> for Trigger {
    fn from(name: &str) -> Self {
        step(name)
    }
}

impl From<String> for Trigger {
    fn from(name: String) -> Self {
        step(name)
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Step(s) => write!(f, "{s}"),
            Trigger::Label(l) => write!(f, "'{}'", l.label),
            Trigger::Or(m) | Trigger::And(m) => {
                f.write_str(if matches!(self, Trigger::Or(_)) { "or(" } else { "and(" })?;
                for (i, t) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{t}")?;
                }
                f.write_str(")")
            }
        }
    }
}
