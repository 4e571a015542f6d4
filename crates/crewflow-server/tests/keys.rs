//! API keys kept in a store (`issue_api_key`, `Tenants::keys_from`), over real HTTP on
//! loopback: a stored key reaches its tenant only, a new key works within a second, a revoked one stops
//! working on every instance within the refresh time, the store keeps no key, and a key store
//! that cannot be read refuses (503) without telling a stranger why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Running, error_of, serve_app};
use crewflow_core::persist::RunStore;
use crewflow_core::{Cx, FlowBuilder};
use crewflow_server::{API_KEY_PREFIX, NewApiKey, Server, ServerError, Tenants, issue_api_key, tenant_router};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
struct Greeting {
    name: String,
}

/// A tenant's server: one flow over its own run store.
fn tenant_server(store: &Arc<dyn RunStore>, greeting: &'static str) -> Server {
    let greet = FlowBuilder::<Greeting>::new("greet")
        .start("hello", move |cx: Cx<Greeting>, (): ()| async move {
            Ok(format!("{greeting}, {}", cx.state(|g| g.name.clone())))
        })
        .store(store.clone())
        .build()
        .unwrap();
    Server::new(store.clone()).flow(&greet).unwrap()
}

/// Two tenants over their own SQLite files, with their keys in `keys` (refreshed every 300 ms).
fn instance(dir: &std::path::Path, keys: &Arc<dyn RunStore>) -> axum::Router {
    let open = |name: &str| -> Arc<dyn RunStore> {
        crewflow_store::open(dir.join(format!("{name}.db")).to_str().unwrap()).unwrap()
    };
    let tenants = Tenants::new()
        .tenant("acme", tenant_server(&open("acme"), "hello"))
        .unwrap()
        .tenant("globex", tenant_server(&open("globex"), "hi"))
        .unwrap()
        .keys_from(keys.clone())
        .key_refresh(Duration::from_millis(300));
    tenant_router(tenants)
}

async fn status(srv: &Running, key: &str, path: &str) -> u16 {
    srv.with_key(key).get(path).await.0
}

/// Calls until `path` answers `want` with `key`; how long that took.
async fn until(srv: &Running, key: &str, path: &str, want: u16) -> Duration {
    let start = Instant::now();
    loop {
        if status(srv, key, path).await == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{path} never answered {want} with {key}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_key_reaches_its_tenant_until_it_is_revoked_on_every_instance() {
    let dir = tempfile::tempdir().unwrap();
    let keys_db = dir.path().join("keys.db");
    let keys: Arc<dyn RunStore> = crewflow_store::open(keys_db.to_str().unwrap()).unwrap();
    let acme = issue_api_key(&*keys, &NewApiKey::new("acme").label("ci")).await.unwrap();
    let globex = issue_api_key(&*keys, &NewApiKey::new("globex")).await.unwrap();
    let initech = issue_api_key(&*keys, &NewApiKey::new("initech").label("not served here")).await.unwrap();
    assert!(acme.key.starts_with(API_KEY_PREFIX) && acme.key.len() == API_KEY_PREFIX.len() + 43, "{}", acme.key);
    assert_ne!(acme.key, globex.key);
    assert!(acme.stored.id.starts_with("key_"), "{:?}", acme.stored);
    assert!(!format!("{:?}", acme.stored).contains(&acme.key));

    // Two instances sharing the key store.
    for name in ["one", "two"] {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
    }
    let one = serve_app(instance(&dir.path().join("one"), &keys)).await;
    let two = serve_app(instance(&dir.path().join("two"), &keys)).await;

    for srv in [&one, &two] {
        let (code, run) = srv.with_key(&acme.key).post("/flows/greet/runs?wait=true", r#"{"name": "Ada"}"#).await;
        assert_eq!((code, run["output"].as_str()), (200, Some("hello, Ada")), "{run}");
        let (code, run) = srv.with_key(&globex.key).post("/flows/greet/runs?wait=true", r#"{"name": "Bo"}"#).await;
        assert_eq!((code, run["output"].as_str()), (200, Some("hi, Bo")), "{run}");
        // A key of a tenant not served here, a made-up key, a key's hash sent as the key.
        let hash: String = acme.stored.sha256.iter().map(|b| format!("{b:02x}")).collect();
        for key in [initech.key.as_str(), "cfk_made-up", hash.as_str()] {
            let (code, e) = srv.with_key(key).get("/flows").await;
            assert_eq!((code, error_of(&e).0), (401, "unauthorized"), "{key}: {e}");
        }
    }

    // A key made while the servers run works within a second (an unknown key reads the keys again,
    // at most once a second).
    let late = issue_api_key(&*keys, &NewApiKey::new("acme").label("made later")).await.unwrap();
    let waited = until(&one, &late.key, "/flows", 200).await;
    assert!(waited < Duration::from_millis(1500), "a new key took {waited:?}");

    // Revoked: refused on both instances within the refresh time (300 ms, plus a request).
    assert_eq!(status(&two, &acme.key, "/flows").await, 200);
    let revoked_at = keys.revoke_api_key(&acme.stored.id).await.unwrap().expect("the key is in the store");
    for srv in [&one, &two] {
        let waited = until(srv, &acme.key, "/flows", 401).await;
        assert!(waited < Duration::from_millis(1500), "a revoked key worked for {waited:?}");
    }
    // Revoking again changes nothing; an unknown id is none.
    assert_eq!(keys.revoke_api_key(&acme.stored.id).await.unwrap(), Some(revoked_at));
    assert_eq!(keys.revoke_api_key("key_nope").await.unwrap(), None);
    // The other keys still work.
    assert_eq!(status(&one, &globex.key, "/flows").await, 200);
    assert_eq!(status(&two, &late.key, "/flows").await, 200);

    // Oldest first; keys made in the same millisecond by id.
    let listed = keys.list_api_keys(None).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|k| k.id.as_str()).collect();
    let mut made =
        [&acme, &globex, &initech, &late].map(|k| (k.stored.created_at.timestamp_millis(), k.stored.id.as_str()));
    made.sort();
    assert_eq!(ids, made.map(|(_, id)| id));
    let find = |id: &str| listed.iter().find(|k| k.id == id).unwrap();
    assert_eq!(find(&acme.stored.id).revoked_at, Some(revoked_at));
    assert_eq!(find(&globex.stored.id).sha256, globex.stored.sha256);
    assert!(listed.iter().filter(|k| k.id != acme.stored.id).all(|k| k.revoked_at.is_none()));
    assert_eq!(keys.list_api_keys(Some("acme")).await.unwrap().len(), 2);

    // The file holds the hashes, never a key.
    drop((one, two));
    let bytes = std::fs::read(&keys_db).unwrap();
    let wal = std::fs::read(keys_db.with_extension("db-wal")).unwrap_or_default();
    for issued in [&acme, &globex, &initech, &late] {
        let key = issued.key.as_bytes();
        for file in [&bytes, &wal] {
            assert!(!file.windows(key.len()).any(|w| w == key), "a key is in the store");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_store_that_cannot_be_read_refuses_without_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let keys: Arc<dyn RunStore> = crewflow_store::open(path.to_str().unwrap()).unwrap();
    let acme = issue_api_key(&*keys, &NewApiKey::new("acme")).await.unwrap();
    let srv = serve_app(instance(dir.path(), &keys)).await;
    assert_eq!(status(&srv, &acme.key, "/flows").await, 200);

    // The table goes away under the server (a restore gone wrong).
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch("ALTER TABLE crewflow_api_keys RENAME TO crewflow_api_keys_away").unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await; // past the refresh time
    for key in [acme.key.as_str(), "cfk_guess"] {
        let (code, e) = srv.with_key(key).get("/flows").await;
        let (kind, message) = error_of(&e);
        assert_eq!((code, kind), (503, "keys_unavailable"), "{e}");
        assert!(!message.contains("keys.db") && !message.contains("crewflow_api_keys"), "{message}");
    }
    // No key at all is still a plain 401: nothing needs reading.
    assert_eq!(srv.get("/flows").await.0, 401);

    db.execute_batch("ALTER TABLE crewflow_api_keys_away RENAME TO crewflow_api_keys").unwrap();
    until(&srv, &acme.key, "/flows", 200).await;
}

/// A key with an expiry works until then, and is refused after, on every instance, without
/// anyone revoking it; a zero expiry is refused.
async fn expiring_keys(keys: &Arc<dyn RunStore>, dir: &std::path::Path) {
    let expiring =
        issue_api_key(&**keys, &NewApiKey::new("acme").expires_in(Duration::from_millis(1200))).await.unwrap();
    let lasting = issue_api_key(&**keys, &NewApiKey::new("acme").expires_in(Duration::from_secs(3600))).await.unwrap();
    let expires_at = expiring.stored.expires_at.expect("an expiry");
    assert!(expires_at > expiring.stored.created_at);
    let listed = keys.list_api_keys(Some("acme")).await.unwrap();
    let stored = listed.iter().find(|k| k.id == expiring.stored.id).unwrap();
    assert_eq!(stored.expires_at.map(|t| t.timestamp_millis()), Some(expires_at.timestamp_millis()));

    let srv = serve_app(instance(dir, keys)).await;
    assert_eq!(status(&srv, &expiring.key, "/flows").await, 200);
    let waited = until(&srv, &expiring.key, "/flows", 401).await;
    assert!(waited < Duration::from_secs(3), "an expired key worked for {waited:?} more");
    assert!(chrono::Utc::now() >= expires_at, "refused before its expiry");
    assert_eq!(status(&srv, &lasting.key, "/flows").await, 200);

    let e = issue_api_key(&**keys, &NewApiKey::new("acme").expires_in(Duration::ZERO)).await.unwrap_err();
    assert!(matches!(e, ServerError::BadKeyExpiry), "{e}");
    let e = issue_api_key(&**keys, &NewApiKey::new("acme").expires_in(Duration::MAX)).await.unwrap_err();
    assert!(matches!(e, ServerError::BadKeyExpiry), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stops_working_when_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Arc<dyn RunStore> = crewflow_store::open(dir.path().join("keys.db").to_str().unwrap()).unwrap();
    expiring_keys(&keys, dir.path()).await;
}

#[tokio::test]
async fn a_key_is_made_only_for_a_tenant_name_and_a_printable_label() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Arc<dyn RunStore> = crewflow_store::open(dir.path().join("keys.db").to_str().unwrap()).unwrap();
    for tenant in ["", "a b", "acme/../x", "ä", &"x".repeat(65)] {
        let e = issue_api_key(&*keys, &NewApiKey::new(tenant)).await.unwrap_err();
        assert!(matches!(e, ServerError::BadTenantName { .. }), "{tenant}: {e}");
        assert!(e.to_string().contains("letters, digits"), "{e}");
    }
    for label in ["two\nlines", "bell\u{7}", &"x".repeat(201)] {
        let e = issue_api_key(&*keys, &NewApiKey::new("acme").label(label)).await.unwrap_err();
        assert!(matches!(e, ServerError::BadKeyLabel { .. }), "{e}");
    }
    assert!(keys.list_api_keys(None).await.unwrap().is_empty(), "a refused key is not stored");
    issue_api_key(&*keys, &NewApiKey::new("acme-2.eu_west").label(&"é".repeat(200))).await.unwrap();
}

/// The same record twice (its id, or its hash under another id) is refused, and changes nothing.
async fn duplicates_are_refused(keys: &dyn RunStore) {
    let issued = issue_api_key(keys, &NewApiKey::new("acme").label("first")).await.unwrap();
    let mut same_id = issued.stored.clone();
    same_id.sha256 = [7; 32];
    let mut same_hash = issued.stored.clone();
    same_hash.id = "key_other".into();
    for record in [&same_id, &same_hash] {
        let e = keys.create_api_key(record).await.unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
    }
    let listed = keys.list_api_keys(None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].label.as_str(), listed[0].sha256), ("first", issued.stored.sha256));
    assert_eq!(listed[0].created_at.timestamp_millis(), issued.stored.created_at.timestamp_millis());
}

#[tokio::test]
async fn sqlite_refuses_a_key_twice() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Arc<dyn RunStore> = crewflow_store::open(dir.path().join("keys.db").to_str().unwrap()).unwrap();
    duplicates_are_refused(&*keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES to a PostgreSQL URL")]
async fn postgres_keeps_keys_for_every_instance() {
    let url = common::fresh_pg_schema().await;
    let open = || -> Arc<dyn RunStore> { Arc::new(crewflow_store::PostgresStore::connect_lazy(&url).unwrap()) };
    let keys = open();
    duplicates_are_refused(&*keys).await;
    // A NUL in a label is refused by the check before the store (PostgreSQL text holds none).
    assert!(issue_api_key(&*keys, &NewApiKey::new("acme").label("a\0b")).await.is_err());
    assert_eq!(keys.revoke_api_key("key_\0").await.unwrap(), None);

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("expiring")).unwrap();
    expiring_keys(&keys, &dir.path().join("expiring")).await;
    let (one_keys, two_keys) = (open(), open());
    std::fs::create_dir_all(dir.path().join("two")).unwrap();
    let one = serve_app(instance(dir.path(), &one_keys)).await;
    let two = serve_app(instance(&dir.path().join("two"), &two_keys)).await;
    let globex = issue_api_key(&*keys, &NewApiKey::new("globex").label("pg")).await.unwrap();
    for srv in [&one, &two] {
        until(srv, &globex.key, "/flows", 200).await;
    }
    keys.revoke_api_key(&globex.stored.id).await.unwrap().unwrap();
    for srv in [&one, &two] {
        let waited = until(srv, &globex.key, "/flows", 401).await;
        assert!(waited < Duration::from_millis(1500), "a revoked key worked for {waited:?}");
    }
}
