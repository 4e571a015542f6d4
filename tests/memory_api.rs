//! The memory API on real stores: a SQLite file, and PostgreSQL when `CREWFLOW_TEST_POSTGRES`
//! is set (otherwise those tests report themselves ignored). Every check runs on both
//! backends: the fields kept, scopes, filters, ranking (with a controlled clock), forgetting,
//! and the errors for mixed models. `extract_memories` runs against the loopback OpenAI-wire
//! server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::http::{Reply, TestServer, openai_completion, openai_llm};
use crewflow::llm::{EmbedFuture, Embedder, HashEmbedder};
use crewflow::memory::{Memory, MemoryError, MemoryFilter, RecallOptions, RememberOptions, Scoring};
use crewflow::store::{MemoryStore, PostgresStore, SqliteStore};
use serde_json::json;

/// A backend for one test: a fresh SQLite file or a fresh PostgreSQL schema.
enum Backend {
    Sqlite,
    Postgres,
}

struct Fixture {
    store: Arc<dyn MemoryStore>,
    _dir: tempfile::TempDir,
}

impl Backend {
    async fn fixture(&self) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn MemoryStore> = match self {
            Backend::Sqlite => Arc::new(SqliteStore::open(dir.path().join("memory.db"))),
            Backend::Postgres => {
                Arc::new(PostgresStore::connect_lazy(&common::postgres::fresh_schema().await).unwrap())
            }
        };
        Fixture { store, _dir: dir }
    }
}

/// A clock the test moves.
#[derive(Clone)]
struct Clock(Arc<Mutex<DateTime<Utc>>>);

impl Clock {
    fn at(t: DateTime<Utc>) -> Self {
        Clock(Arc::new(Mutex::new(t)))
    }
    fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap() = t;
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
}

fn memory(f: &Fixture, clock: &Clock) -> Memory {
    let c = clock.clone();
    Memory::from_arcs(f.store.clone(), Arc::new(HashEmbedder::default()))
        .root_scope("/flow/invoice")
        .clock(move || *c.0.lock().unwrap())
}

/// Runs a check on SQLite and (when configured) on PostgreSQL.
macro_rules! on_both {
    ($check:ident) => {
        mod $check {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$check(super::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                not(crewflow_postgres_tests),
                ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests"
            )]
            async fn postgres() {
                super::$check(super::Backend::Postgres).await;
            }
        }
    };
}

on_both!(remembered_fields_are_kept_and_recalled);
async fn remembered_fields_are_kept_and_recalled(backend: Backend) {
    let f = backend.fixture().await;
    let clock = Clock::at(t0());
    let m = memory(&f, &clock);
    let kept = m
        .remember(
            "ACME invoices are due in 45 days",
            RememberOptions::new()
                .scope("customers/acme")
                .category("terms")
                .meta("customer", "ACME")
                .importance(0.8)
                .source("import"),
        )
        .await
        .unwrap();
    m.remember("The office plant needs water on Mondays", RememberOptions::new()).await.unwrap();
    assert_eq!(kept.id.get_version_num(), 7, "UUID v7");
    assert_eq!(kept.scope, "/flow/invoice/customers/acme");
    assert_eq!(kept.created_at, t0());
    assert_eq!(kept.model, "hash-256");

    clock.set(t0() + Duration::hours(1));
    let found = m.recall("when are ACME invoices due", RecallOptions::new()).await.unwrap();
    assert_eq!(found.len(), 2);
    let best = &found[0].record;
    assert_eq!(best.id, kept.id);
    assert_eq!(best.content, "ACME invoices are due in 45 days");
    assert_eq!(best.categories, ["terms"]);
    assert_eq!(best.metadata["customer"], json!("ACME"));
    assert!((best.importance - 0.8).abs() < 1e-6);
    assert_eq!(best.source.as_deref(), Some("import"));
    assert_eq!(best.created_at, t0());
    assert_eq!(best.last_accessed, t0() + Duration::hours(1), "recall touches what it returns");
    let listed = m.list("customers", 10, 0).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_accessed, t0() + Duration::hours(1), "the touch is stored");
}

on_both!(scopes_nest_under_the_root_and_never_leak);
async fn scopes_nest_under_the_root_and_never_leak(backend: Backend) {
    let f = backend.fixture().await;
    let clock = Clock::at(t0());
    let m = memory(&f, &clock);
    for (i, scope) in ["a", "a/b", "ab", "a-b", "a/b/c"].iter().enumerate() {
        clock.set(t0() + Duration::minutes(i as i64));
        m.remember(&format!("note {scope}"), RememberOptions::new().scope(*scope)).await.unwrap();
    }
    let other = Memory::from_arcs(f.store.clone(), Arc::new(HashEmbedder::default())).root_scope("/flow/other");
    other.remember("note a", RememberOptions::new().scope("a")).await.unwrap();

    let scopes = |v: Vec<crewflow::memory::MemoryRecord>| v.into_iter().map(|r| r.scope).collect::<Vec<_>>();
    // `a` is `a` and everything under it, newest first; never `ab` or `a-b`.
    assert_eq!(
        scopes(m.list("a", 10, 0).await.unwrap()),
        ["/flow/invoice/a/b/c", "/flow/invoice/a/b", "/flow/invoice/a"]
    );
    assert_eq!(scopes(m.list("a", 1, 1).await.unwrap()), ["/flow/invoice/a/b"], "limit and offset");
    assert_eq!(m.list("/", 100, 0).await.unwrap().len(), 5, "the root holds its own only");
    let recalled = m.recall("note", RecallOptions::new().scope("a/b")).await.unwrap();
    assert_eq!(recalled.len(), 2);
    assert!(recalled.iter().all(|r| r.record.scope.starts_with("/flow/invoice/a/b")));
    // A sub-memory sees its subtree only.
    assert_eq!(m.scoped("a/b").list("", 10, 0).await.unwrap().len(), 2);
    assert_eq!(other.list("", 10, 0).await.unwrap().len(), 1);
}

on_both!(source_and_categories_filter_recall);
async fn source_and_categories_filter_recall(backend: Backend) {
    let f = backend.fixture().await;
    let clock = Clock::at(t0());
    let m = memory(&f, &clock);
    m.remember("Always add citations", RememberOptions::new().source("hitl").category("style")).await.unwrap();
    m.remember("Always add a summary", RememberOptions::new().source("agent").category("style")).await.unwrap();
    m.remember("Always add the totals", RememberOptions::new().category("numbers")).await.unwrap();
    let contents = |v: Vec<crewflow::memory::MemoryMatch>| {
        let mut c: Vec<String> = v.into_iter().map(|m| m.record.content).collect();
        c.sort();
        c
    };
    assert_eq!(
        contents(m.recall("always add", RecallOptions::new().source("hitl")).await.unwrap()),
        ["Always add citations"]
    );
    assert_eq!(
        contents(m.recall("always add", RecallOptions::new().category("style")).await.unwrap()),
        ["Always add a summary", "Always add citations"]
    );
    assert_eq!(m.recall("always add", RecallOptions::new().limit(1)).await.unwrap().len(), 1);
    assert!(m.recall("always add", RecallOptions::new().source("nobody")).await.unwrap().is_empty());
}

on_both!(forget_takes_exactly_what_the_filter_says);
async fn forget_takes_exactly_what_the_filter_says(backend: Backend) {
    let f = backend.fixture().await;
    let clock = Clock::at(t0() - Duration::days(100));
    let m = memory(&f, &clock);
    let old = m.remember("old news", RememberOptions::new().scope("news")).await.unwrap();
    clock.set(t0());
    m.remember("fresh news", RememberOptions::new().scope("news").meta("run", "r1")).await.unwrap();
    m.remember("fresh tip", RememberOptions::new().scope("tips").category("tip")).await.unwrap();
    let keep = m.remember("kept", RememberOptions::new().scope("tips")).await.unwrap();

    assert_eq!(m.forget(&MemoryFilter::new().older_than(t0() - Duration::days(30))).await.unwrap(), 1);
    assert!(m.find(&MemoryFilter::new().id(old.id)).await.unwrap().is_empty());
    assert_eq!(m.forget(&MemoryFilter::new().meta("run", "r2")).await.unwrap(), 0, "metadata must match");
    assert_eq!(m.forget(&MemoryFilter::new().meta("run", "r1")).await.unwrap(), 1);
    assert_eq!(m.forget(&MemoryFilter::new().scope("tips").category("tip")).await.unwrap(), 1);
    let left = m.list("", 10, 0).await.unwrap();
    assert_eq!(left.iter().map(|r| r.id).collect::<Vec<_>>(), [keep.id]);
    // Another root's forget never reaches this one.
    let other = Memory::from_arcs(f.store.clone(), Arc::new(HashEmbedder::default())).root_scope("/flow/other");
    assert_eq!(other.forget(&MemoryFilter::new()).await.unwrap(), 0);
    assert_eq!(m.forget(&MemoryFilter::new()).await.unwrap(), 1);
}

on_both!(recall_blends_meaning_recency_and_importance);
async fn recall_blends_meaning_recency_and_importance(backend: Backend) {
    let f = backend.fixture().await;
    let clock = Clock::at(t0());
    let m = memory(&f, &clock);
    // Same text, so the same meaning: recency and importance decide.
    let old = m.remember("pay suppliers on friday", RememberOptions::new().scope("r")).await.unwrap();
    clock.set(t0() + Duration::days(60));
    let new = m.remember("pay suppliers on friday", RememberOptions::new().scope("r")).await.unwrap();
    let found = m.recall("pay suppliers on friday", RecallOptions::new().scope("r")).await.unwrap();
    assert_eq!(found.iter().map(|x| x.record.id).collect::<Vec<_>>(), [new.id, old.id], "newer first");
    assert!((found[0].semantic - 1.0).abs() < 1e-5 && (found[1].semantic - 1.0).abs() < 1e-5);
    assert!((found[0].recency - 1.0).abs() < 1e-5);
    assert!((found[1].recency - 0.25).abs() < 1e-5, "two half-lives: {}", found[1].recency);
    assert!((found[0].score - found[1].score - 0.3 * 0.75).abs() < 1e-5);

    // Same time, same text: importance decides, by 0.2 per unit.
    let low = m.remember("renew the contract", RememberOptions::new().scope("i").importance(0.1)).await.unwrap();
    let high = m.remember("renew the contract", RememberOptions::new().scope("i").importance(0.9)).await.unwrap();
    let found = m.recall("renew the contract", RecallOptions::new().scope("i")).await.unwrap();
    assert_eq!(found.iter().map(|x| x.record.id).collect::<Vec<_>>(), [high.id, low.id]);
    assert!((found[0].score - found[1].score - 0.2 * 0.8).abs() < 1e-5);

    // Meaning against recency: an exact old match beats a fresh unrelated one by default,
    // and loses when only recency counts.
    clock.set(t0());
    let exact = m.remember("quarterly tax report for europe", RememberOptions::new().scope("s")).await.unwrap();
    clock.set(t0() + Duration::days(90));
    let fresh = m.remember("lunch menu", RememberOptions::new().scope("s")).await.unwrap();
    let found = m.recall("quarterly tax report for europe", RecallOptions::new().scope("s")).await.unwrap();
    assert_eq!(found[0].record.id, exact.id);
    for x in &found {
        let expected = 0.5 * x.semantic + 0.3 * x.recency + 0.2 * x.record.importance;
        assert!((x.score - expected).abs() < 1e-5, "the documented blend: {x:?}");
    }
    let recency_only = m.clone().scoring(Scoring {
        semantic_weight: 0.0,
        recency_weight: 1.0,
        importance_weight: 0.0,
        half_life_days: 30.0,
    });
    let found = recency_only.recall("quarterly tax report for europe", RecallOptions::new().scope("s")).await.unwrap();
    assert_eq!(found[0].record.id, fresh.id);
}

on_both!(vectors_of_another_model_are_never_compared);
async fn vectors_of_another_model_are_never_compared(backend: Backend) {
    let f = backend.fixture().await;
    let clock = Clock::at(t0());
    memory(&f, &clock).remember("invoice terms", RememberOptions::new()).await.unwrap();
    let small =
        Memory::from_arcs(f.store.clone(), Arc::new(HashEmbedder { dimensions: 64 })).root_scope("/flow/invoice");
    let err = small.recall("invoice", RecallOptions::new()).await.unwrap_err();
    assert!(
        matches!(err, MemoryError::ModelMismatch { ref stored, ref embedder, count: 1, .. } if stored == "hash-256" && embedder == "hash-64"),
        "{err:?}"
    );
    assert!(err.to_string().contains("forget them"), "the message names a fix: {err}");
    // Forgetting that model's memories makes the scope usable again.
    assert_eq!(small.forget(&MemoryFilter::new().model("hash-256")).await.unwrap(), 1);
    assert!(small.recall("invoice", RecallOptions::new()).await.unwrap().is_empty());

    // One model id with two vector lengths is refused when remembering.
    small.remember("invoice terms", RememberOptions::new()).await.unwrap();
    let liar = Memory::from_arcs(f.store.clone(), Arc::new(Renamed(HashEmbedder { dimensions: 32 }, "hash-64")));
    let err = liar.remember("more terms", RememberOptions::new()).await.unwrap_err();
    assert!(matches!(err, MemoryError::DimensionMismatch { stored: 64, got: 32, .. }), "{err:?}");
}

/// An embedder reporting another model's id.
struct Renamed(HashEmbedder, &'static str);

impl Embedder for Renamed {
    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
        self.0.embed(texts)
    }
    fn model_id(&self) -> String {
        self.1.to_string()
    }
}

/// An embedder counting its calls.
struct Counting(HashEmbedder, Arc<AtomicUsize>);

impl Embedder for Counting {
    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.embed(texts)
    }
    fn model_id(&self) -> String {
        self.0.model_id()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_opened_or_embedded_until_needed_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.db");
    let calls = Arc::new(AtomicUsize::new(0));
    let m = Memory::new(SqliteStore::open(&path), Counting(HashEmbedder::default(), calls.clone()));
    assert!(!path.exists(), "Memory::new opens nothing");
    assert!(m.recall("anything", RecallOptions::new()).await.unwrap().is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), 0, "an empty scope is not embedded against");
    assert!(matches!(m.remember("  ", RememberOptions::new()).await, Err(MemoryError::EmptyContent)));
    assert!(matches!(
        m.remember("x", RememberOptions::new().importance(1.5)).await,
        Err(MemoryError::InvalidImportance(_))
    ));
    let many = m.remember_many(&["one", "two", "three"], RememberOptions::new()).await.unwrap();
    assert_eq!(many.len(), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one embedding call for a batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extract_memories_asks_the_model_and_falls_back_to_the_whole_text() {
    let dir = tempfile::tempdir().unwrap();
    let text = "I'm Ana, I run the Lisbon office and I prefer invoices in EUR.";
    let m = Memory::new(SqliteStore::open(dir.path().join("m.db")), HashEmbedder::default());
    assert_eq!(m.extract_memories(text).await, [text], "no model: the whole text");

    let reply = json!({ "memories": ["Ana runs the Lisbon office.", "Ana prefers invoices in EUR.", " "] });
    let server = TestServer::start(vec![openai_completion(&reply.to_string()), Reply::text(500, "down")]).await;
    let m = m.llm(openai_llm(&server));
    assert_eq!(m.extract_memories(text).await, ["Ana runs the Lisbon office.", "Ana prefers invoices in EUR."]);
    assert!(server.requests()[0].body.contains("Lisbon"));
    assert_eq!(m.extract_memories(text).await, [text], "a failing model: the whole text");
    assert!(!dir.path().join("m.db").exists(), "extraction stores nothing");
}
