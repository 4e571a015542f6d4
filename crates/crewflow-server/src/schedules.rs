//! Cron schedules: the handlers (create, list, show, delete) and the loop that fires due ticks.
//!
//! A schedule starts a run of its flow with its inputs at each tick of its cron expression,
//! read in the schedule's time zone (UTC unless it names one; daylight-saving rules apply).
//! Schedules live in the run store, so every instance sharing the store sees them; every
//! instance looks for due ticks, and the store lets one of them fire each tick
//! ([`RunStore::fire_schedule`]: a unique row per (schedule, tick), written in the transaction
//! that records the queued run). The instance that fired a tick then drives the run itself,
//! unless [`Server::run_scheduled`](crate::Server::run_scheduled) leaves it queued for a
//! `crewflow worker`.
//!
//! Missed ticks (every instance was down, or busy past the tick): only the latest missed tick
//! fires, once, when an instance looks next; the earlier ones are skipped, never fired as a
//! burst. The latest is skipped too — recorded as a skipped tick, with no run — when it is
//! older than the schedule's maximum lateness (its own, else the server's:
//! [`Server::max_lateness`](crate::Server::max_lateness), 1 hour by default). No tick before a
//! schedule's creation fires.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use crewflow_core::RunId;
use crewflow_core::persist::{NewSchedule, ScheduleFire, StoredSchedule};
use croner::Cron;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::hosted::Hosted;
use crate::live::Ended;
use crate::routes::{App, Reply, Shared, body_error, drive, object_body, path_error, query_error};

/// How this server takes part in firing schedules ([`Server`](crate::Server)'s setters).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scheduling {
    /// This instance looks for due ticks.
    pub fire: bool,
    /// The instance that fired a tick drives its run (else a worker does).
    pub run_here: bool,
    /// How often it looks.
    pub every: Duration,
    /// A missed tick older than this when it is found is skipped, not fired (`None`: fired
    /// however old).
    pub max_lateness: Option<Duration>,
}

/// The default [`Scheduling::max_lateness`]: 1 hour.
pub(crate) const DEFAULT_MAX_LATENESS: Duration = Duration::from_secs(3600);

impl Default for Scheduling {
    fn default() -> Self {
        Scheduling {
            fire: true,
            run_here: true,
            every: Duration::from_secs(1),
            max_lateness: Some(DEFAULT_MAX_LATENESS),
        }
    }
}

/// Why a schedule's due tick could not fire on this server (its flow no longer takes its
/// inputs, the store refused), by schedule id: shown as `last_error` until a tick fires.
#[derive(Default)]
pub(crate) struct Errors(Mutex<HashMap<String, String>>);

impl Errors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, id: &str, message: String) {
        self.lock().insert(id.to_string(), message);
    }

    fn clear(&self, id: &str) {
        self.lock().remove(id);
    }

    fn get(&self, id: &str) -> Option<String> {
        self.lock().get(id).cloned()
    }
}

/// The largest `max_lateness_seconds` a schedule takes (100 years): what it says is what is kept.
const MAX_LATENESS_SECONDS: u64 = 100 * 366 * 86_400;

/// How many of a schedule's latest fires `GET /schedules/{id}` shows.
const SHOWN_FIRES: usize = 20;

/// Parses a cron expression: five fields (minute hour day-of-month month day-of-week), or six
/// with seconds first, or seven with a year last; `@hourly`, `@daily`, ... too.
pub(crate) fn parse_cron(text: &str) -> Result<Cron, String> {
    let cron = Cron::from_str(text.trim()).map_err(|e| e.to_string())?;
    // A pattern that names no time (the 30th of February) is refused here, not at its first tick.
    cron.find_next_occurrence(&Utc::now(), false).map_err(|_| "it never fires (no date matches it)".to_string())?;
    Ok(cron)
}

fn bad_cron(text: &str, problem: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_cron",
        format!(
            "`cron` is `{text}`: {problem}; give five fields, minute hour day-of-month month day-of-week, in the schedule's `timezone` (`0 9 * * 1-5`: 09:00 on weekdays), or six with seconds first (`*/10 * * * * *`: every 10 s)"
        ),
    )
}

/// A schedule's time zone: an IANA name (`Europe/Paris`), or `UTC`.
pub(crate) fn parse_timezone(text: &str) -> Result<Tz, ApiError> {
    text.parse::<Tz>().map_err(|_| {
        let hint = match chrono_tz::TZ_VARIANTS.iter().find(|tz| tz.name().eq_ignore_ascii_case(text)) {
            Some(tz) => format!("did you mean `{}`?", tz.name()),
            None => "give an IANA time zone name such as `Europe/Paris` or `America/New_York`, or `UTC`".into(),
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_timezone",
            format!("`timezone` is `{text}`, which is not a time zone name; {hint}"),
        )
    })
}

/// A stored schedule's time zone (checked when it was created; UTC should it no longer parse).
fn timezone_of(schedule: &StoredSchedule) -> Tz {
    schedule.timezone.parse().unwrap_or(Tz::UTC)
}

/// The next tick after `after`, read in `tz`, if the expression still names one.
fn next_tick(cron: &Cron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&tz), false).ok().map(|t| t.with_timezone(&Utc))
}

/// The latest tick at or before `now`, read in `tz`.
fn latest_tick(cron: &Cron, tz: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_previous_occurrence(&now.with_timezone(&tz), true).ok().map(|t| t.with_timezone(&Utc))
}

fn schedule_json(app: &App, s: &StoredSchedule) -> Value {
    let inputs: Value = serde_json::from_str(&s.inputs).unwrap_or(Value::Null);
    let from = s.last_tick.map_or(s.created_at, |t| t.max(s.created_at)).max(Utc::now());
    let next = parse_cron(&s.cron).ok().and_then(|c| next_tick(&c, timezone_of(s), from));
    json!({
        "schedule_id": s.id,
        "flow": s.flow,
        "cron": s.cron,
        "timezone": s.timezone,
        "max_lateness_seconds": s.max_lateness.map(|d| d.as_secs()),
        "inputs": inputs,
        "created_at": s.created_at,
        "last_tick": s.last_tick,
        "last_run_id": s.last_run.map(|r| r.to_string()),
        "next_tick": next,
        "last_error": app.schedule_errors.get(&s.id),
    })
}

fn fire_json(f: &ScheduleFire) -> Value {
    json!({
        "tick": f.tick,
        "run_id": f.run_id.map(|r| r.to_string()),
        "skipped": f.run_id.is_none(),
        "fired_at": f.fired_at,
    })
}

/// `POST /flows/{flow}/schedules` with `{"cron": "...", "timezone"?: "...",
/// "max_lateness_seconds"?: n, "inputs"?: {...}}`: `201` and the schedule. The cron expression,
/// the time zone and the inputs are checked now.
pub(crate) async fn create_schedule(
    State(app): Shared,
    flow: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let body = body.map_err(body_error)?;
    let Path(flow) = flow.map_err(path_error)?;
    if app.chats.contains_key(&flow) && !app.flows.contains_key(&flow) {
        return Err(ApiError::bad_request(format!(
            "`{flow}` is a conversational flow: it answers turns of a session (POST /sessions/{{id}}/turns), it has no runs to schedule"
        )));
    }
    let hosted = app.flow(&flow)?.clone();
    let body = object_body(&body, "the schedule: {\"cron\": \"0 9 * * 1-5\", \"inputs\": {...}}")?;
    if let Some(extra) =
        body.keys().find(|k| !matches!(k.as_str(), "cron" | "timezone" | "max_lateness_seconds" | "inputs"))
    {
        return Err(ApiError::bad_request(format!(
            "unknown field `{extra}`; the body is {{\"cron\": \"0 9 * * 1-5\", \"timezone\": \"Europe/Paris\", \"max_lateness_seconds\": 600, \"inputs\": {{...}}}} (all but `cron` optional)"
        )));
    }
    let cron = match body.get("cron") {
        Some(Value::String(text)) => text.trim().to_string(),
        Some(other) => return Err(ApiError::bad_request(format!("`cron` must be a string, not {other}"))),
        None => {
            return Err(ApiError::bad_request(
                "the body needs `cron`: {\"cron\": \"0 9 * * 1-5\", \"inputs\": {...}} (five fields, UTC; six with seconds first)",
            ));
        }
    };
    parse_cron(&cron).map_err(|problem| bad_cron(&cron, &problem))?;
    let timezone = match body.get("timezone") {
        None | Some(Value::Null) => Tz::UTC,
        Some(Value::String(name)) => parse_timezone(name.trim())?,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`timezone` must be a time zone name (`Europe/Paris`, `UTC`), not {other}"
            )));
        }
    };
    let max_lateness = match body.get("max_lateness_seconds") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|s| (1..=MAX_LATENESS_SECONDS).contains(&s)) => {
            n.as_u64().map(Duration::from_secs)
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`max_lateness_seconds` must be a whole number of seconds from 1 to {MAX_LATENESS_SECONDS} (100 years: how late a missed tick may still fire), not {other}"
            )));
        }
    };
    let inputs = match body.get("inputs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(inputs)) => inputs.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`inputs` must be a JSON object of the run's inputs (GET /flows/{flow} lists them), not {other}"
            )));
        }
    };
    // Checked as a run's inputs are: a schedule that could never start a run is refused now.
    hosted.queued(inputs.clone()).map_err(ApiError::engine)?;
    let id = RunId::new().to_string();
    let new = NewSchedule {
        id: id.clone(),
        tenant: app.tenant.clone(),
        flow: flow.clone(),
        cron,
        timezone: timezone.name().to_string(),
        max_lateness,
        inputs: Value::Object(inputs).to_string(),
    };
    app.store.create_schedule(&new).await.map_err(ApiError::store)?;
    let (stored, _) = app
        .store
        .load_schedule(&app.tenant, &id, 0)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::store("the schedule just created is not there"))?;
    Ok((StatusCode::CREATED, Json(schedule_json(&app, &stored))).into_response())
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    flow: Option<String>,
}

/// `GET /schedules?flow=`: this tenant's schedules, oldest first.
pub(crate) async fn list_schedules(State(app): Shared, query: Result<Query<ListQuery>, QueryRejection>) -> Reply {
    let Query(query) = query.map_err(query_error)?;
    let flow = query.flow.filter(|f| !f.is_empty());
    let schedules = app.store.list_schedules(&app.tenant, flow.as_deref()).await.map_err(ApiError::store)?;
    let schedules: Vec<Value> = schedules.iter().map(|s| schedule_json(&app, s)).collect();
    Ok(Json(json!({ "schedules": schedules })).into_response())
}

/// `GET /schedules/{id}`: the schedule and its latest fires (newest first).
pub(crate) async fn get_schedule(State(app): Shared, id: Result<Path<String>, PathRejection>) -> Reply {
    let Path(id) = id.map_err(path_error)?;
    let (schedule, fires) = app
        .store
        .load_schedule(&app.tenant, &id, SHOWN_FIRES)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::unknown_schedule(&id))?;
    let mut body = schedule_json(&app, &schedule);
    body["fires"] = fires.iter().map(fire_json).collect();
    Ok(Json(body).into_response())
}

/// `DELETE /schedules/{id}`: no tick fires after it; the runs it started stay.
pub(crate) async fn delete_schedule(State(app): Shared, id: Result<Path<String>, PathRejection>) -> Reply {
    let Path(id) = id.map_err(path_error)?;
    if !app.store.delete_schedule(&app.tenant, &id).await.map_err(ApiError::store)? {
        return Err(ApiError::unknown_schedule(&id));
    }
    app.schedule_errors.clear(&id);
    Ok(Json(json!({"schedule_id": id, "deleted": true})).into_response())
}

/// Starts the loop that fires this server's due ticks, on the current tokio runtime; it stops
/// when the router (the last holder of `app`) is dropped. Nothing without a runtime.
pub(crate) fn spawn(app: &Arc<App>) {
    if !app.scheduling.fire {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let every = app.scheduling.every;
    let weak: Weak<App> = Arc::downgrade(app);
    runtime.spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Some(app) = weak.upgrade() else { return };
            fire_due(&app).await;
        }
    });
}

/// Fires every due tick of this tenant's schedules whose flows are served here: for each, the
/// latest tick not after now, if it is later than the schedule's last fired tick and its
/// creation. A store that does not answer is asked again at the next look.
async fn fire_due(app: &Arc<App>) {
    // Shutting down: no new work; another instance (or this one, restarted) fires the tick.
    if app.drain.is_draining() {
        return;
    }
    let Ok(schedules) = app.store.list_schedules(&app.tenant, None).await else { return };
    let now = Utc::now();
    for schedule in schedules {
        // A flow another instance serves (or no longer served): its ticks are not fired here.
        let Some(hosted) = app.flows.get(&schedule.flow) else { continue };
        let Ok(cron) = parse_cron(&schedule.cron) else { continue };
        let Some(latest) = latest_tick(&cron, timezone_of(&schedule), now) else { continue };
        let after = schedule.last_tick.map_or(schedule.created_at, |t| t.max(schedule.created_at));
        if latest <= after {
            continue;
        }
        let late = (now - latest).to_std().unwrap_or_default();
        match schedule.max_lateness.or(app.scheduling.max_lateness) {
            Some(limit) if late > limit => skip(app, &schedule, latest, late, limit).await,
            _ => fire(app, hosted, &schedule, latest).await,
        }
    }
}

/// Skips a tick found too late to fire: recorded as skipped (once across instances), no run.
async fn skip(app: &Arc<App>, schedule: &StoredSchedule, tick: DateTime<Utc>, late: Duration, limit: Duration) {
    let errors = &app.schedule_errors;
    match app.store.skip_schedule_tick(&schedule.id, tick).await {
        Ok(_) => errors.clear(&schedule.id),
        Err(e) => {
            let why = format!(
                "tick {} was found {} late, over the maximum lateness of {}, and is skipped, but the store refused to record it ({e}); it is tried again",
                tick.to_rfc3339(),
                humanize(late),
                humanize(limit)
            );
            errors.set(&schedule.id, why);
        }
    }
}

/// A duration in whole seconds, for messages.
fn humanize(d: Duration) -> String {
    format!("{} s", d.as_secs())
}

/// Fires one tick: records it with its queued run (once across instances), then drives the run
/// here unless it is left to the workers.
async fn fire(app: &Arc<App>, hosted: &Arc<dyn Hosted>, schedule: &StoredSchedule, tick: DateTime<Utc>) {
    let inputs = match serde_json::from_str::<Value>(&schedule.inputs) {
        Ok(Value::Object(inputs)) => inputs,
        _ => Map::new(),
    };
    let errors = &app.schedule_errors;
    // Inputs the flow no longer takes (its definition changed since): nothing to fire.
    let run = match hosted.queued(inputs) {
        Ok(run) => run,
        Err(e) => {
            let why = format!(
                "tick {} did not fire: the flow refuses the schedule's inputs ({e}); delete the schedule and create it with inputs the flow takes",
                tick.to_rfc3339()
            );
            return errors.set(&schedule.id, why);
        }
    };
    let run_id = run.run_id;
    match app.store.fire_schedule(&schedule.id, tick, &run).await {
        Ok(true) => errors.clear(&schedule.id),
        // Fired by another server, or deleted meanwhile.
        Ok(false) => return,
        Err(e) => {
            let why = format!("tick {} did not fire: the store refused ({e}); it is tried again", tick.to_rfc3339());
            return errors.set(&schedule.id, why);
        }
    }
    if !app.scheduling.run_here {
        return;
    }
    // Claimed by a worker first, the run is the worker's: the refusal leaves it as it is.
    let Some(live) = app.live.begin(run_id, &schedule.flow) else { return };
    match hosted.resume(run_id) {
        Ok(driven) => drive(app, live, driven),
        Err(e) => {
            let api = ApiError::engine(e);
            live.end(Ended::Err {
                cancelled: false,
                refused: true,
                message: api.message,
                status: api.status,
                code: api.code,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    /// New York's clocks jump from 02:00 to 03:00 on 2026-03-08: a fixed 02:30 that day fires
    /// at 03:00 EDT (07:00 UTC), once; the day before and after at 02:30 local.
    #[test]
    fn a_fixed_time_the_spring_change_skips_fires_right_after_the_gap() {
        let (cron, tz) = (parse_cron("30 2 * * *").unwrap(), parse_timezone("America/New_York").unwrap());
        let mut at = utc("2026-03-07T00:00:00Z");
        let mut ticks = Vec::new();
        for _ in 0..3 {
            at = next_tick(&cron, tz, at).unwrap();
            ticks.push(at.to_rfc3339());
        }
        assert_eq!(ticks, ["2026-03-07T07:30:00+00:00", "2026-03-08T07:00:00+00:00", "2026-03-09T06:30:00+00:00"]);
    }

    /// New York's clocks go back from 02:00 to 01:00 on 2026-11-01: a fixed 01:30 fires once,
    /// at its first occurrence (01:30 EDT, 05:30 UTC), and the latest tick seen from inside the
    /// repeated hour is that one.
    #[test]
    fn a_fixed_time_the_autumn_change_repeats_fires_once() {
        let (cron, tz) = (parse_cron("30 1 * * *").unwrap(), parse_timezone("America/New_York").unwrap());
        let first = next_tick(&cron, tz, utc("2026-11-01T00:00:00Z")).unwrap();
        assert_eq!(first, utc("2026-11-01T05:30:00Z"));
        assert_eq!(next_tick(&cron, tz, first).unwrap(), utc("2026-11-02T06:30:00Z"));
        assert_eq!(latest_tick(&cron, tz, utc("2026-11-01T06:45:00Z")).unwrap(), first);
    }

    #[test]
    fn time_zone_names_are_iana_names_and_a_wrong_case_is_corrected() {
        assert_eq!(parse_timezone("UTC").unwrap(), Tz::UTC);
        assert_eq!(parse_timezone("Europe/Paris").unwrap().name(), "Europe/Paris");
        let wrong = parse_timezone("europe/paris").err().unwrap();
        assert!(wrong.message.contains("did you mean `Europe/Paris`?"), "{}", wrong.message);
    }
}
