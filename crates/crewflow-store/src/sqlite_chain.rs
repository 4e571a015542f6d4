//! A run's state chain in SQLite (`crewflow_state_chain`): a large whole state kept out of the
//! run's row, and the deltas written since (see `crewflow_core::delta` and docs/store.md,
//! "Large states").

use crewflow_core::RunId;
use crewflow_core::persist::Checkpoint;
use rusqlite::params;

use crate::StoreError;

/// What a checkpoint writes in the run's row: nothing for a delta (`None`), `''` for a
/// whole state kept in the chain (out of the row, so that updating the run's status or lease
/// does not rewrite it), else the state.
pub(crate) fn row_state(cp: &Checkpoint) -> Option<&str> {
    match (&cp.delta, cp.chained) {
        (Some(_), _) => None,
        (None, true) => Some(""),
        (None, false) => Some(&cp.state),
    }
}

/// The run's chain: a delta joins it; a whole state replaces it (kept in it when `chained`).
pub(crate) fn write_chain(tx: &rusqlite::Transaction<'_>, cp: &Checkpoint) -> Result<(), StoreError> {
    let id = cp.run_id.to_string();
    match &cp.delta {
        Some(delta) => chain_row(tx, &id, cp.seq, "delta", delta),
        None => {
            if cp.had_chain {
                tx.prepare_cached("DELETE FROM crewflow_state_chain WHERE run_id = ?1")?.execute([&id])?;
            }
            if cp.chained { chain_row(tx, &id, cp.seq, "whole", &cp.state) } else { Ok(()) }
        }
    }
}

pub(crate) fn chain_row(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    seq: u64,
    kind: &str,
    body: &str,
) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO crewflow_state_chain (run_id, seq, kind, body) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![id, seq as i64, kind, body])?;
    Ok(())
}

/// The state a run's row and chain hold: the chain's whole state with its deltas applied, or
/// the row's state when it has no chain.
pub(crate) fn chained_state(
    tx: &rusqlite::Transaction<'_>,
    run_id: RunId,
    row_state: String,
) -> Result<String, StoreError> {
    let rows: Vec<(String, String)> = tx
        .prepare_cached("SELECT kind, body FROM crewflow_state_chain WHERE run_id = ?1 ORDER BY seq")?
        .query_map([run_id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    crate::util::apply_state_chain(run_id, row_state, &rows)
}
