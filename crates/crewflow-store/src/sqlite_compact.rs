//! Compaction in SQLite ([`RunStore::compact`](crewflow_core::persist::RunStore::compact)).

use std::time::Duration;

use crewflow_core::persist::{CompactReport, Retention, StoreFuture};
use rusqlite::{TransactionBehavior, params};

use crate::sqlite::{SqliteStore, boxed, ms, now};

/// Ended runs: what compaction may delete. Running, queued and paused runs never match.
const ENDED: &str = "status IN ('finished', 'failed', 'cancelled')";

impl SqliteStore {
    pub(crate) fn compact_runs<'a>(&'a self, retention: &'a Retention) -> StoreFuture<'a, CompactReport> {
        let retention = retention.clone();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let now = ms(now());
                    let mut report = CompactReport::default();
                    for (flow, age) in &retention.flow_ttl {
                        let condition = format!("{ENDED} AND flow = ?1 AND updated_at < ?2");
                        delete_runs(&tx, &condition, params![flow, cutoff(now, *age)], &mut report)?;
                    }
                    if let Some(age) = retention.delete_ended_after {
                        // Flows with a time to live of their own were handled above.
                        let own: Vec<&String> = retention.flow_ttl.keys().collect();
                        let own = serde_json::to_string(&own).unwrap_or_else(|_| "[]".into());
                        let condition =
                            format!("{ENDED} AND updated_at < ?1 AND flow NOT IN (SELECT value FROM json_each(?2))");
                        delete_runs(&tx, &condition, params![cutoff(now, age), own], &mut report)?;
                    }
                    if let Some(age) = retention.drop_journal_after {
                        // Failed runs keep theirs: a resume after the fix replays it.
                        report.journal += tx.execute(
                            "DELETE FROM crewflow_journal WHERE run_id IN (SELECT id FROM crewflow_runs
                             WHERE status IN ('finished', 'cancelled') AND updated_at < ?1)",
                            [cutoff(now, age)],
                        )? as u64;
                    }
                    if let Some(age) = retention.drop_traces_after {
                        // Open traces (a session still talking) are never touched.
                        let old = "SELECT id FROM crewflow_traces WHERE finalized_at IS NOT NULL AND finalized_at < ?1";
                        tx.execute(
                            &format!("DELETE FROM crewflow_spans WHERE trace_id IN ({old})"),
                            [cutoff(now, age)],
                        )?;
                        report.traces += tx
                            .execute(&format!("DELETE FROM crewflow_traces WHERE id IN ({old})"), [cutoff(now, age)])?
                            as u64;
                    }
                    tx.commit()?;
                    if retention.vacuum {
                        // In WAL mode the rewritten database goes through the log: checkpoint it
                        // into the file and truncate the log, or the bytes only move.
                        c.execute_batch("VACUUM")?;
                        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
                    }
                    Ok(report)
                })
                .await,
            )
        })
    }
}

/// The epoch milliseconds `age` before `now` (far enough back for any age).
fn cutoff(now: i64, age: Duration) -> i64 {
    now.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
}

/// Deletes the runs matching `condition`, with their journal and step outputs.
fn delete_runs(
    tx: &rusqlite::Transaction<'_>,
    condition: &str,
    params: &[&dyn rusqlite::ToSql],
    report: &mut CompactReport,
) -> Result<(), rusqlite::Error> {
    let runs = format!("SELECT id FROM crewflow_runs WHERE {condition}");
    report.journal += tx.execute(&format!("DELETE FROM crewflow_journal WHERE run_id IN ({runs})"), params)? as u64;
    report.steps += tx.execute(&format!("DELETE FROM crewflow_steps WHERE run_id IN ({runs})"), params)? as u64;
    tx.execute(&format!("DELETE FROM crewflow_state_chain WHERE run_id IN ({runs})"), params)?;
    report.runs += tx.execute(&format!("DELETE FROM crewflow_runs WHERE {condition}"), params)? as u64;
    Ok(())
}
