//! Reports of the runs workers took over, kept until delivered (SQLite).

use crewflow_core::RunId;
use crewflow_core::persist::{RunSummary, StoreFuture};
use rusqlite::params;

use crate::sqlite::{SqliteStore, boxed, from_ms};
use crate::util::{parse_run_id, parse_status};

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
                    let mut stmt = c.prepare_cached(
                        "SELECT r.id, r.flow, r.status, r.created_at, r.updated_at, r.error,
                             (SELECT count(*) FROM crewflow_steps s WHERE s.run_id = r.id)
                         FROM crewflow_runs r
                         WHERE r.report = 'pending' AND r.status IN ('finished', 'failed', 'cancelled', 'paused')
                           AND r.flow IN (SELECT value FROM json_each(?1))
                         ORDER BY r.updated_at, r.id LIMIT ?2",
                    )?;
                    let rows = stmt.query_map(params![flows, limit as i64], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, Option<String>>(5)?,
                            r.get::<_, i64>(6)?,
                        ))
                    })?;
                    rows.map(|row| {
                        let (id, flow, status, created, updated, error, steps) = row?;
                        Ok(RunSummary {
                            run_id: parse_run_id(&id)?,
                            flow,
                            status: parse_status(&status)?,
                            steps_done: steps as u64,
                            created_at: from_ms(created),
                            updated_at: from_ms(updated),
                            error,
                        })
                    })
                    .collect()
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
