//! Reports of the runs workers took over, kept until delivered (SQLite).

use crewflow_core::RunId;
use crewflow_core::persist::{RunSummary, StoreFuture};
use rusqlite::params;

use crate::sqlite::{SUMMARY, SqliteStore, boxed, summaries};

impl SqliteStore {
    pub(crate) fn unreported_runs_of<'a>(
        &'a self,
        flows: &'a [String],
        limit: usize,
    ) -> StoreFuture<'a, Vec<RunSummary>> {
        let flows = serde_json::Value::from(flows.to_vec()).to_string();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let mut stmt = c.prepare_cached(&format!(
                        "SELECT {SUMMARY} FROM crewflow_runs r
                         WHERE r.report = 'pending' AND r.status IN ('finished', 'failed', 'cancelled', 'paused')
                           AND r.flow IN (SELECT value FROM json_each(?1))
                         ORDER BY r.updated_at, r.id LIMIT ?2"
                    ))?;
                    summaries(&mut stmt, params![flows, limit as i64])
                })
                .await,
            )
        })
    }

    pub(crate) fn mark_run_reported(&self, run_id: RunId) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let n = c.execute(
                        "UPDATE crewflow_runs SET report = 'done' WHERE id = ?1 AND report = 'pending'",
                        [run_id.to_string()],
                    )?;
                    Ok(n == 1)
                })
                .await,
            )
        })
    }
}
