//! A PostgreSQL store's connections (`PoolOptions`, or the URL's `pool_size`, `lock_pool_size`
//! and `idle_timeout`): never more than allowed at once, idle ones closed, opened again on the
//! next call — so that many stores on one database (a store per tenant) cost it nothing while
//! they are not used. Connections are counted in `pg_stat_activity` by the store's
//! `application_name`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::postgres::fresh_schema;
use crewflow::store::{RunFilter, RunStore};
use crewflow_store::{PoolOptions, PostgresStore, StoreError};

/// How many connections `app` has open to the database.
async fn connections(app: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(&common::postgres::base_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", &[&app]).await.unwrap().get(0)
}

/// A name of this test's own, for `application_name`.
fn app_name(what: &str) -> String {
    format!("crewflow_pool_{what}_{}", std::process::id())
}

/// `calls` listings of runs at once, `rounds` times.
async fn busy(store: &Arc<dyn RunStore>, calls: usize, rounds: usize) {
    for _ in 0..rounds {
        let all = (0..calls).map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store.list_runs(&RunFilter { limit: 5, ..Default::default() }).await.unwrap();
            })
        });
        for task in all.collect::<Vec<_>>() {
            task.await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_store_keeps_at_most_its_pool_and_closes_idle_connections() {
    let app = app_name("url");
    let url = format!("{}&application_name={app}&pool_size=3&idle_timeout=300ms", fresh_schema().await);
    let store: Arc<dyn RunStore> = crewflow::store::open(&url).unwrap();
    assert_eq!(connections(&app).await, 0, "nothing is opened before the first call");

    busy(&store, 12, 5).await;
    let open = connections(&app).await;
    assert!((1..=3).contains(&open), "12 calls at once, pool_size=3: {open} connections");

    // Unused for the idle timeout: closed (checked every half of it).
    let start = Instant::now();
    while connections(&app).await > 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "idle connections stay open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The next call opens one again, as if nothing happened.
    busy(&store, 1, 1).await;
    assert_eq!(connections(&app).await, 1);

    // The store dropped, its connections go with it.
    drop(store);
    let start = Instant::now();
    while connections(&app).await > 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "a dropped store keeps connections");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn connections_stay_open_without_an_idle_timeout() {
    let app = app_name("kept");
    let url = format!("{}&application_name={app}", fresh_schema().await);
    let pool = PoolOptions::new().queries(2).idle_timeout(None);
    let store: Arc<dyn RunStore> = Arc::new(PostgresStore::connect_lazy_with(&url, pool).unwrap());
    busy(&store, 6, 3).await;
    let open = connections(&app).await;
    assert!((1..=2).contains(&open), "{open}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(connections(&app).await, open, "no idle timeout: nothing is closed");
}

#[test]
fn bad_pool_options_are_refused_with_the_fix() {
    let base = "postgres://app:secret@127.0.0.1:5432/flows";
    for (query, says) in [
        ("pool_size=0", "give from 1 to 10000 connections"),
        ("lock_pool_size=lots", "is not a number of connections"),
        ("idle_timeout=soon", "give a span (`60s`, `10m`) or `none`"),
        ("idle_timeout=1ms", "would close connections as they are made"),
    ] {
        let e = crewflow_store::open(&format!("{base}?{query}")).err().unwrap();
        assert!(matches!(e, StoreError::InvalidOption { .. }), "{query}: {e}");
        let text = e.to_string();
        assert!(text.contains(says), "{query}: {text}");
        assert!(!text.contains("secret"), "the password is not shown: {text}");
    }
    let e = PostgresStore::connect_lazy_with(base, PoolOptions::new().locks(0)).err().unwrap();
    assert!(e.to_string().contains("lock_pool_size=0"), "{e}");
    // The driver's own options still reach it; `none` keeps idle connections.
    crewflow_store::open(&format!("{base}?application_name=x&idle_timeout=none&pool_size=2")).unwrap();
    assert!(crewflow_store::open(&format!("{base}?nonsense=1")).is_err(), "unknown options are the driver's to refuse");
}
