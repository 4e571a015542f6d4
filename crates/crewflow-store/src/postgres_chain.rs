//! A run's state chain in PostgreSQL (`crewflow_state_chain`), as in SQLite (see
//! `sqlite_chain.rs` and docs/store.md, "Large states"), with one difference: the chain's whole
//! state is kept as `text`, never only in the row's `jsonb`, because a delta applies to the
//! exact text it was computed from and `jsonb` does not keep it (it reorders keys and drops
//! whitespace). A run whose state lives in the chain has `state = 'null'` in its row.
//!
//! Each write is part of the statement that updates the run's row (one round trip): the
//! statement's `run` CTE returns the row's id when the fencing token matched, and the CTEs
//! here key on it, so a fenced-off writer changes nothing.

use crewflow_core::persist::Checkpoint;

/// What a checkpoint writes to the run's row and chain.
pub(crate) struct ChainWrite<'a> {
    /// The row's new `state` (JSON text), or `None` to keep it (a delta).
    pub row_state: Option<&'a str>,
    /// Whether the run's chain is deleted first (a whole state replaces it).
    pub drop: bool,
    /// The chain row added: `whole` or `delta`, or none.
    pub kind: Option<&'static str>,
    /// Its text.
    pub body: Option<&'a str>,
}

impl<'a> ChainWrite<'a> {
    /// The writes of `cp`: a delta joins the chain; a whole chained state starts a new chain
    /// (the row holds `null`); a small whole state goes into the row and ends any chain.
    pub(crate) fn of(cp: &'a Checkpoint) -> Self {
        match (&cp.delta, cp.chained) {
            (Some(delta), _) => ChainWrite { row_state: None, drop: false, kind: Some("delta"), body: Some(delta) },
            (None, true) => {
                ChainWrite { row_state: Some("null"), drop: cp.had_chain, kind: Some("whole"), body: Some(&cp.state) }
            }
            (None, false) => ChainWrite { row_state: Some(&cp.state), drop: cp.had_chain, kind: None, body: None },
        }
    }

    /// No change to the row's state or chain (a run that ends without a checkpoint).
    pub(crate) fn none() -> Self {
        ChainWrite { row_state: None, drop: false, kind: None, body: None }
    }
}

/// The CTEs that apply a [`ChainWrite`] after a `run` CTE, with its parameters numbered:
/// `drop` (boolean), `kind` and `body` (text), `seq` (bigint). Both act on the rows the
/// statement started from, so deleting the old chain and adding the new whole state in one
/// statement do not see each other (the new row's seq is past every old one).
pub(crate) fn chain_ctes(drop: usize, kind: usize, body: usize, seq: usize) -> String {
    format!(
        "dropped AS (
             DELETE FROM crewflow_state_chain WHERE ${drop}::boolean AND run_id = (SELECT id FROM run)),
         chained AS (
             INSERT INTO crewflow_state_chain (run_id, seq, kind, body)
             SELECT id, ${seq}::bigint, ${kind}::text, ${body}::text FROM run WHERE ${body}::text IS NOT NULL)"
    )
}

/// The columns a run's load reads beside its row: the chain's kinds and texts, in order.
pub(crate) const CHAIN_COLUMNS: &str =
    "ARRAY(SELECT kind FROM crewflow_state_chain c WHERE c.run_id = crewflow_runs.id ORDER BY seq),
     ARRAY(SELECT body FROM crewflow_state_chain c WHERE c.run_id = crewflow_runs.id ORDER BY seq)";
