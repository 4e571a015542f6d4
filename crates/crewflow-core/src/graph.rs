//! The flow graph: steps, their normalised trigger conditions and the indexes the frontier uses
//! to find who listens to what. Built once per flow from a [`GraphSpec`] and validated there:
//! every error a definition can have is reported here, before anything runs.

use crate::error::BuildError;
use crewflow_rules::GraphRule;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::error::Error;
use crate::output::TypeInfo;
use crate::trigger::Trigger;

/// How a step is started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartKind {
    /// Not a start: a listener, run when its trigger is satisfied.
    Listener,
    /// Runs at kickoff.
    Always,
    /// Runs at kickoff when a predicate on the state holds (evaluated by the driver).
    When,
    /// A conditional start: runs when its trigger is satisfied. When a flow has no unconditional
    /// start, its conditional starts also run at kickoff.
    Conditional,
}

/// The routing part of a router step.
#[derive(Clone, Debug)]
pub struct RouterSpec {
    /// Labels the router can return.
    pub labels: Vec<Arc<str>>,
    /// Labels that may go unhandled.
    pub terminal: Vec<Arc<str>>,
    /// The router's return type name.
    pub route_type: &'static str,
}

/// Where a step is defined: the Rust file, line and column of the `FlowBuilder` call that added
/// it (or of its method under `#[flow]`), or a declarative document and the line of its method.
/// Pictures show it when a step is clicked; it is no part of the graph's fingerprint, so moving
/// a step in its file leaves stored runs resumable.
///
/// ```
/// use crewflow_core::graph::SourceLocation;
///
/// let at = SourceLocation::new("src/main.rs", 12, 5);
/// assert_eq!(at.to_string(), "src/main.rs:12:5");
/// assert_eq!(SourceLocation::new("flows/triage.yaml", 7, 0).to_string(), "flows/triage.yaml:7");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceLocation {
    /// The file, as the compiler names it (`file!()`, relative to the workspace) or as the
    /// document was read (its path, or `<yaml>` for text given inline).
    pub file: Cow<'static, str>,
    /// The line, from 1.
    pub line: u32,
    /// The column, from 1; 0 when unknown (not written).
    pub column: u32,
}

impl SourceLocation {
    /// A location from its parts.
    pub fn new(file: impl Into<Cow<'static, str>>, line: u32, column: u32) -> SourceLocation {
        SourceLocation { file: file.into(), line, column }
    }
}

impl From<&'static std::panic::Location<'static>> for SourceLocation {
    fn from(at: &'static std::panic::Location<'static>) -> SourceLocation {
        SourceLocation { file: Cow::Borrowed(at.file()), line: at.line(), column: at.column() }
    }
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            0 => write!(f, "{}:{}", self.file, self.line),
            column => write!(f, "{}:{}:{column}", self.file, self.line),
        }
    }
}

/// One step of a [`GraphSpec`]: its name, how it starts, its trigger and its types.
#[derive(Clone, Debug)]
pub struct StepSpec {
    /// The step's name.
    pub name: Arc<str>,
    /// How it starts.
    pub start: StartKind,
    /// Its trigger (required for listeners, routers and conditional starts).
    pub trigger: Option<Trigger>,
    /// Present for routers.
    pub router: Option<RouterSpec>,
    /// The type of its input parameter, if it takes one.
    pub input: Option<TypeInfo>,
    /// The type of its output.
    pub output: Option<TypeInfo>,
    /// Where it is defined, if known (not part of the fingerprint).
    pub source: Option<SourceLocation>,
}

/// A flow definition without handlers: enough to validate it and to drive its frontier.
#[derive(Clone, Debug, Default)]
pub struct GraphSpec {
    /// The flow's name.
    pub name: String,
    /// Its steps, in declaration order (the order breaks ties everywhere).
    pub steps: Vec<StepSpec>,
}

/// A leaf of a condition: a step completion or a route label, by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Leaf {
    Step(u32),
    Label(u32),
}

#[derive(Clone, Debug)]
pub(crate) enum CondNode {
    Leaf { leaf: Leaf, term: u16 },
    Or(Vec<u16>),
    And(Vec<u16>),
}

/// How a condition is evaluated; the common shapes have fast paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// One trigger: fires on every occurrence, keeps no state.
    Single,
    /// `or` of plain triggers: fires once per round, keeps only the last firing.
    FlatOr,
    /// Anything with an `and`: keeps per-member progress.
    General,
}

/// A normalised condition tree; node 0 is the root.
#[derive(Clone, Debug)]
pub(crate) struct Cond {
    pub nodes: Vec<CondNode>,
    pub shape: Shape,
    /// The root is an `or` of two or more members: it fires once per round.
    pub once_per_round: bool,
    pub terms: u16,
    /// Where the frontier keeps this listener's state (only `or` and `and` listeners have
    /// some; single triggers keep none).
    pub state_index: u32,
}

impl Cond {
    /// Whether the tree is satisfied given which of its terms (leaves, numbered in order) are.
    pub fn satisfied(&self, term_done: &impl Fn(u16) -> bool) -> bool {
        self.node_satisfied(0, term_done)
    }

    fn node_satisfied(&self, ix: u16, term_done: &impl Fn(u16) -> bool) -> bool {
        match &self.nodes[ix as usize] {
            CondNode::Leaf { term, .. } => term_done(*term),
            CondNode::Or(children) => children.iter().any(|c| self.node_satisfied(*c, term_done)),
            CondNode::And(children) => children.iter().all(|c| self.node_satisfied(*c, term_done)),
        }
    }

    /// The terms that make the tree satisfied: all members of an `and`, the first satisfied
    /// member of an `or`. These are the events the firing descends from.
    pub fn satisfying_terms(&self, term_done: &impl Fn(u16) -> bool, out: &mut SmallVec<[u16; 4]>) {
        self.collect(0, term_done, out);
    }

    fn collect(&self, ix: u16, term_done: &impl Fn(u16) -> bool, out: &mut SmallVec<[u16; 4]>) {
        match &self.nodes[ix as usize] {
            CondNode::Leaf { term, .. } => out.push(*term),
            CondNode::Or(children) => {
                if let Some(c) = children.iter().find(|c| self.node_satisfied(**c, term_done)) {
                    self.collect(*c, term_done, out);
                }
            }
            CondNode::And(children) => {
                for c in children {
                    self.collect(*c, term_done, out);
                }
            }
        }
    }
}

/// A listener subscribed to a leaf, with the terms of its condition that leaf fills.
#[derive(Clone, Debug)]
pub(crate) struct Subscription {
    pub listener: u32,
    pub terms: SmallVec<[u16; 2]>,
}

#[derive(Clone, Debug)]
pub(crate) struct StepNode {
    pub name: Arc<str>,
    pub start: StartKind,
    pub cond: Option<Cond>,
    pub trigger: Option<Trigger>,
    /// Label indexes this router may return (empty for other steps).
    pub routes: Vec<u32>,
    pub router: Option<RouterSpec>,
    pub source: Option<SourceLocation>,
}

/// A validated flow graph.
#[derive(Clone, Debug)]
pub struct Graph {
    pub(crate) name: Arc<str>,
    pub(crate) steps: Vec<StepNode>,
    pub(crate) labels: Vec<Arc<str>>,
    label_index: HashMap<Arc<str>, u32>,
    step_index: HashMap<Arc<str>, u32>,
    pub(crate) by_step: Vec<Vec<Subscription>>,
    pub(crate) by_label: Vec<Vec<Subscription>>,
    pub(crate) entry: Vec<u32>,
    fingerprint: u64,
}

impl Graph {
    /// The flow's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Step names in declaration order.
    pub fn step_names(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().map(|s| &*s.name)
    }

    /// The number of steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// True when the graph has no steps (never the case for a validated graph).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The index of a step.
    pub fn step_index(&self, name: &str) -> Option<u32> {
        self.step_index.get(name).copied()
    }

    /// The name of step `ix`.
    pub fn step_name(&self, ix: u32) -> &str {
        &self.steps[ix as usize].name
    }

    /// The index of a route label.
    pub fn label_index(&self, label: &str) -> Option<u32> {
        self.label_index.get(label).copied()
    }

    /// The label with index `ix`.
    pub fn label_name(&self, ix: u32) -> &str {
        &self.labels[ix as usize]
    }

    /// The labels router `ix` declared (empty if it is not a router).
    pub fn routes_of(&self, ix: u32) -> impl Iterator<Item = &str> {
        self.steps[ix as usize].routes.iter().map(|l| &*self.labels[*l as usize])
    }

    /// Whether step `ix` is a router.
    pub fn is_router(&self, ix: u32) -> bool {
        self.steps[ix as usize].router.is_some()
    }

    /// How step `ix` starts.
    pub fn start_kind(&self, ix: u32) -> &StartKind {
        &self.steps[ix as usize].start
    }

    /// The trigger of step `ix`, if it has one.
    pub fn trigger(&self, ix: u32) -> Option<&Trigger> {
        self.steps[ix as usize].trigger.as_ref()
    }

    /// Where step `ix` is defined, if known (see [`SourceLocation`]).
    pub fn source(&self, ix: u32) -> Option<&SourceLocation> {
        self.steps[ix as usize].source.as_ref()
    }

    /// The steps started at kickoff: the unconditional starts, or, when there are none, every
    /// conditional start.
    pub fn entry_steps(&self) -> &[u32] {
        &self.entry
    }

    /// A stable hash of the definition (names, triggers, routes). Checkpoints record it so a run
    /// is never resumed against a different graph.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

impl GraphSpec {
    /// Validates the definition and builds the graph. Every problem is reported with the step
    /// at fault and the fix.
    pub fn compile(&self) -> Result<Graph, Error> {
        let flow = self.name.clone();
        let mut step_index: HashMap<Arc<str>, u32> = HashMap::new();
        for (ix, s) in self.steps.iter().enumerate() {
            if !valid_name(&s.name) {
                return Err(Error::Build(BuildError::InvalidStepName { name: s.name.to_string() }));
            }
            if step_index.insert(s.name.clone(), ix as u32).is_some() {
                return Err(Error::Build(BuildError::DuplicateStep { flow, name: s.name.to_string() }));
            }
        }
        crewflow_rules::check_start(&flow, self.steps.iter().any(|s| s.start != StartKind::Listener))
            .map_err(BuildError::from)?;

        let (labels, label_index, label_owner) = self.declared_labels()?;

        let mut nodes = Vec::with_capacity(self.steps.len());
        for s in &self.steps {
            let cond = match (&s.start, &s.trigger) {
                (StartKind::Always | StartKind::When, _) => None,
                (_, None) => {
                    return Err(BuildError::NoTrigger { step: s.name.to_string() }.into());
                }
                (_, Some(t)) => Some(self.compile_trigger(s, t, &step_index, &label_index, &label_owner)?),
            };
            let routes = s
                .router
                .as_ref()
                .map(|r| r.labels.iter().filter_map(|l| label_index.get(l).copied()).collect())
                .unwrap_or_default();
            nodes.push(StepNode {
                name: s.name.clone(),
                start: s.start.clone(),
                cond,
                trigger: s.trigger.clone(),
                routes,
                router: s.router.clone(),
                source: s.source.clone(),
            });
        }

        let stateful = nodes.iter_mut().filter_map(|n| n.cond.as_mut()).filter(|c| c.shape != Shape::Single);
        for (index, cond) in stateful.enumerate() {
            cond.state_index = index as u32;
        }
        self.check_routes_handled(&nodes, &labels)?;
        self.check_payload_types(&step_index, &label_owner)?;

        let (by_step, by_label) = subscriptions(&nodes, labels.len());
        let has_unconditional = nodes.iter().any(|n| matches!(n.start, StartKind::Always | StartKind::When));
        let entry = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| match n.start {
                StartKind::Always | StartKind::When => true,
                StartKind::Conditional => !has_unconditional,
                StartKind::Listener => false,
            })
            .map(|(i, _)| i as u32)
            .collect();
        let fingerprint = fingerprint(&self.name, &nodes, &labels);
        Ok(Graph {
            name: Arc::from(self.name.as_str()),
            steps: nodes,
            labels,
            label_index,
            step_index,
            by_step,
            by_label,
            entry,
            fingerprint,
        })
    }

    /// Collects every label the routers declare, refusing one label used by two route types.
    #[allow(clippy::type_complexity)]
    fn declared_labels(
        &self,
    ) -> Result<(Vec<Arc<str>>, HashMap<Arc<str>, u32>, HashMap<Arc<str>, (usize, &'static str)>), Error> {
        let mut labels = Vec::new();
        let mut index = HashMap::new();
        let mut owner: HashMap<Arc<str>, (usize, &'static str)> = HashMap::new();
        for (ix, s) in self.steps.iter().enumerate() {
            let Some(r) = &s.router else { continue };
            for l in &r.labels {
                match owner.get(l) {
                    Some((first, first_type)) if *first_type != r.route_type => {
                        return Err(Error::Build(BuildError::LabelConflict {
                            label: l.to_string(),
                            first: self.steps[*first].name.to_string(),
                            first_type,
                            second: s.name.to_string(),
                            second_type: r.route_type,
                        }));
                    }
                    Some(_) => {}
                    None => {
                        owner.insert(l.clone(), (ix, r.route_type));
                        index.insert(l.clone(), labels.len() as u32);
                        labels.push(l.clone());
                    }
                }
            }
        }
        Ok((labels, index, owner))
    }

    fn compile_trigger(
        &self,
        s: &StepSpec,
        t: &Trigger,
        steps: &HashMap<Arc<str>, u32>,
        labels: &HashMap<Arc<str>, u32>,
        owner: &HashMap<Arc<str>, (usize, &'static str)>,
    ) -> Result<Cond, Error> {
        let normal = normalise(t, &s.name)?;
        let mut nodes = Vec::new();
        let mut terms = 0u16;
        let resolve = |leaf: &Trigger| -> Result<Leaf, Error> {
            match leaf {
                Trigger::Step(name) => {
                    crewflow_rules::check_step_trigger(&self.name, &s.name, name, steps.keys().map(|k| &**k))
                        .map_err(BuildError::from)?;
                    Ok(Leaf::Step(steps[name]))
                }
                Trigger::Label(l) => {
                    let step_names = steps.keys().map(|k| &**k);
                    crewflow_rules::check_label_trigger(
                        &self.name,
                        &s.name,
                        &l.label,
                        labels.keys().map(|k| &**k),
                        step_names,
                    )
                    .map_err(BuildError::from)?;
                    let ix = labels[&l.label];
                    // A typed trigger must come from a router of that very type: a label of
                    // the same spelling from another route type is not the one it names.
                    match (l.route_type, owner.get(&l.label)) {
                        (Some(want), Some((_, have))) if want != *have => {
                            Err(BuildError::from(GraphRule::UnknownLabel {
                                flow: self.name.clone(),
                                listener: s.name.to_string(),
                                label: l.label.to_string(),
                                suggestion: None,
                                names_a_step: false,
                            })
                            .into())
                        }
                        _ => Ok(Leaf::Label(ix)),
                    }
                }
                Trigger::Or(_) | Trigger::And(_) => Err(Error::Internal("leaf expected".into())),
            }
        };
        build_nodes(&normal, &mut nodes, &mut terms, &resolve)?;
        let shape = match &nodes[0] {
            CondNode::Leaf { .. } => Shape::Single,
            CondNode::Or(children) if children.iter().all(|c| matches!(nodes[*c as usize], CondNode::Leaf { .. })) => {
                Shape::FlatOr
            }
            _ => Shape::General,
        };
        let once_per_round = matches!(nodes[0], CondNode::Or(_));
        Ok(Cond { nodes, shape, once_per_round, terms, state_index: u32::MAX })
    }

    fn check_routes_handled(&self, nodes: &[StepNode], labels: &[Arc<str>]) -> Result<(), Error> {
        let mut handled = vec![false; labels.len()];
        for n in nodes {
            if let Some(c) = &n.cond {
                for node in &c.nodes {
                    if let CondNode::Leaf { leaf: Leaf::Label(l), .. } = node {
                        handled[*l as usize] = true;
                    }
                }
            }
        }
        for (spec, node) in self.steps.iter().zip(nodes) {
            let Some(r) = &spec.router else { continue };
            if r.labels.is_empty() {
                return Err(Error::Build(BuildError::RoutesNotDeclared {
                    router: spec.name.to_string(),
                    route_type: r.route_type,
                }));
            }
            let is_handled =
                |label: &str| node.routes.iter().any(|l| handled[*l as usize] && &*labels[*l as usize] == label);
            let routes = node.routes.iter().map(|l| &*labels[*l as usize]);
            let terminal = |label: &str| r.terminal.iter().any(|t| &**t == label);
            if let Some(rule) = crewflow_rules::unhandled_routes(&self.name, &spec.name, routes, is_handled, terminal)
                .into_iter()
                .next()
            {
                return Err(BuildError::from(rule).into());
            }
        }
        Ok(())
    }

    /// A step's input type must match the output of every step or route that can trigger it.
    fn check_payload_types(
        &self,
        steps: &HashMap<Arc<str>, u32>,
        owner: &HashMap<Arc<str>, (usize, &'static str)>,
    ) -> Result<(), Error> {
        for s in &self.steps {
            let (Some(input), Some(trigger)) = (&s.input, &s.trigger) else {
                continue;
            };
            if input.accepts_anything() || matches!(s.start, StartKind::Always | StartKind::When) {
                continue;
            }
            let sources =
                trigger.steps().into_iter().filter_map(|n| steps.get(n).map(|ix| ("step", *ix as usize))).chain(
                    trigger.labels().into_iter().filter_map(|l| owner.get(&l.label).map(|(ix, _)| ("route", *ix))),
                );
            for (kind, ix) in sources {
                let src = &self.steps[ix];
                if let Some(out) = &src.output
                    && !input.accepts(out)
                {
                    return Err(Error::Build(BuildError::PayloadTypeMismatch {
                        listener: s.name.to_string(),
                        input_type: input.name,
                        trigger: kind,
                        source_step: src.name.to_string(),
                        output_type: out.name,
                    }));
                }
            }
        }
        Ok(())
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Flattens single-member and same-kind nesting and drops duplicate members.
fn normalise(t: &Trigger, step: &str) -> Result<Trigger, Error> {
    match t {
        Trigger::Step(_) | Trigger::Label(_) => Ok(t.clone()),
        Trigger::Or(members) | Trigger::And(members) => {
            let is_or = matches!(t, Trigger::Or(_));
            if members.is_empty() {
                return Err(Error::Build(BuildError::EmptyTrigger {
                    step: step.to_string(),
                    combinator: if is_or { "or" } else { "and" },
                }));
            }
            let mut flat: Vec<Trigger> = Vec::new();
            for m in members {
                let m = normalise(m, step)?;
                let nested = match (&m, is_or) {
                    (Trigger::Or(inner), true) | (Trigger::And(inner), false) => inner.clone(),
                    _ => vec![m],
                };
                for n in nested {
                    if !flat.iter().any(|f| same_trigger(f, &n)) {
                        flat.push(n);
                    }
                }
            }
            if flat.len() == 1 {
                return Ok(flat.remove(0));
            }
            Ok(if is_or { Trigger::Or(flat) } else { Trigger::And(flat) })
        }
    }
}

fn same_trigger(a: &Trigger, b: &Trigger) -> bool {
    match (a, b) {
        (Trigger::Label(x), Trigger::Label(y)) => x.label == y.label,
        _ => a == b,
    }
}

fn build_nodes(
    t: &Trigger,
    nodes: &mut Vec<CondNode>,
    terms: &mut u16,
    resolve: &impl Fn(&Trigger) -> Result<Leaf, Error>,
) -> Result<u16, Error> {
    let ix = nodes.len() as u16;
    match t {
        Trigger::Or(members) | Trigger::And(members) => {
            nodes.push(CondNode::Or(Vec::new()));
            let children =
                members.iter().map(|m| build_nodes(m, nodes, terms, resolve)).collect::<Result<Vec<_>, _>>()?;
            nodes[ix as usize] =
                if matches!(t, Trigger::Or(_)) { CondNode::Or(children) } else { CondNode::And(children) };
        }
        leaf => {
            nodes.push(CondNode::Leaf { leaf: resolve(leaf)?, term: *terms });
            *terms += 1;
        }
    }
    Ok(ix)
}

/// Reverse indexes: for each step and label, the listeners that mention it (in declaration order).
fn subscriptions(nodes: &[StepNode], labels: usize) -> (Vec<Vec<Subscription>>, Vec<Vec<Subscription>>) {
    let mut by_step: Vec<Vec<Subscription>> = vec![Vec::new(); nodes.len()];
    let mut by_label: Vec<Vec<Subscription>> = vec![Vec::new(); labels];
    for (listener, n) in nodes.iter().enumerate() {
        let Some(c) = &n.cond else { continue };
        for node in &c.nodes {
            let CondNode::Leaf { leaf, term } = node else {
                continue;
            };
            let list = match leaf {
                Leaf::Step(s) => &mut by_step[*s as usize],
                Leaf::Label(l) => &mut by_label[*l as usize],
            };
            match list.last_mut() {
                Some(sub) if sub.listener == listener as u32 => sub.terms.push(*term),
                _ => list.push(Subscription { listener: listener as u32, terms: smallvec::smallvec![*term] }),
            }
        }
    }
    (by_step, by_label)
}

/// FNV-1a over the definition's text: stable across processes and compiler versions.
fn fingerprint(name: &str, nodes: &[StepNode], labels: &[Arc<str>]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |s: &str| {
        for b in s.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(name);
    for n in nodes {
        feed(&n.name);
        feed(match n.start {
            StartKind::Listener => "listen",
            StartKind::Always => "start",
            StartKind::When => "start_when",
            StartKind::Conditional => "start_on",
        });
        feed(&n.trigger.as_ref().map(|t| t.to_string()).unwrap_or_default());
        for r in &n.routes {
            feed(&labels[*r as usize]);
        }
    }
    h
}
