//! The journal of side effects in SQLite (schema migration 4).

use crewflow_core::RunId;
use crewflow_core::persist::{JournalEntry, StoreFuture};
use rusqlite::{TransactionBehavior, params};

use crate::sqlite::{SqliteStore, boxed, fenced, from_ms, ms, now};

/// Migration 4: the journal, one row per recorded result, keyed by run, execution and call;
/// and `report` on runs: `pending` once a worker took a run over, `done` once its end was
/// reported (so a report survives the worker's crash).
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE crewflow_journal (
    run_id      TEXT NOT NULL,
    activation  INTEGER NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, activation, key)
) WITHOUT ROWID;
ALTER TABLE crewflow_runs ADD COLUMN report TEXT;
"#;

impl SqliteStore {
    pub(crate) fn record_journal_entry<'a>(
        &'a self,
        run_id: RunId,
        fencing: u64,
        entry: &'a JournalEntry,
    ) -> StoreFuture<'a, ()> {
        let entry = entry.clone();
        Box::pin(async move {
            boxed(
                self.call_short(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let id = run_id.to_string();
                    // Fenced like a checkpoint: a process that lost the run records nothing.
                    let inserted = tx
                        .prepare_cached(
                            "INSERT INTO crewflow_journal (run_id, activation, key, value, recorded_at)
                         SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS
                             (SELECT 1 FROM crewflow_runs WHERE id = ?1 AND fencing = ?6)
                         ON CONFLICT DO NOTHING",
                        )?
                        .execute(params![
                            id,
                            entry.activation as i64,
                            entry.key,
                            entry.value,
                            ms(now()),
                            fencing as i64
                        ])?;
                    if inserted == 0 {
                        let current: Option<i64> =
                            tx.query_row("SELECT fencing FROM crewflow_runs WHERE id = ?1", [&id], |r| r.get(0)).ok();
                        if current != Some(fencing as i64) {
                            return Err(fenced(&tx, run_id, fencing));
                        }
                    }
                    tx.commit()?;
                    Ok(())
                })
                .await,
            )
        })
    }

    /// The entries of `executions` of a run, or of all its executions (`None`), by execution
    /// and in the order recorded (a key's repeat number breaks ties of the millisecond clock).
    pub(crate) fn load_journal_entries<'a>(
        &'a self,
        run_id: RunId,
        executions: Option<&'a [u64]>,
    ) -> StoreFuture<'a, Vec<JournalEntry>> {
        let wanted =
            executions.map(|e| serde_json::Value::from(e.iter().map(|&e| e as i64).collect::<Vec<_>>()).to_string());
        Box::pin(async move {
            if executions.is_some_and(<[u64]>::is_empty) {
                return Ok(Vec::new());
            }
            boxed(
                self.call_read(move |c| {
                    let mut stmt = c.prepare_cached(
                        "SELECT activation, key, value, recorded_at FROM crewflow_journal
                         WHERE run_id = ?1 AND (?2 IS NULL OR activation IN (SELECT value FROM json_each(?2)))
                         ORDER BY activation, recorded_at, length(key), key",
                    )?;
                    let rows = stmt.query_map(params![run_id.to_string(), wanted], |r| {
                        Ok(JournalEntry {
                            activation: r.get::<_, i64>(0)? as u64,
                            key: r.get(1)?,
                            value: r.get(2)?,
                            recorded_at: Some(from_ms(r.get(3)?)),
                        })
                    })?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .await,
            )
        })
    }
}
