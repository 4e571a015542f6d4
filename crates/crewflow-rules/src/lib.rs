//! The rules that make a crewflow flow definition valid, in one place.
//!
//! A flow can be defined three ways: the `#[flow]` macro (checked at compile time), the
//! `FlowBuilder` (checked by `build()`), and a YAML or JSON definition (checked when it is
//! built). All three apply the rules of this crate, so they accept and refuse the same flows
//! with the same words; each front end only adds where the problem is (a span, a method name,
//! a line). `tests/flow_rules.rs` and the `tests/ui` cases prove the three agree.
//!
//! The crate has no dependencies, so the proc-macro crate can run the rules at expansion time
//! without waiting for the engine to build.
//!
//! ```
//! use crewflow_rules::{FeedbackOptions, FeedbackRule, check_feedback, closest};
//!
//! let options = FeedbackOptions { learn_source: true, ..FeedbackOptions::default() };
//! assert_eq!(check_feedback(&options), Err(FeedbackRule::LearnSourceWithoutLearner));
//! assert_eq!(closest("reserch", ["research", "write"]), Some("research"));
//! ```
//!
//! The graph's rules ([`GraphRule`]: a start exists, triggers name steps and labels that exist,
//! no step triggers itself, every route is handled) and the human-feedback rules
//! ([`FeedbackRule`]) each have a check function the front ends call.
//!
//! Read next: `docs/architecture.md` (where each rule is applied) and `docs/human_feedback.md`.

use std::fmt;

mod graph;

pub use graph::{GraphRule, check_label_trigger, check_start, check_step_trigger, unhandled_routes};

/// The closest candidate to `name` by edit distance, if it is close enough to be a likely typo
/// (for "did you mean" hints): at most one edit per three characters, at least one.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and adjacent swaps
/// (the most common typo) each cost 1.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// A step's human-feedback options, as every front end can describe them: which options are
/// set, and the outcome names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedbackOptions<'a> {
    /// The step is a router (it chooses its own label).
    pub is_router: bool,
    /// The outcomes (`emit`), in order.
    pub emit: Vec<&'a str>,
    /// The outcome chosen when the reviewer gives no feedback.
    pub default_outcome: Option<&'a str>,
    /// A model (`llm`, a classifier) maps free-text answers to outcomes.
    pub classifier: bool,
    /// A learner (`learn`) is set.
    pub learner: bool,
    /// `learn_strict` is on.
    pub learn_strict: bool,
    /// `learn_source` is set.
    pub learn_source: bool,
}

/// A broken human-feedback rule. The message names the option and the fix in words that fit
/// every front end (`emit` is `.emit([..])`, `emit = [..]` or `emit: [..]`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FeedbackRule {
    /// A router with `emit`: it already chooses its label.
    RouterWithOutcomes,
    /// An outcome that is empty.
    EmptyOutcome,
    /// An outcome listed twice.
    RepeatedOutcome(String),
    /// `default_outcome` without `emit`.
    DefaultWithoutOutcomes(String),
    /// `default_outcome` that is not one of `emit`.
    DefaultNotAnOutcome {
        /// The default given.
        default: String,
        /// The outcomes there are.
        outcomes: Vec<String>,
    },
    /// `llm` (a classifier) without `emit`: there is nothing to map answers to.
    ClassifierWithoutOutcomes,
    /// `learn_strict` without `learn`.
    LearnStrictWithoutLearner,
    /// `learn_source` without `learn`.
    LearnSourceWithoutLearner,
}

impl fmt::Display for FeedbackRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeedbackRule::RouterWithOutcomes => f.write_str(
                "a router already chooses its label; drop `emit` (its feedback is then recorded) or make it a plain step",
            ),
            FeedbackRule::EmptyOutcome => f.write_str("an `emit` outcome is empty; name each outcome"),
            FeedbackRule::RepeatedOutcome(o) => write!(f, "the `emit` outcome \"{o}\" is listed twice"),
            FeedbackRule::DefaultWithoutOutcomes(d) => {
                write!(f, "`default_outcome` \"{d}\" needs `emit` outcomes to choose from")
            }
            FeedbackRule::DefaultNotAnOutcome { default, outcomes } => write!(
                f,
                "`default_outcome` \"{default}\" is not one of the `emit` outcomes [{}]",
                outcomes.iter().map(|o| format!("\"{o}\"")).collect::<Vec<_>>().join(", ")
            ),
            FeedbackRule::ClassifierWithoutOutcomes => f.write_str(
                "`llm` maps answers to outcomes; it needs `emit` outcomes (without them the answer is passed on as is: drop `llm`)",
            ),
            FeedbackRule::LearnStrictWithoutLearner => f.write_str("`learn_strict` needs a learner: set `learn`"),
            FeedbackRule::LearnSourceWithoutLearner => f.write_str("`learn_source` needs a learner: set `learn`"),
        }
    }
}

impl std::error::Error for FeedbackRule {}

/// Checks a step's human-feedback options; the first broken rule, if any.
pub fn check_feedback(options: &FeedbackOptions<'_>) -> Result<(), FeedbackRule> {
    if options.is_router && !options.emit.is_empty() {
        return Err(FeedbackRule::RouterWithOutcomes);
    }
    for (i, outcome) in options.emit.iter().enumerate() {
        if outcome.trim().is_empty() {
            return Err(FeedbackRule::EmptyOutcome);
        }
        if options.emit[..i].contains(outcome) {
            return Err(FeedbackRule::RepeatedOutcome((*outcome).to_string()));
        }
    }
    if let Some(default) = options.default_outcome {
        if options.emit.is_empty() {
            return Err(FeedbackRule::DefaultWithoutOutcomes(default.to_string()));
        }
        if !options.emit.contains(&default) {
            return Err(FeedbackRule::DefaultNotAnOutcome {
                default: default.to_string(),
                outcomes: options.emit.iter().map(|o| (*o).to_string()).collect(),
            });
        }
    }
    if options.classifier && options.emit.is_empty() {
        return Err(FeedbackRule::ClassifierWithoutOutcomes);
    }
    if !options.learner {
        if options.learn_strict {
            return Err(FeedbackRule::LearnStrictWithoutLearner);
        }
        if options.learn_source {
            return Err(FeedbackRule::LearnSourceWithoutLearner);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_find_typos_only() {
        assert_eq!(closest("reserch", ["research", "write"]), Some("research"));
        assert_eq!(closest("zzz", ["research", "write"]), None);
        assert_eq!(closest("rigth", ["left", "right"]), Some("right"));
        assert_eq!(edit_distance("ab", "ba"), 1);
    }

    #[test]
    fn each_feedback_rule_is_reached() {
        let ok = FeedbackOptions { emit: vec!["yes", "no"], default_outcome: Some("no"), ..Default::default() };
        assert_eq!(check_feedback(&ok), Ok(()));
        let cases = [
            (FeedbackOptions { is_router: true, emit: vec!["a"], ..Default::default() }, "a router already"),
            (FeedbackOptions { emit: vec![" "], ..Default::default() }, "is empty"),
            (FeedbackOptions { emit: vec!["a", "a"], ..Default::default() }, "listed twice"),
            (FeedbackOptions { default_outcome: Some("a"), ..Default::default() }, "needs `emit`"),
            (FeedbackOptions { emit: vec!["a"], default_outcome: Some("b"), ..Default::default() }, "not one of"),
            (FeedbackOptions { classifier: true, ..Default::default() }, "`llm` maps answers"),
            (FeedbackOptions { learn_strict: true, ..Default::default() }, "`learn_strict` needs"),
            (FeedbackOptions { learn_source: true, ..Default::default() }, "`learn_source` needs"),
        ];
        for (options, expected) in cases {
            let message = check_feedback(&options).map_err(|e| e.to_string()).err().unwrap_or_default();
            assert!(message.contains(expected), "{options:?}: {message}");
        }
    }
}
