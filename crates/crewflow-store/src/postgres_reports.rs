//! Reports of the runs workers took over, kept until delivered (PostgreSQL).

use crewflow_core::RunId;
use crewflow_core::persist::{RunSummary, StoreFuture};

use crate::postgres::{PostgresStore, boxed};
use crate::util::{parse_run_id, parse_status};

impl PostgresStore {
    pub(crate) fn unreported_runs_of<'a>(
        &'a self,
        flows: &'a [String],
        limit: usize,
    ) -> StoreFuture<'a, Vec<RunSummary>> {
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    let rows = client
                        .query(
                            "SELECT r.id, r.flow, r.status, r.created_at, r.updated_at, r.error,
                                 (SELECT count(*) FROM crewflow_steps s WHERE s.run_id = r.id)
                             FROM crewflow_runs r
                             WHERE r.report = 'pending' AND r.status IN ('finished', 'failed', 'cancelled', 'paused')
                               AND r.flow = ANY($1)
                             ORDER BY r.updated_at, r.id LIMIT $2",
                            &[&flows, &(limit as i64)],
                        )
                        .await?;
                    rows.into_iter()
                        .map(|r| {
                            let id: String = r.get(0);
                            let status: String = r.get(2);
                            Ok(RunSummary {
                                run_id: parse_run_id(&id)?,
                                flow: r.get(1),
                                status: parse_status(&status)?,
                                created_at: r.get(3),
                                updated_at: r.get(4),
                                error: r.get(5),
                                steps_done: r.get::<_, i64>(6) as u64,
                            })
                        })
                        .collect()
                }
                .await,
            )
        })
    }

    pub(crate) fn mark_run_reported(&self, run_id: RunId) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    let n = client
                        .execute(
                            "UPDATE crewflow_runs SET report = 'done' WHERE id = $1 AND report = 'pending'",
                            &[&run_id.to_string()],
                        )
                        .await?;
                    Ok(n == 1)
                }
                .await,
            )
        })
    }
}
