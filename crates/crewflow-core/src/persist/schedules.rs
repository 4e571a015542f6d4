//! What a store keeps for the run server's cron schedules and webhook deliveries (the
//! [`RunStore`](super::RunStore) methods that take them default to a clear refusal, so a
//! store of one's own need not keep them).

use std::time::Duration;

use chrono::{DateTime, Utc};

#[cfg(doc)]
use super::RunStore;
use super::StoreFuture;
use crate::id::RunId;

/// A webhook event to deliver ([`RunStore::queue_webhook`]): kept until a server delivers it
/// or gives up, so a restart loses none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewWebhook {
    /// The delivery's id (unique; the receiver sees it on every attempt).
    pub id: String,
    /// The tenant whose server delivers it (`""` without tenants).
    pub tenant: String,
    /// The event's type (`run.finished`, ...).
    pub event: String,
    /// The body, as sent (JSON text).
    pub body: String,
}

/// A webhook event claimed for delivery ([`RunStore::claim_webhooks`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedWebhook {
    /// The delivery's id.
    pub id: String,
    /// The event's type.
    pub event: String,
    /// The body.
    pub body: String,
    /// Which attempt this claim is (1 for the first).
    pub attempts: u32,
}

pub(super) fn no_schedules<T>(store: String) -> StoreFuture<'static, T> {
    Box::pin(async move {
        Err(format!("the store {store} keeps no schedules; use a SQLite or PostgreSQL store from crewflow-store")
            .into())
    })
}

/// A cron schedule to record ([`RunStore::create_schedule`]): runs of `flow` with `inputs`, one
/// at each tick of `cron`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSchedule {
    /// The schedule's id (unique in the store).
    pub id: String,
    /// The tenant it belongs to (`""` for a server without tenants).
    pub tenant: String,
    /// The flow it starts runs of.
    pub flow: String,
    /// The cron expression, as given.
    pub cron: String,
    /// The time zone its cron expression is read in: an IANA name (`Europe/Paris`), or `UTC`.
    pub timezone: String,
    /// How late a missed tick may still fire; `None`: the server's limit.
    pub max_lateness: Option<Duration>,
    /// The inputs of every run it starts, as JSON text (an object).
    pub inputs: String,
}

/// A cron schedule as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSchedule {
    /// The schedule's id.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// The flow it starts runs of.
    pub flow: String,
    /// The cron expression.
    pub cron: String,
    /// The time zone its cron expression is read in (`UTC` for schedules made before time zones).
    pub timezone: String,
    /// How late a missed tick may still fire; `None`: the server's limit.
    pub max_lateness: Option<Duration>,
    /// The inputs of every run it starts, as JSON text.
    pub inputs: String,
    /// When it was created: no tick before this fires.
    pub created_at: DateTime<Utc>,
    /// The latest tick fired, if any: no tick up to this one fires again.
    pub last_tick: Option<DateTime<Utc>>,
    /// The run the latest tick started.
    pub last_run: Option<RunId>,
}

/// One fired tick of a schedule and the run it started, or a tick skipped as too late
/// ([`RunStore::skip_schedule_tick`](super::RunStore::skip_schedule_tick)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleFire {
    /// The tick (a time the cron expression names).
    pub tick: DateTime<Utc>,
    /// The run it queued; `None` for a skipped tick.
    pub run_id: Option<RunId>,
    /// When it was fired (at or a little after the tick), or skipped.
    pub fired_at: DateTime<Utc>,
}
