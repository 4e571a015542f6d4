//! Cron schedules in PostgreSQL (schema migration 7): the schedules, one row per fired tick,
//! and the run server's webhook events waiting for delivery.
//!
//! Several servers sharing the database fire each tick once: the tick's row (schedule, tick) is
//! the table's primary key, inserted (`ON CONFLICT DO NOTHING`) in the same transaction that
//! moves the schedule's last tick and records the queued run. Two transactions firing one tick
//! meet on the schedule's row lock: the second one, once the first commits, sees the moved
//! last tick and changes nothing (see `RunStore::fire_schedule`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use crewflow_core::persist::{
    NewRun, NewSchedule, NewWebhook, QueuedWebhook, RunStatus, ScheduleFire, StoreFuture, StoredSchedule,
};

use crate::StoreError;
use crate::postgres::{PostgresStore, boxed};
use crate::util::{fingerprint, lateness_ms, parse_run_id, refuse_nul_in_run, refuse_nul_json, refuse_nul_text};

/// Migration 7: schedules (per tenant and flow), their fired ticks, and webhook events.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE crewflow_schedules (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    flow       TEXT NOT NULL,
    cron       TEXT NOT NULL,
    inputs     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    last_tick  TIMESTAMPTZ,
    last_run   TEXT
);
CREATE INDEX crewflow_schedules_by_tenant ON crewflow_schedules (tenant, flow, created_at);
CREATE TABLE crewflow_schedule_ticks (
    schedule_id TEXT NOT NULL REFERENCES crewflow_schedules (id) ON DELETE CASCADE,
    tick        TIMESTAMPTZ NOT NULL,
    run_id      TEXT NOT NULL,
    fired_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (schedule_id, tick)
);
CREATE TABLE crewflow_webhooks (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    event         TEXT NOT NULL,
    body          TEXT NOT NULL,
    attempts      INTEGER NOT NULL,
    next_at       TIMESTAMPTZ NOT NULL,
    claimed_until TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX crewflow_webhooks_due ON crewflow_webhooks (tenant, next_at);
"#;

/// How many fired ticks are kept per schedule (see the SQLite store's).
const KEPT_FIRES: i64 = 100;

const COLUMNS: &str = "id, tenant, flow, cron, inputs, created_at, last_tick, last_run, timezone, max_lateness_ms";

/// Migration 10: a schedule's time zone and its own maximum lateness (`NULL`: the server's).
pub(crate) const MIGRATION_TIMEZONES: &str = r#"
ALTER TABLE crewflow_schedules ADD COLUMN timezone TEXT NOT NULL DEFAULT 'UTC';
ALTER TABLE crewflow_schedules ADD COLUMN max_lateness_ms BIGINT;
"#;

/// Keeps a schedule's latest `KEPT_FIRES` ticks ($1: the schedule, $2: `KEPT_FIRES - 1`), after a
/// tick is fired or skipped.
const TRIM_TICKS: &str = "DELETE FROM crewflow_schedule_ticks WHERE schedule_id = $1 AND tick <
    (SELECT tick FROM crewflow_schedule_ticks WHERE schedule_id = $1 ORDER BY tick DESC LIMIT 1 OFFSET $2)";

fn schedule(r: &tokio_postgres::Row) -> Result<StoredSchedule, StoreError> {
    let last_run: Option<String> = r.try_get(7)?;
    Ok(StoredSchedule {
        id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        flow: r.try_get(2)?,
        cron: r.try_get(3)?,
        inputs: r.try_get(4)?,
        created_at: r.try_get(5)?,
        last_tick: r.try_get(6)?,
        last_run: last_run.as_deref().map(parse_run_id).transpose()?,
        timezone: r.try_get(8)?,
        max_lateness: r.try_get::<_, Option<i64>>(9)?.map(|ms| Duration::from_millis(ms.max(0) as u64)),
    })
}

impl PostgresStore {
    pub(crate) fn create_schedule_row<'a>(&'a self, s: &'a NewSchedule) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            boxed(
                async {
                    refuse_nul_text("the schedule's tenant", &s.tenant)?;
                    refuse_nul_text("the schedule's cron expression", &s.cron)?;
                    refuse_nul_text("the schedule's time zone", &s.timezone)?;
                    refuse_nul_json("the schedule's inputs", &s.inputs)?;
                    let client = self.client().await?;
                    let inserted = client
                        .execute(
                            "INSERT INTO crewflow_schedules (id, tenant, flow, cron, inputs, created_at, timezone, max_lateness_ms)
                             VALUES ($1, $2, $3, $4, $5, now(), $6, $7) ON CONFLICT (id) DO NOTHING",
                            &[&s.id, &s.tenant, &s.flow, &s.cron, &s.inputs, &s.timezone, &lateness_ms(s.max_lateness)],
                        )
                        .await?;
                    if inserted == 0 {
                        return Err(StoreError::ScheduleExists(s.id.clone()));
                    }
                    Ok(())
                }
                .await,
            )
        })
    }

    pub(crate) fn list_schedule_rows<'a>(
        &'a self,
        tenant: &'a str,
        flow: Option<&'a str>,
    ) -> StoreFuture<'a, Vec<StoredSchedule>> {
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    let rows = client
                        .query(
                            &format!(
                                "SELECT {COLUMNS} FROM crewflow_schedules
                                 WHERE tenant = $1 AND ($2::text IS NULL OR flow = $2) ORDER BY created_at, id"
                            ),
                            &[&tenant, &flow],
                        )
                        .await?;
                    rows.iter().map(schedule).collect()
                }
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
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    let Some(row) = client
                        .query_opt(
                            &format!("SELECT {COLUMNS} FROM crewflow_schedules WHERE tenant = $1 AND id = $2"),
                            &[&tenant, &id],
                        )
                        .await?
                    else {
                        return Ok(None);
                    };
                    let found = schedule(&row)?;
                    let rows = client
                        .query(
                            "SELECT tick, run_id, fired_at FROM crewflow_schedule_ticks
                             WHERE schedule_id = $1 ORDER BY tick DESC LIMIT $2",
                            &[&id, &(fires as i64)],
                        )
                        .await?;
                    let mut list = Vec::with_capacity(rows.len());
                    for r in &rows {
                        let run: String = r.try_get(1)?;
                        list.push(ScheduleFire {
                            tick: r.try_get(0)?,
                            // A skipped tick is stored with no run (an empty id).
                            run_id: if run.is_empty() { None } else { Some(parse_run_id(&run)?) },
                            fired_at: r.try_get(2)?,
                        });
                    }
                    Ok(Some((found, list)))
                }
                .await,
            )
        })
    }

    pub(crate) fn delete_schedule_row<'a>(&'a self, tenant: &'a str, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    // The fired ticks go with it (ON DELETE CASCADE).
                    let deleted = client
                        .execute("DELETE FROM crewflow_schedules WHERE tenant = $1 AND id = $2", &[&tenant, &id])
                        .await?;
                    Ok(deleted > 0)
                }
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
        Box::pin(async move {
            boxed(
                async {
                    if run.status != RunStatus::Queued || run.chained {
                        return Err(StoreError::Corrupt(format!(
                            "a schedule's tick records a queued run (Flow::queued_run), not a {} one",
                            run.status.as_str()
                        )));
                    }
                    refuse_nul_in_run(run)?;
                    let mut client = self.client().await?;
                    let tx = client.transaction().await?;
                    let run_id = run.run_id.to_string();
                    // The schedule's row lock orders two firings of one tick: the later one
                    // re-reads `last_tick` once the first commits, and moves nothing.
                    let moved = tx
                        .execute(
                            "UPDATE crewflow_schedules SET last_tick = $2, last_run = $3
                             WHERE id = $1 AND (last_tick IS NULL OR last_tick < $2)",
                            &[&id, &tick, &run_id],
                        )
                        .await?;
                    let claimed = moved > 0
                        && tx
                            .execute(
                                "INSERT INTO crewflow_schedule_ticks (schedule_id, tick, run_id, fired_at)
                                 VALUES ($1, $2, $3, now()) ON CONFLICT DO NOTHING",
                                &[&id, &tick, &run_id],
                            )
                            .await?
                            > 0;
                    if !claimed {
                        // Dropping the transaction rolls the update back.
                        return Ok(false);
                    }
                    tx.execute(
                        "INSERT INTO crewflow_runs (id, flow, fingerprint, status, owner, lease_until, fencing, seq,
                             inputs, payload, state, frontier, created_at, updated_at, state_version)
                         VALUES ($1, $2, $3, 'queued', NULL, NULL, 0, 0,
                             $4::text::jsonb, $5::text::jsonb, $6::text::jsonb, $7::text::jsonb, now(), now(), $8)",
                        &[
                            &run_id,
                            &&*run.flow,
                            &fingerprint(run.fingerprint),
                            &run.inputs,
                            &run.payload,
                            &run.state,
                            &run.frontier,
                            &i64::from(run.state_version),
                        ],
                    )
                    .await?;
                    tx.execute(TRIM_TICKS, &[&id, &(KEPT_FIRES - 1)]).await?;
                    tx.commit().await?;
                    Ok(true)
                }
                .await,
            )
        })
    }

    pub(crate) fn skip_schedule_tick_row<'a>(&'a self, id: &'a str, tick: DateTime<Utc>) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            boxed(
                async {
                    let mut client = self.client().await?;
                    let tx = client.transaction().await?;
                    // As a fire, without a run: `last_run` stays the last run a tick started.
                    let moved = tx
                        .execute(
                            "UPDATE crewflow_schedules SET last_tick = $2
                             WHERE id = $1 AND (last_tick IS NULL OR last_tick < $2)",
                            &[&id, &tick],
                        )
                        .await?;
                    let skipped = moved > 0
                        && tx
                            .execute(
                                "INSERT INTO crewflow_schedule_ticks (schedule_id, tick, run_id, fired_at)
                                 VALUES ($1, $2, '', now()) ON CONFLICT DO NOTHING",
                                &[&id, &tick],
                            )
                            .await?
                            > 0;
                    if !skipped {
                        return Ok(false); // dropping the transaction rolls the update back
                    }
                    tx.execute(TRIM_TICKS, &[&id, &(KEPT_FIRES - 1)]).await?;
                    tx.commit().await?;
                    Ok(true)
                }
                .await,
            )
        })
    }

    pub(crate) fn queue_webhook_row<'a>(&'a self, w: &'a NewWebhook) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            boxed(
                async {
                    refuse_nul_text("the webhook's tenant", &w.tenant)?;
                    refuse_nul_json("the webhook's body", &w.body)?;
                    let client = self.client().await?;
                    client
                        .execute(
                            "INSERT INTO crewflow_webhooks (id, tenant, event, body, attempts, next_at, created_at)
                             VALUES ($1, $2, $3, $4, 0, now(), now()) ON CONFLICT (id) DO NOTHING",
                            &[&w.id, &w.tenant, &w.event, &w.body],
                        )
                        .await?;
                    Ok(())
                }
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
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    let lease_ms = lease.as_millis() as f64;
                    // SKIP LOCKED: concurrent claimers never wait on, or get, the same events.
                    let rows = client
                        .query(
                            "UPDATE crewflow_webhooks w
                             SET claimed_until = now() + $3 * interval '1 millisecond', attempts = w.attempts + 1
                             WHERE w.id IN (SELECT id FROM crewflow_webhooks
                                 WHERE tenant = $1 AND next_at <= now() AND (claimed_until IS NULL OR claimed_until < now())
                                 ORDER BY next_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
                             RETURNING w.id, w.event, w.body, w.attempts",
                            &[&tenant, &(limit as i64), &lease_ms],
                        )
                        .await?;
                    let mut claimed = Vec::with_capacity(rows.len());
                    for r in &rows {
                        claimed.push(QueuedWebhook {
                            id: r.try_get(0)?,
                            event: r.try_get(1)?,
                            body: r.try_get(2)?,
                            attempts: r.try_get::<_, i32>(3)? as u32,
                        });
                    }
                    Ok(claimed)
                }
                .await,
            )
        })
    }

    pub(crate) fn settle_webhook_row<'a>(
        &'a self,
        id: &'a str,
        retry_at: Option<DateTime<Utc>>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    match retry_at {
                        None => client.execute("DELETE FROM crewflow_webhooks WHERE id = $1", &[&id]).await?,
                        Some(at) => {
                            client
                                .execute(
                                    "UPDATE crewflow_webhooks SET next_at = $2, claimed_until = NULL WHERE id = $1",
                                    &[&id, &at],
                                )
                                .await?
                        }
                    };
                    Ok(())
                }
                .await,
            )
        })
    }
}
