//! Reports of the runs workers took over, kept until delivered (PostgreSQL).

use crewflow_core::RunId;
use crewflow_core::persist::{RunSummary, StoreFuture};

use crate::postgres::{PostgresStore, SUMMARY, boxed, summary};

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
                            &format!(
                                "SELECT {SUMMARY} FROM crewflow_runs r
                                 WHERE r.report = 'pending' AND r.status IN ('finished', 'failed', 'cancelled', 'paused')
                                   AND r.flow = ANY($1)
                                 ORDER BY r.updated_at, r.id LIMIT $2"
                            ),
                            &[&flows, &(limit as i64)],
                        )
                        .await?;
                    rows.iter().map(summary).collect()
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
