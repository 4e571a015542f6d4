//! Cron schedules in SQLite (schema migration 7): the schedules, one row per fired tick, and
//! the run server's webhook events waiting for delivery.
//!
//! A tick fires once across every process sharing the file: the tick's row (schedule, tick) is
//! the table's primary key, inserted in the same transaction that moves the schedule's last
//! tick and records the queued run (see `RunStore::fire_schedule`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use crewflow_core::persist::{
    NewRun, NewSchedule, NewWebhook, QueuedWebhook, RunStatus, ScheduleFire, StoreFuture, StoredSchedule,
};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::StoreError;
use crate::sqlite::{SqliteStore, boxed, from_ms, ms, now};
use crate::util::{fingerprint, lateness_ms, parse_run_id};

/// Migration 7: schedules (per tenant and flow), their fired ticks, and webhook events.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE crewflow_schedules (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    flow       TEXT NOT NULL,
    cron       TEXT NOT NULL,
    inputs     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_tick  INTEGER,
    last_run   TEXT
);
CREATE INDEX crewflow_schedules_by_tenant ON crewflow_schedules (tenant, flow, created_at);
CREATE TABLE crewflow_schedule_ticks (
    schedule_id TEXT NOT NULL REFERENCES crewflow_schedules (id) ON DELETE CASCADE,
    tick        INTEGER NOT NULL,
    run_id      TEXT NOT NULL,
    fired_at    INTEGER NOT NULL,
    PRIMARY KEY (schedule_id, tick)
) WITHOUT ROWID;
CREATE TABLE crewflow_webhooks (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    event         TEXT NOT NULL,
    body          TEXT NOT NULL,
    attempts      INTEGER NOT NULL,
    next_at       INTEGER NOT NULL,
    claimed_until INTEGER,
    created_at    INTEGER NOT NULL
);
CREATE INDEX crewflow_webhooks_due ON crewflow_webhooks (tenant, next_at);
"#;

/// Migration 9: a schedule's time zone and its own maximum lateness (`NULL`: the server's).
pub(crate) const MIGRATION_TIMEZONES: &str = r#"
ALTER TABLE crewflow_schedules ADD COLUMN timezone TEXT NOT NULL DEFAULT 'UTC';
ALTER TABLE crewflow_schedules ADD COLUMN max_lateness_ms INTEGER;
"#;

/// How many fired ticks are kept per schedule (older ones are dropped as new ones fire; the
/// schedule's `last_tick` alone keeps an old tick from firing again).
pub(crate) const KEPT_FIRES: i64 = 100;

const COLUMNS: &str = "id, tenant, flow, cron, inputs, created_at, last_tick, last_run, timezone, max_lateness_ms";

/// Keeps a schedule's latest `KEPT_FIRES` ticks (?1: the schedule, ?2: `KEPT_FIRES - 1`), after a
/// tick is fired or skipped.
const TRIM_TICKS: &str = "DELETE FROM crewflow_schedule_ticks WHERE schedule_id = ?1 AND tick <
    (SELECT tick FROM crewflow_schedule_ticks WHERE schedule_id = ?1 ORDER BY tick DESC LIMIT 1 OFFSET ?2)";

fn schedule(r: &rusqlite::Row<'_>) -> rusqlite::Result<(StoredSchedule, Option<String>)> {
    Ok((
        StoredSchedule {
            id: r.get(0)?,
            tenant: r.get(1)?,
            flow: r.get(2)?,
            cron: r.get(3)?,
            inputs: r.get(4)?,
            created_at: from_ms(r.get(5)?),
            last_tick: r.get::<_, Option<i64>>(6)?.map(from_ms),
            last_run: None,
            timezone: r.get(8)?,
            max_lateness: r.get::<_, Option<i64>>(9)?.map(|ms| Duration::from_millis(ms.max(0) as u64)),
        },
        r.get(7)?,
    ))
}

fn with_run((mut s, run): (StoredSchedule, Option<String>)) -> Result<StoredSchedule, StoreError> {
    s.last_run = run.as_deref().map(parse_run_id).transpose()?;
    Ok(s)
}

impl SqliteStore {
    pub(crate) fn create_schedule_row<'a>(&'a self, s: &'a NewSchedule) -> StoreFuture<'a, ()> {
        let s = s.clone();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let inserted = c.execute(
                        "INSERT INTO crewflow_schedules (id, tenant, flow, cron, inputs, created_at, timezone, max_lateness_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
                        params![s.id, s.tenant, s.flow, s.cron, s.inputs, ms(now()), s.timezone, lateness_ms(s.max_lateness)],
                    )?;
                    if inserted == 0 {
                        return Err(StoreError::ScheduleExists(s.id));
                    }
                    Ok(())
                })
                .await,
            )
        })
    }

    pub(crate) fn list_schedule_rows<'a>(
        &'a self,
        tenant: &'a str,
        flow: Option<&'a str>,
    ) -> StoreFuture<'a, Vec<StoredSchedule>> {
        let (tenant, flow) = (tenant.to_string(), flow.map(str::to_string));
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let mut stmt = c.prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM crewflow_schedules
                         WHERE tenant = ?1 AND (?2 IS NULL OR flow = ?2) ORDER BY created_at, id"
                    ))?;
                    let rows = stmt.query_map(params![tenant, flow], schedule)?;
                    rows.map(|r| with_run(r?)).collect()
                })
                .await,
            )
        })
    }

    pub(crate) fn load_schedule_row<'a>(
        &'a self,
        tenant: &'a str,
        id: &'a str,
        fires: usize,
    ) -> StoreFuture<'a, Option<(StoredSchedule, Vec<ScheduleFire>)>> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let found = c
                        .query_row(
                            &format!("SELECT {COLUMNS} FROM crewflow_schedules WHERE tenant = ?1 AND id = ?2"),
                            params![tenant, id],
                            schedule,
                        )
                        .optional()?;
                    let Some(found) = found else { return Ok(None) };
                    let mut stmt = c.prepare_cached(
                        "SELECT tick, run_id, fired_at FROM crewflow_schedule_ticks
                         WHERE schedule_id = ?1 ORDER BY tick DESC LIMIT ?2",
                    )?;
                    let rows = stmt.query_map(params![id, fires as i64], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
                    })?;
                    let mut list = Vec::new();
                    for row in rows {
                        let (tick, run, fired) = row?;
                        list.push(ScheduleFire {
                            tick: from_ms(tick),
                            // A skipped tick is stored with no run (an empty id).
                            run_id: if run.is_empty() { None } else { Some(parse_run_id(&run)?) },
                            fired_at: from_ms(fired),
                        });
                    }
                    Ok(Some((with_run(found)?, list)))
                })
                .await,
            )
        })
    }

    pub(crate) fn delete_schedule_row<'a>(&'a self, tenant: &'a str, id: &'a str) -> StoreFuture<'a, bool> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let deleted = tx
                        .execute("DELETE FROM crewflow_schedules WHERE tenant = ?1 AND id = ?2", params![tenant, id])?;
                    if deleted > 0 {
                        tx.execute("DELETE FROM crewflow_schedule_ticks WHERE schedule_id = ?1", [&id])?;
                    }
                    tx.commit()?;
                    Ok(deleted > 0)
                })
                .await,
            )
        })
    }

    pub(crate) fn fire_schedule_tick<'a>(
        &'a self,
        id: &'a str,
        tick: DateTime<Utc>,
        run: &'a NewRun,
    ) -> StoreFuture<'a, bool> {
        let (id, run) = (id.to_string(), run.clone());
        Box::pin(async move {
            if run.status != RunStatus::Queued || run.chained {
                return Err(format!(
                    "a schedule's tick records a queued run (Flow::queued_run), not a {} one",
                    run.status.as_str()
                )
                .into());
            }
            boxed(
                self.call(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let (tick, t, run_id) = (ms(tick), ms(now()), run.run_id.to_string());
                    // Only a tick later than the last one fired moves the schedule on: an
                    // instance whose list was stale fires nothing.
                    let moved = tx.execute(
                        "UPDATE crewflow_schedules SET last_tick = ?2, last_run = ?3
                         WHERE id = ?1 AND (last_tick IS NULL OR last_tick < ?2)",
                        params![id, tick, run_id],
                    )?;
                    let claimed = moved > 0
                        && tx.execute(
                            "INSERT INTO crewflow_schedule_ticks (schedule_id, tick, run_id, fired_at)
                             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                            params![id, tick, run_id, t],
                        )? > 0;
                    if !claimed {
                        // Dropping the transaction rolls the update back.
                        return Ok(false);
                    }
                    tx.execute(
                        "INSERT INTO crewflow_runs (id, flow, fingerprint, status, owner, lease_until, fencing, seq,
                             inputs, payload, state, frontier, created_at, updated_at, state_version)
                         VALUES (?1, ?2, ?3, 'queued', NULL, NULL, 0, 0, ?4, ?5, ?6, ?7, ?8, ?8, ?9)",
                        params![
                            run_id,
                            &*run.flow,
                            fingerprint(run.fingerprint),
                            run.inputs,
                            run.payload,
                            run.state,
                            run.frontier,
                            t,
                            run.state_version
                        ],
                    )?;
                    tx.execute(TRIM_TICKS, params![id, KEPT_FIRES - 1])?;
                    tx.commit()?;
                    Ok(true)
                })
                .await,
            )
        })
    }

    pub(crate) fn skip_schedule_tick_row<'a>(&'a self, id: &'a str, tick: DateTime<Utc>) -> StoreFuture<'a, bool> {
        let id = id.to_string();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let (tick, t) = (ms(tick), ms(now()));
                    // As a fire, without a run: `last_run` stays the last run a tick started.
                    let moved = tx.execute(
                        "UPDATE crewflow_schedules SET last_tick = ?2
                         WHERE id = ?1 AND (last_tick IS NULL OR last_tick < ?2)",
                        params![id, tick],
                    )?;
                    let skipped = moved > 0
                        && tx.execute(
                            "INSERT INTO crewflow_schedule_ticks (schedule_id, tick, run_id, fired_at)
                             VALUES (?1, ?2, '', ?3) ON CONFLICT DO NOTHING",
                            params![id, tick, t],
                        )? > 0;
                    if !skipped {
                        return Ok(false); // dropping the transaction rolls the update back
                    }
                    tx.execute(TRIM_TICKS, params![id, KEPT_FIRES - 1])?;
                    tx.commit()?;
                    Ok(true)
                })
                .await,
            )
        })
    }

    pub(crate) fn queue_webhook_row<'a>(&'a self, w: &'a NewWebhook) -> StoreFuture<'a, ()> {
        let w = w.clone();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let t = ms(now());
                    c.execute(
                        "INSERT INTO crewflow_webhooks (id, tenant, event, body, attempts, next_at, created_at)
                         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5) ON CONFLICT (id) DO NOTHING",
                        params![w.id, w.tenant, w.event, w.body, t],
                    )?;
                    Ok(())
                })
                .await,
            )
        })
    }

    pub(crate) fn claim_webhook_rows<'a>(
        &'a self,
        tenant: &'a str,
        limit: usize,
        lease: std::time::Duration,
    ) -> StoreFuture<'a, Vec<QueuedWebhook>> {
        let tenant = tenant.to_string();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let t = ms(now());
                    let until = t + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
                    let mut claimed = Vec::new();
                    {
                        let mut stmt = tx.prepare_cached(
                            "UPDATE crewflow_webhooks SET claimed_until = ?3, attempts = attempts + 1
                             WHERE id IN (SELECT id FROM crewflow_webhooks
                                 WHERE tenant = ?1 AND next_at <= ?2 AND (claimed_until IS NULL OR claimed_until < ?2)
                                 ORDER BY next_at, id LIMIT ?4)
                             RETURNING id, event, body, attempts",
                        )?;
                        let rows = stmt.query_map(params![tenant, t, until, limit as i64], |r| {
                            Ok(QueuedWebhook {
                                id: r.get(0)?,
                                event: r.get(1)?,
                                body: r.get(2)?,
                                attempts: r.get::<_, i64>(3)? as u32,
                            })
                        })?;
                        for row in rows {
                            claimed.push(row?);
                        }
                    }
                    tx.commit()?;
                    Ok(claimed)
                })
                .await,
            )
        })
    }

    pub(crate) fn settle_webhook_row<'a>(
        &'a self,
        id: &'a str,
        retry_at: Option<DateTime<Utc>>,
    ) -> StoreFuture<'a, ()> {
        let id = id.to_string();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    match retry_at {
                        None => c.execute("DELETE FROM crewflow_webhooks WHERE id = ?1", [&id])?,
                        Some(at) => c.execute(
                            "UPDATE crewflow_webhooks SET next_at = ?2, claimed_until = NULL WHERE id = ?1",
                            params![id, ms(at)],
                        )?,
                    };
                    Ok(())
                })
                .await,
            )
        })
    }
}
