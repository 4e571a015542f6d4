//! The journal of side effects in SQLite (schema migration 4).

use crewflow_core::RunId;
use crewflow_core::persist::{JournalEntry, StoreFuture};
use rusqlite::{TransactionBehavior, params};

use crate::sqlite::{SqliteStore, boxed, fenced, ms, now};

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
                self.call(move |c| {
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

    pub(crate) fn load_journal_entries<'a>(
        &'a self,
        run_id: RunId,
        executions: &'a [u64],
    ) -> StoreFuture<'a, Vec<JournalEntry>> {
        let executions: Vec<i64> = executions.iter().map(|&e| e as i64).collect();
        Box::pin(async move {
            if executions.is_empty() {
                return Ok(Vec::new());
            }
            let wanted = serde_json::Value::from(executions).to_string();
            boxed(
                self.call(move |c| {
                    let mut stmt = c.prepare_cached(
                        "SELECT activation, key, value FROM crewflow_journal
                         WHERE run_id = ?1 AND activation IN (SELECT value FROM json_each(?2))",
                    )?;
                    let rows = stmt.query_map(params![run_id.to_string(), wanted], |r| {
                        Ok(JournalEntry { activation: r.get::<_, i64>(0)? as u64, key: r.get(1)?, value: r.get(2)? })
                    })?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .await,
            )
        })
    }
}
