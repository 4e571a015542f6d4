//! Cron schedules over real loopback HTTP: a schedule fires at its ticks (a cron with seconds,
//! so the tests take seconds) and its runs finish; bad expressions and inputs are refused at
//! creation, naming the problem and the fix; missed ticks fire once, not as a burst; schedules
//! belong to their tenant; two servers on one PostgreSQL fire each tick once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{error_of, greet, poll, serve, serve_app};
use crewflow_core::persist::RunStore;
use crewflow_server::{Server, Tenants, tenant_router};
use serde_json::Value;

fn greeting_server(store: &Arc<dyn RunStore>) -> Server {
    Server::new(store.clone()).flow(&greet(store)).unwrap().schedule_every(Duration::from_millis(50))
}

fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn RunStore> {
    crewflow_store::open(dir.path().join("runs.db").to_str().unwrap()).unwrap()
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap_or_else(|| panic!("not a time: {v}")).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_at_its_ticks_and_its_runs_finish() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir);
    let srv = serve(greeting_server(&store)).await;

    let (code, created) =
        srv.post("/flows/greet/schedules", r#"{"cron": "* * * * * *", "inputs": {"name": "cron"}}"#).await;
    assert_eq!(code, 201, "{created}");
    let id = created["schedule_id"].as_str().unwrap().to_string();
    assert_eq!((created["flow"].as_str(), created["timezone"].as_str()), (Some("greet"), Some("UTC")));
    assert_eq!(created["inputs"], serde_json::json!({"name": "cron"}));
    assert!(created["last_tick"].is_null() && created["last_run_id"].is_null(), "{created}");
    let next = time(&created["next_tick"]);
    assert!(next > time(&created["created_at"]) && next.timestamp_subsec_nanos() == 0, "{created}");

    // Three ticks fire, one run each, and each run finishes with the schedule's inputs.
    let fires = poll("three ticks to fire", || async {
        let (_, body) = srv.get(&format!("/schedules/{id}")).await;
        (body["fires"].as_array().unwrap().len() >= 3).then_some(body)
    })
    .await;
    let list = fires["fires"].as_array().unwrap();
    let ticks: Vec<DateTime<Utc>> = list.iter().map(|f| time(&f["tick"])).collect();
    for pair in ticks.windows(2) {
        assert!(pair[0] > pair[1], "newest first, one fire per tick: {ticks:?}");
    }
    for fire in list {
        let tick = time(&fire["tick"]);
        assert_eq!(tick.timestamp_subsec_nanos(), 0, "a tick is a whole second: {fire}");
        let fired = time(&fire["fired_at"]);
        assert!(fired >= tick && fired - tick < chrono::TimeDelta::milliseconds(900), "fired at its tick: {fire}");
        let run = srv.wait_status(fire["run_id"].as_str().unwrap(), "finished").await;
        assert_eq!((run["flow"].as_str(), run["output"].as_str()), (Some("greet"), Some("HELLO, CRON")), "{run}");
        assert_eq!(run["inputs"], serde_json::json!({"name": "cron"}));
    }
    assert_eq!(fires["last_run_id"], list[0]["run_id"]);
    assert_eq!(fires["last_tick"], list[0]["tick"]);

    // Listed (and by flow); deleted, it fires no more, and its runs stay.
    let (_, listed) = srv.get("/schedules?flow=greet").await;
    assert_eq!(listed["schedules"][0]["schedule_id"], id.as_str());
    let (_, other) = srv.get("/schedules?flow=other").await;
    assert_eq!(other["schedules"], serde_json::json!([]));
    let (code, deleted) = srv.delete(&format!("/schedules/{id}")).await;
    assert_eq!((code, &deleted["deleted"]), (200, &Value::Bool(true)), "{deleted}");
    let count = || async {
        let (_, runs) = srv.get("/runs?flow=greet").await;
        runs["runs"].as_array().unwrap().len()
    };
    let before = count().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count().await, before, "a deleted schedule fired");
    let (code, gone) = srv.get(&format!("/schedules/{id}")).await;
    assert_eq!((code, error_of(&gone).0), (404, "unknown_schedule"));
    let (code, _) = srv.delete(&format!("/schedules/{id}")).await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_refused_at_creation_naming_the_problem_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir);
    let srv = serve(greeting_server(&store)).await;

    let cases = [
        (r#"{"cron": "61 * * * *"}"#, 400, "bad_cron", "`cron` is `61 * * * *`"),
        (r#"{"cron": "every day"}"#, 400, "bad_cron", "give five fields"),
        (r#"{"cron": "0 0 30 2 *"}"#, 400, "bad_cron", "it never fires"),
        (r#"{"cron": 5}"#, 400, "bad_request", "`cron` must be a string"),
        (r#"{"inputs": {}}"#, 400, "bad_request", "the body needs `cron`"),
        (r#"{"cron": "* * * * *", "when": 1}"#, 400, "bad_request", "unknown field `when`"),
        (r#"{"cron": "* * * * *", "inputs": [1]}"#, 400, "bad_request", "`inputs` must be a JSON object"),
        (r#"{"cron": "* * * * *", "inputs": {"nope": 1}}"#, 400, "bad_inputs", "nope"),
        (r#"{"cron": "* * * * *", "inputs": {"times": "many"}}"#, 400, "bad_inputs", "times"),
        (r#"[1, 2]"#, 400, "bad_request", "must be a JSON object"),
        (r#"{"cron": "#, 400, "bad_request", "not valid JSON"),
        (
            r#"{"cron": "* * * * *", "timezone": "Mars/Olympus"}"#,
            400,
            "bad_timezone",
            "`Mars/Olympus`, which is not a time zone name; give an IANA",
        ),
        (r#"{"cron": "* * * * *", "timezone": "europe/paris"}"#, 400, "bad_timezone", "did you mean `Europe/Paris`?"),
        (r#"{"cron": "* * * * *", "timezone": 2}"#, 400, "bad_request", "`timezone` must be a time zone name"),
        (r#"{"cron": "* * * * *", "max_lateness_seconds": 0}"#, 400, "bad_request", "from 1 to"),
        (r#"{"cron": "* * * * *", "max_lateness_seconds": -5}"#, 400, "bad_request", "`max_lateness_seconds` must be"),
        (r#"{"cron": "* * * * *", "max_lateness_seconds": "1h"}"#, 400, "bad_request", "whole number of seconds"),
        (
            r#"{"cron": "* * * * *", "max_lateness_seconds": 18446744073709551615}"#,
            400,
            "bad_request",
            "from 1 to 3162240000",
        ),
    ];
    for (body, status, code, needle) in cases {
        let (got, answer) = srv.post("/flows/greet/schedules", body).await;
        let (got_code, message) = error_of(&answer);
        assert_eq!((got, got_code), (status, code), "{body}: {answer}");
        assert!(message.contains(needle), "{body}: `{message}` lacks `{needle}`");
    }
    let (code, answer) = srv.post("/flows/nope/schedules", r#"{"cron": "* * * * *"}"#).await;
    assert_eq!((code, error_of(&answer).0), (404, "unknown_flow"), "{answer}");
    let (_, listed) = srv.get("/schedules").await;
    assert_eq!(listed["schedules"], serde_json::json!([]), "nothing refused was kept");

    // Aliases and five-field expressions are taken.
    for cron in ["@hourly", "0 9 * * 1-5", "*/10 * * * * *"] {
        let (code, answer) = srv.post("/flows/greet/schedules", &format!(r#"{{"cron": "{cron}"}}"#)).await;
        assert_eq!(code, 201, "{cron}: {answer}");
    }
}

/// With `run_scheduled(false)` the server only fires ticks: each run is recorded queued, and a
/// worker (`crewflow worker`, here the `Worker` it runs) claims and runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_left_to_the_workers_is_run_by_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir);
    let srv = serve(greeting_server(&store).run_scheduled(false)).await;
    let (code, created) =
        srv.post("/flows/greet/schedules", r#"{"cron": "* * * * * *", "inputs": {"name": "w"}}"#).await;
    assert_eq!(code, 201, "{created}");
    let id = created["schedule_id"].as_str().unwrap().to_string();
    let first = poll("a tick to fire", || async {
        let (_, body) = srv.get(&format!("/schedules/{id}")).await;
        body["fires"].as_array().unwrap().last().cloned()
    })
    .await;
    let run_id = first["run_id"].as_str().unwrap().to_string();
    let (_, run) = srv.get(&format!("/runs/{run_id}")).await;
    assert_eq!(run["status"], "queued", "fired, not run: {run}");

    let shutdown = crewflow_core::Canceller::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let worker =
        crewflow_core::Worker::new(store.clone()).flow(&greet(&store)).poll_interval(Duration::from_millis(50));
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { worker.run(stop, move |report| drop(tx.send(report))).await });
    let run = srv.wait_status(&run_id, "finished").await;
    assert_eq!(run["output"], "HELLO, W");
    let report = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap();
    assert!(report.result.is_ok(), "{report:?}");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A schedule whose flow changed so that it no longer takes the schedule's inputs fires
/// nothing, and says why in `last_error` (naming the fix); deleting it clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_that_cannot_fire_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir);
    let before = serve(greeting_server(&store).fire_schedules(false)).await;
    let (code, created) =
        before.post("/flows/greet/schedules", r#"{"cron": "* * * * * *", "inputs": {"name": "x"}}"#).await;
    assert_eq!(code, 201, "{created}");
    assert!(created["last_error"].is_null(), "{created}");
    let id = created["schedule_id"].as_str().unwrap().to_string();

    // `greet` redefined without the `name` field.
    let changed = crewflow_core::FlowBuilder::<common::Doc>::new("greet")
        .start("hello", |_cx: crewflow_core::Cx<common::Doc>, (): ()| async move { Ok("hi") })
        .store(store.clone())
        .build()
        .unwrap();
    let after =
        serve(Server::new(store.clone()).flow(&changed).unwrap().schedule_every(Duration::from_millis(50))).await;
    let body = poll("the tick's error", || async {
        let (_, body) = after.get(&format!("/schedules/{id}")).await;
        body["last_error"].as_str().is_some().then_some(body)
    })
    .await;
    let error = body["last_error"].as_str().unwrap();
    assert!(error.contains("refuses the schedule's inputs") && error.contains("name"), "{error}");
    assert!(error.contains("create it with inputs the flow takes"), "{error}");
    assert_eq!(body["fires"], serde_json::json!([]));
    let (code, _) = after.delete(&format!("/schedules/{id}")).await;
    assert_eq!(code, 200);
}

/// Ticks missed while no server fired them: only the latest fires, once, when a server looks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_ticks_fire_once_not_as_a_burst() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir);
    // A server that fires nothing: the schedule's ticks pass unfired.
    let quiet = serve(greeting_server(&store).fire_schedules(false)).await;
    let (code, created) = quiet.post("/flows/greet/schedules", r#"{"cron": "* * * * * *"}"#).await;
    assert_eq!(code, 201, "{created}");
    let id = created["schedule_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let (_, body) = quiet.get(&format!("/schedules/{id}")).await;
    assert_eq!(body["fires"], serde_json::json!([]), "a server that does not fire fired");

    // A server that fires comes up: the first fire is the latest tick, not the missed ones.
    let started = Utc::now();
    let firing = serve(greeting_server(&store)).await;
    let body = poll("the first fire", || async {
        let (_, body) = firing.get(&format!("/schedules/{id}")).await;
        (!body["fires"].as_array().unwrap().is_empty()).then_some(body)
    })
    .await;
    let fires = body["fires"].as_array().unwrap();
    let earliest = time(&fires[fires.len() - 1]["tick"]);
    assert!(earliest > started - chrono::TimeDelta::seconds(1), "an old missed tick fired: {body}");
    assert!(fires.len() <= 2, "a burst of missed ticks: {body}");
}

/// Each schedule belongs to its key's tenant, even when tenants share one store: another
/// tenant's schedule ids answer 404 (get, delete) and never show in its lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_belong_to_their_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir);
    let tenants = Tenants::new()
        .tenant("acme", greeting_server(&store).fire_schedules(false))
        .unwrap()
        .tenant("globex", Server::new(store.clone()).flow(&greet(&store)).unwrap().fire_schedules(false))
        .unwrap()
        .key("acme", "sk-acme")
        .unwrap()
        .key("globex", "sk-globex")
        .unwrap();
    let srv = serve_app(tenant_router(tenants)).await;
    let (acme, globex) = (srv.with_key("sk-acme"), srv.with_key("sk-globex"));

    let (code, created) = acme.post("/flows/greet/schedules", r#"{"cron": "0 9 * * *"}"#).await;
    assert_eq!(code, 201, "{created}");
    let id = created["schedule_id"].as_str().unwrap().to_string();
    let (code, theirs) = globex.post("/flows/greet/schedules", r#"{"cron": "0 10 * * *"}"#).await;
    assert_eq!(code, 201, "{theirs}");

    let (code, body) = globex.get(&format!("/schedules/{id}")).await;
    assert_eq!((code, error_of(&body).0), (404, "unknown_schedule"), "{body}");
    assert!(!body.to_string().contains("acme") && !body.to_string().contains("0 9 * * *"), "{body}");
    let (code, _) = globex.delete(&format!("/schedules/{id}")).await;
    assert_eq!(code, 404);
    let (_, listed) = globex.get("/schedules").await;
    let ids: Vec<&str> =
        listed["schedules"].as_array().unwrap().iter().map(|s| s["schedule_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [theirs["schedule_id"].as_str().unwrap()]);

    // Still there for its own tenant after the other's delete; no key: 401.
    let (code, mine) = acme.get(&format!("/schedules/{id}")).await;
    assert_eq!((code, mine["cron"].as_str()), (200, Some("0 9 * * *")));
    let (code, _) = srv.get("/schedules").await;
    assert_eq!(code, 401);
    let (code, _) = acme.delete(&format!("/schedules/{id}")).await;
    assert_eq!(code, 200);
}

/// Two servers, each with its own connections to one PostgreSQL database, both looking for
/// due ticks every 20 ms: every tick fires once, one run per tick, whichever server fires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES to a PostgreSQL URL")]
async fn two_servers_on_one_postgres_fire_each_tick_once() {
    let url = common::fresh_pg_schema().await;
    let open = || -> Arc<dyn RunStore> { Arc::new(crewflow_store::PostgresStore::connect_lazy(&url).unwrap()) };
    let (one, two) = (open(), open());
    let srv_one = serve(greeting_server(&one).schedule_every(Duration::from_millis(20))).await;
    let srv_two = serve(greeting_server(&two).schedule_every(Duration::from_millis(20))).await;

    let (code, created) =
        srv_one.post("/flows/greet/schedules", r#"{"cron": "* * * * * *", "inputs": {"name": "pg"}}"#).await;
    assert_eq!(code, 201, "{created}");
    let id = created["schedule_id"].as_str().unwrap().to_string();
    // Both servers see it (one store), and fire its ticks between them.
    let body = poll("five ticks to fire", || async {
        let (_, body) = srv_two.get(&format!("/schedules/{id}")).await;
        (body["fires"].as_array().unwrap().len() >= 5).then_some(body)
    })
    .await;
    // One snapshot of the database: as many runs as fired ticks (a second firing of a tick
    // would have queued a second run), and no more fired ticks than seconds went by.
    let (ticks_fired, runs, first_tick) = snapshot(&url, &id).await;
    let elapsed = (Utc::now() - first_tick).num_milliseconds() as f64 / 1000.0;
    assert_eq!(ticks_fired, runs, "runs queued without a tick of their own");
    assert!(ticks_fired as f64 <= elapsed.floor() + 1.0, "{ticks_fired} fires in {elapsed} s");
    let (code, _) = srv_two.delete(&format!("/schedules/{id}")).await;
    assert_eq!(code, 200);
    let fires = body["fires"].as_array().unwrap();
    let ticks: BTreeSet<DateTime<Utc>> = fires.iter().map(|f| time(&f["tick"])).collect();
    let run_ids: BTreeSet<&str> = fires.iter().map(|f| f["run_id"].as_str().unwrap()).collect();
    assert_eq!((ticks.len(), run_ids.len()), (fires.len(), fires.len()), "a tick fired twice: {body}");
    let (first, last) = (*ticks.first().unwrap(), *ticks.last().unwrap());
    assert_eq!((last - first).num_seconds() as usize + 1, ticks.len(), "a tick was skipped: {ticks:?}");

    // Each run finishes, driven by whichever server fired its tick.
    for run_id in &run_ids {
        let run = srv_one.wait_status(run_id, "finished").await;
        assert_eq!(run["output"], "HELLO, PG");
    }
    let (.., first_after) = snapshot(&url, &id).await;
    assert_eq!(first_after, DateTime::<Utc>::MIN_UTC, "the deleted schedule's fires are gone with it");
}

/// Read straight from PostgreSQL in one statement (one snapshot): the ticks `schedule` fired,
/// the runs of `greet`, and the first tick fired (`MIN_UTC` for none).
async fn snapshot(url: &str, schedule: &str) -> (i64, i64, DateTime<Utc>) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM crewflow_schedule_ticks WHERE schedule_id = $1),
                    (SELECT count(*) FROM crewflow_runs WHERE flow = 'greet'),
                    (SELECT min(tick) FROM crewflow_schedule_ticks WHERE schedule_id = $1)",
            &[&schedule],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get::<_, Option<DateTime<Utc>>>(2).unwrap_or(DateTime::<Utc>::MIN_UTC))
}

/// A schedule made long ago whose latest tick (this year's January 1st, 00:00 UTC) was missed
/// by every server: older than the maximum lateness (1 hour by default) it is skipped —
/// recorded as skipped, with no run — and with no limit it fires, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_tick_older_than_the_maximum_lateness_is_skipped_not_fired() {
    use chrono::Datelike;
    let now = Utc::now();
    let tick = chrono::NaiveDate::from_ymd_opt(now.year(), 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc();
    for limit in [Some(None), None] {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(&dir);
        let server = match limit {
            Some(limit) => greeting_server(&store).max_lateness(limit),
            None => greeting_server(&store), // the default: 1 hour
        };
        let srv = serve(server).await;
        let (code, created) = srv.post("/flows/greet/schedules", r#"{"cron": "0 0 0 1 1 *"}"#).await;
        assert_eq!(code, 201, "{created}");
        let id = created["schedule_id"].as_str().unwrap().to_string();
        // Made two years ago, and no server fired since: the tick of January 1st was missed.
        let db = rusqlite::Connection::open(dir.path().join("runs.db")).unwrap();
        let moved = db
            .execute(
                "UPDATE crewflow_schedules SET created_at = created_at - ?2 WHERE id = ?1",
                rusqlite::params![id, 2 * 366 * 86_400_000_i64],
            )
            .unwrap();
        assert_eq!(moved, 1);
        let body = poll("the missed tick to be fired or skipped", || async {
            let (_, body) = srv.get(&format!("/schedules/{id}")).await;
            (!body["fires"].as_array().unwrap().is_empty()).then_some(body)
        })
        .await;
        let fires = body["fires"].as_array().unwrap();
        assert_eq!((fires.len(), time(&fires[0]["tick"])), (1, tick), "{body}");
        assert_eq!(time(&body["last_tick"]), tick, "{body}");
        assert!(body["last_error"].is_null(), "{body}");
        let (_, runs) = srv.get("/runs").await;
        let runs = runs["runs"].as_array().unwrap();
        if limit.is_some() {
            // No limit: fired, however old.
            assert_eq!(fires[0]["skipped"], false, "{body}");
            assert_eq!((runs.len(), &runs[0]["run_id"]), (1, &fires[0]["run_id"]), "{runs:?}");
        } else {
            assert_eq!((&fires[0]["skipped"], &fires[0]["run_id"]), (&Value::Bool(true), &Value::Null), "{body}");
            assert!(body["last_run_id"].is_null(), "{body}");
            assert!(runs.is_empty(), "a skipped tick started a run: {runs:?}");
        }
        // The schedule goes on: its next tick is next January 1st.
        assert!(time(&body["next_tick"]) > now, "{body}");
    }
}

/// A schedule's cron expression is read in its time zone: its next tick and the ticks it fires
/// are the zone's wall-clock times (Asia/Kolkata: UTC+05:30, no daylight saving; New York:
/// 09:00 is 13:00 or 14:00 UTC with the season).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_reads_its_cron_in_its_time_zone() {
    use chrono::Timelike;
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir);
    let srv = serve(greeting_server(&store)).await;
    let (code, kolkata) =
        srv.post("/flows/greet/schedules", r#"{"cron": "0 9 * * *", "timezone": "Asia/Kolkata"}"#).await;
    assert_eq!(code, 201, "{kolkata}");
    assert_eq!(kolkata["timezone"], "Asia/Kolkata");
    let next = time(&kolkata["next_tick"]);
    assert_eq!((next.hour(), next.minute(), next.second()), (3, 30, 0), "09:00 in Kolkata is 03:30 UTC: {kolkata}");
    assert!(next > Utc::now() && next - Utc::now() <= chrono::TimeDelta::days(1), "{kolkata}");
    let (code, york) =
        srv.post("/flows/greet/schedules", r#"{"cron": "0 9 * * *", "timezone": " America/New_York "}"#).await;
    assert_eq!((code, &york["timezone"]), (201, &Value::from("America/New_York")), "{york}");
    let next = time(&york["next_tick"]);
    assert!(matches!(next.hour(), 13 | 14) && next.minute() == 0, "09:00 in New York: {york}");
    let (_, listed) = srv.get("/schedules").await;
    let zones: Vec<&str> =
        listed["schedules"].as_array().unwrap().iter().map(|s| s["timezone"].as_str().unwrap()).collect();
    assert_eq!(zones, ["Asia/Kolkata", "America/New_York"]);
}

/// The latest missed tick of a schedule read in Asia/Kolkata is its wall-clock time there
/// (January 1st, 00:00 IST: December 31st, 18:30 UTC), and a schedule's own maximum lateness
/// outranks the server's both ways: 60 s on a server without a limit skips it, ten years on a
/// server with the default hour fires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedules_own_maximum_lateness_and_time_zone_decide_its_missed_tick() {
    use chrono::Datelike;
    let now = Utc::now();
    let new_year = |year: i32| {
        chrono::NaiveDate::from_ymd_opt(year, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc()
            - chrono::TimeDelta::minutes(5 * 60 + 30)
    };
    let tick = if new_year(now.year() + 1) <= now { new_year(now.year() + 1) } else { new_year(now.year()) };
    for (server_limit, own, fires) in [(None, 60u64, false), (Some(Duration::from_secs(3600)), 10 * 366 * 86_400, true)]
    {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(&dir);
        let srv = serve(greeting_server(&store).max_lateness(server_limit)).await;
        let body = format!(r#"{{"cron": "0 0 0 1 1 *", "timezone": "Asia/Kolkata", "max_lateness_seconds": {own}}}"#);
        let (code, created) = srv.post("/flows/greet/schedules", &body).await;
        assert_eq!((code, &created["max_lateness_seconds"]), (201, &Value::from(own)), "{created}");
        let id = created["schedule_id"].as_str().unwrap().to_string();
        let db = rusqlite::Connection::open(dir.path().join("runs.db")).unwrap();
        db.execute(
            "UPDATE crewflow_schedules SET created_at = created_at - ?2 WHERE id = ?1",
            rusqlite::params![id, 2 * 366 * 86_400_000_i64],
        )
        .unwrap();
        let body = poll("the missed tick to be fired or skipped", || async {
            let (_, body) = srv.get(&format!("/schedules/{id}")).await;
            (!body["fires"].as_array().unwrap().is_empty()).then_some(body)
        })
        .await;
        let fire = &body["fires"][0];
        assert_eq!(time(&fire["tick"]), tick, "{body}");
        assert_eq!(fire["skipped"], !fires, "server limit {server_limit:?}, own {own} s: {body}");
        let (_, runs) = srv.get("/runs").await;
        assert_eq!(runs["runs"].as_array().unwrap().len(), usize::from(fires), "{runs}");
    }
}

/// The same on PostgreSQL, with two servers looking every 20 ms: the too-late tick is skipped
/// once between them, and no run is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES to a PostgreSQL URL")]
async fn two_servers_on_one_postgres_skip_a_too_late_tick_once() {
    let url = common::fresh_pg_schema().await;
    let open = || -> Arc<dyn RunStore> { Arc::new(crewflow_store::PostgresStore::connect_lazy(&url).unwrap()) };
    let (one, two) = (open(), open());
    let srv_one = serve(greeting_server(&one).schedule_every(Duration::from_millis(20))).await;
    let _srv_two = serve(greeting_server(&two).schedule_every(Duration::from_millis(20))).await;
    let (code, created) = srv_one.post("/flows/greet/schedules", r#"{"cron": "0 0 0 1 1 *"}"#).await;
    assert_eq!(code, 201, "{created}");
    let id = created["schedule_id"].as_str().unwrap().to_string();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let moved = client
        .execute("UPDATE crewflow_schedules SET created_at = created_at - interval '732 days' WHERE id = $1", &[&id])
        .await
        .unwrap();
    assert_eq!(moved, 1);
    let body = poll("the missed tick to be skipped", || async {
        let (_, body) = srv_one.get(&format!("/schedules/{id}")).await;
        (!body["fires"].as_array().unwrap().is_empty()).then_some(body)
    })
    .await;
    let fires = body["fires"].as_array().unwrap();
    assert_eq!((fires.len(), &fires[0]["skipped"], &fires[0]["run_id"]), (1, &Value::Bool(true), &Value::Null));
    let (recorded, runs, _) = snapshot(&url, &id).await;
    assert_eq!((recorded, runs), (1, 0), "skipped once, no run: {body}");
}
