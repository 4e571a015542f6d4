//! A run with the runs started from its steps, read from a store to draw them as one trace
//! (`crewflow trace`, the OpenTelemetry export): a nested run is recorded with the step
//! execution it was started from ([`ParentStep`](super::ParentStep)), and found from its
//! outer run by [`RunFilter::parent`].

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;

use super::{JournalEntry, RunFilter, RunStore, StoredRun};
use crate::error::BoxError;
use crate::id::RunId;

/// A stored run with its journal (the model calls, tool calls and other side effects its steps
/// recorded) and, under it, the runs started from its steps (recursively), oldest first.
///
/// ```no_run
/// # async fn demo(store: &dyn crewflow_core::persist::RunStore, id: crewflow_core::RunId) -> Result<(), crewflow_core::BoxError> {
/// use crewflow_core::persist::RunTree;
///
/// if let Some(tree) = RunTree::load(store, id).await? {
///     for nested in &tree.nested {
///         let step = nested.run.parent.map(|p| p.activation);
///         println!("{} ran flow `{}` from step execution {step:?}", nested.run.run_id, nested.run.flow);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RunTree {
    /// The run, with every step output.
    pub run: StoredRun,
    /// Its journal, by execution and in the order recorded ([`RunStore::load_whole_journal`]).
    pub journal: Vec<JournalEntry>,
    /// The runs started from its steps, oldest first.
    pub nested: Vec<RunTree>,
}

type Loading<'a> = Pin<Box<dyn Future<Output = Result<Vec<RunTree>, BoxError>> + Send + 'a>>;

impl RunTree {
    /// How deep nested runs are followed (a run started from a step of a run started from a
    /// step … of the run asked for).
    pub const MAX_DEPTH: usize = 16;
    /// How many nested runs are read per run, at most (the oldest are kept).
    pub const MAX_NESTED: usize = 1000;

    /// The run `run_id` and its nested runs, or `None` when the store has no such run.
    pub async fn load(store: &dyn RunStore, run_id: RunId) -> Result<Option<RunTree>, BoxError> {
        let Some(run) = store.load_run(run_id).await? else { return Ok(None) };
        let journal = store.load_whole_journal(run_id).await?;
        let mut seen = HashSet::from([run_id]);
        let nested = nested(store, run_id, 1, &mut seen).await?;
        Ok(Some(RunTree { run, journal, nested }))
    }

    /// A run without journal entries or nested runs.
    pub fn leaf(run: StoredRun) -> RunTree {
        RunTree { run, journal: Vec::new(), nested: Vec::new() }
    }

    /// Every run of the tree, this one first, then each nested tree in order (depth first).
    pub fn runs(&self) -> Vec<&StoredRun> {
        let mut out = vec![&self.run];
        for child in &self.nested {
            out.extend(child.runs());
        }
        out
    }
}

/// The nested runs of `parent`. `seen` guards against a cycle of parent links (which only a
/// hand-edited store could hold): a run is read once.
fn nested<'a>(store: &'a dyn RunStore, parent: RunId, depth: usize, seen: &'a mut HashSet<RunId>) -> Loading<'a> {
    Box::pin(async move {
        if depth > RunTree::MAX_DEPTH {
            return Ok(Vec::new());
        }
        let filter = RunFilter { parent: Some(parent), limit: RunTree::MAX_NESTED, ..RunFilter::default() };
        let mut listed = store.list_runs(&filter).await?;
        listed.sort_by_key(|s| (s.created_at, s.run_id.to_string()));
        let mut out = Vec::with_capacity(listed.len());
        for summary in listed {
            if !seen.insert(summary.run_id) {
                continue;
            }
            // A run deleted since the listing is left out.
            let Some(run) = store.load_run(summary.run_id).await? else { continue };
            let journal = store.load_whole_journal(summary.run_id).await?;
            let nested = nested(store, summary.run_id, depth + 1, seen).await?;
            out.push(RunTree { run, journal, nested });
        }
        Ok(out)
    })
}
