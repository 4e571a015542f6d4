//! The journal of side effects in PostgreSQL (schema migration 4).

use crewflow_core::RunId;
use crewflow_core::persist::{JournalEntry, StoreFuture};

use crate::postgres::{PostgresStore, boxed};

/// Migration 4: the journal, one row per recorded result, keyed by run, execution and call;
/// and `report` on runs: `pending` once a worker took a run over, `done` once its end was
/// reported (so a report survives the worker's crash).
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE crewflow_journal (
    run_id      TEXT NOT NULL,
    activation  BIGINT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, activation, key)
);
ALTER TABLE crewflow_runs ADD COLUMN report TEXT;
"#;

impl PostgresStore {
    pub(crate) fn record_journal_entry<'a>(
        &'a self,
        run_id: RunId,
        fencing: u64,
        entry: &'a JournalEntry,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            // The value is JSON in a TEXT column (U+0000 is escaped in it); the key is raw text.
            boxed(crate::util::refuse_nul_text("a journal key (the name given to cx.once)", &entry.key))?;
            let client = boxed(self.client().await)?;
            let id = run_id.to_string();
            // One round trip, fenced like a checkpoint: a process that lost the run records
            // nothing. `ok` is false only when the fencing token is stale.
            let row = client
                .query_one(
                    "WITH run AS (SELECT 1 FROM crewflow_runs WHERE id = $1 AND fencing = $5),
                          ins AS (INSERT INTO crewflow_journal (run_id, activation, key, value)
                                  SELECT $1, $2, $3, $4 FROM run
                                  ON CONFLICT DO NOTHING)
                     SELECT EXISTS (SELECT 1 FROM run)",
                    &[&id, &(entry.activation as i64), &entry.key, &entry.value, &(fencing as i64)],
                )
                .await
                .map_err(|e| crate::StoreError::from(e).into_boxed())?;
            if !row.get::<_, bool>(0) {
                return Err(self.fenced(&client, run_id, fencing).await.into_boxed());
            }
            Ok(())
        })
    }

    /// The entries of `executions` of a run, or of all its executions (`None`), by execution
    /// and in the order recorded.
    pub(crate) fn load_journal_entries<'a>(
        &'a self,
        run_id: RunId,
        executions: Option<&'a [u64]>,
    ) -> StoreFuture<'a, Vec<JournalEntry>> {
        Box::pin(async move {
            if executions.is_some_and(<[u64]>::is_empty) {
                return Ok(Vec::new());
            }
            let client = boxed(self.client().await)?;
            let wanted: Option<Vec<i64>> = executions.map(|e| e.iter().map(|&e| e as i64).collect());
            let rows = client
                .query(
                    "SELECT activation, key, value, recorded_at FROM crewflow_journal
                     WHERE run_id = $1 AND ($2::bigint[] IS NULL OR activation = ANY($2))
                     ORDER BY activation, recorded_at, length(key), key",
                    &[&run_id.to_string(), &wanted],
                )
                .await
                .map_err(|e| crate::StoreError::from(e).into_boxed())?;
            Ok(rows
                .iter()
                .map(|r| JournalEntry {
                    activation: r.get::<_, i64>(0) as u64,
                    key: r.get(1),
                    value: r.get(2),
                    recorded_at: Some(r.get(3)),
                })
                .collect())
        })
    }
}
