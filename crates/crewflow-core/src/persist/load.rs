//! What to read of a stored run: its record and state always, step outputs on demand.

#[cfg(doc)]
use super::RunStore;
use super::StoredRun;

/// Which step outputs [`RunStore::load_run_with`] reads with a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StepOutputs {
    /// None: [`StoredRun::steps`] is empty. Read them later, if needed, with
    /// [`RunStore::load_steps`].
    None,
    /// The run's output only: [`StoredRun::steps`] holds the step row of its
    /// [`final_activation`](StoredRun::final_activation), when it has one (a finished run).
    #[default]
    Final,
    /// Every stored step output, by activation (what [`RunStore::load_run`] reads).
    All,
}

/// What to read of a stored run ([`RunStore::load_run_with`]): the run's record and state
/// always, step outputs as asked. The default reads the record, the state and the run's
/// output (its final step's), not every step's output.
///
/// ```
/// use crewflow_core::persist::{LoadRun, StepOutputs};
///
/// let default = LoadRun::new(); // the record, the state and the run's output
/// assert_eq!(default.outputs, StepOutputs::Final);
/// let record_only = LoadRun::new().outputs(StepOutputs::None);
/// let everything = LoadRun::everything(); // what `load_run` reads
/// # let _ = (record_only, everything);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct LoadRun {
    /// Which step outputs to read (default: the run's output only).
    pub outputs: StepOutputs,
}

impl LoadRun {
    /// The record, the state and the run's output ([`StepOutputs::Final`]).
    pub fn new() -> Self {
        LoadRun::default()
    }

    /// Everything, every step's output included: what [`RunStore::load_run`] reads.
    pub fn everything() -> Self {
        LoadRun { outputs: StepOutputs::All }
    }

    /// Reads these step outputs with the run.
    pub fn outputs(mut self, outputs: StepOutputs) -> Self {
        self.outputs = outputs;
        self
    }

    /// Keeps of `run.steps` (every stored step, by activation) what this asks for: how a
    /// store that cannot read less reads as little as asked (the default
    /// [`RunStore::load_run_with`]).
    pub fn trim(&self, run: &mut StoredRun) {
        match self.outputs {
            StepOutputs::All => {}
            StepOutputs::None => run.steps = Vec::new(),
            StepOutputs::Final => {
                let last = run.final_activation;
                run.steps.retain(|s| Some(s.activation) == last);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Utc;

    use super::*;
    use crate::id::RunId;
    use crate::persist::{RunStatus, StepRow};

    fn stored(final_activation: Option<u64>) -> StoredRun {
        let at = Utc::now();
        let row = |activation| StepRow { activation, step: Arc::from("s"), output: "null".into(), finished_at: at };
        StoredRun {
            run_id: RunId::new(),
            flow: "f".into(),
            fingerprint: 0,
            status: RunStatus::Finished,
            fencing: 1,
            owner: None,
            lease_until: None,
            seq: 1,
            inputs: None,
            payload: None,
            state: "{}".into(),
            state_version: 0,
            frontier: "{}".into(),
            steps: vec![row(0), row(1), row(2)],
            final_activation,
            error: None,
            feedback: None,
            created_at: at,
            updated_at: at,
            parent: None,
        }
    }

    /// What the default `load_run_with` keeps of a whole run: nothing, the final activation's
    /// row (none when the run has no output), or everything.
    #[test]
    fn load_run_trims_to_what_was_asked() {
        let activations = |what: LoadRun, last| {
            let mut run = stored(last);
            what.trim(&mut run);
            run.steps.iter().map(|s| s.activation).collect::<Vec<_>>()
        };
        assert_eq!(activations(LoadRun::new(), Some(1)), [1]);
        assert_eq!(activations(LoadRun::new(), None), [] as [u64; 0]);
        assert_eq!(activations(LoadRun::new().outputs(StepOutputs::None), Some(1)), [] as [u64; 0]);
        assert_eq!(activations(LoadRun::everything(), Some(1)), [0, 1, 2]);
    }
}
