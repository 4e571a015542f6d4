//! Compaction in PostgreSQL ([`RunStore::compact`](crewflow_core::persist::RunStore::compact)).

use std::time::Duration;

use chrono::{DateTime, Utc};
use crewflow_core::persist::{CompactReport, Retention, StoreFuture};
use tokio_postgres::types::ToSql;

use crate::postgres::{PostgresStore, boxed};

/// Ended runs: what compaction may delete. Running, queued and paused runs never match.
const ENDED: &str = "status IN ('finished', 'failed', 'cancelled')";

impl PostgresStore {
    pub(crate) fn compact_runs<'a>(&'a self, retention: &'a Retention) -> StoreFuture<'a, CompactReport> {
        Box::pin(async move {
            boxed(
                async {
                    let mut client = self.client().await?;
                    let tx = client.transaction().await?;
                    let now = Utc::now();
                    let mut report = CompactReport::default();
                    for (flow, age) in &retention.flow_ttl {
                        let condition = format!("{ENDED} AND flow = $1 AND updated_at < $2");
                        delete_runs(&tx, &condition, &[flow, &cutoff(now, *age)], &mut report).await?;
                    }
                    if let Some(age) = retention.delete_ended_after {
                        // Flows with a time to live of their own were handled above.
                        let own: Vec<String> = retention.flow_ttl.keys().cloned().collect();
                        let condition = format!("{ENDED} AND updated_at < $1 AND flow <> ALL($2)");
                        delete_runs(&tx, &condition, &[&cutoff(now, age), &own], &mut report).await?;
                    }
                    if let Some(age) = retention.drop_journal_after {
                        // Failed runs keep theirs: a resume after the fix replays it.
                        report.journal += tx
                            .execute(
                                "DELETE FROM crewflow_journal WHERE run_id IN (SELECT id FROM crewflow_runs
                                 WHERE status IN ('finished', 'cancelled') AND updated_at < $1)",
                                &[&cutoff(now, age)],
                            )
                            .await?;
                    }
                    if let Some(age) = retention.drop_traces_after {
                        // Open traces (a session still talking) are never touched.
                        let old = "SELECT id FROM crewflow_traces WHERE finalized_at IS NOT NULL AND finalized_at < $1";
                        let at = cutoff(now, age);
                        tx.execute(&format!("DELETE FROM crewflow_spans WHERE trace_id IN ({old})"), &[&at]).await?;
                        report.traces +=
                            tx.execute(&format!("DELETE FROM crewflow_traces WHERE id IN ({old})"), &[&at]).await?;
                    }
                    tx.commit().await?;
                    Ok(report)
                }
                .await,
            )
        })
    }
}

/// The time `age` before `now` (far enough back for any age).
fn cutoff(now: DateTime<Utc>, age: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(age).ok().and_then(|age| now.checked_sub_signed(age)).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Deletes the runs matching `condition`, with their journal and step outputs.
async fn delete_runs(
    tx: &tokio_postgres::Transaction<'_>,
    condition: &str,
    params: &[&(dyn ToSql + Sync)],
    report: &mut CompactReport,
) -> Result<(), tokio_postgres::Error> {
    let runs = format!("SELECT id FROM crewflow_runs WHERE {condition}");
    report.journal += tx.execute(&format!("DELETE FROM crewflow_journal WHERE run_id IN ({runs})"), params).await?;
    report.steps += tx.execute(&format!("DELETE FROM crewflow_steps WHERE run_id IN ({runs})"), params).await?;
    tx.execute(&format!("DELETE FROM crewflow_state_chain WHERE run_id IN ({runs})"), params).await?;
    report.runs += tx.execute(&format!("DELETE FROM crewflow_runs WHERE {condition}"), params).await?;
    Ok(())
}
