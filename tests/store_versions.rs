//! State versions: a stored run or session written by an earlier definition of its state type
//! is migrated by the flow's registered functions, or refused with an error naming both
//! versions; it is never decoded into a type that silently drops a field. On SQLite and
//! PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use crewflow::DurableError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crewflow::chat::{ChatState, SessionStore};
use crewflow::prelude::*;
use crewflow::store::{RunStatus, RunStore, SqliteStore};
use crewflow::{BoxError, Error, FlowState, RunId, StateError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version 1 of the state: the address is `mail`, the count `n`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ContactV1 {
    mail: String,
    n: u32,
}

/// Version 2: `mail` is renamed `email`; `n` is unchanged.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ContactV2 {
    email: String,
    n: u32,
}

/// Moves `mail` to `email` (version 1 to 2).
fn rename_mail(mut state: Value) -> Result<Value, BoxError> {
    let mail = state.as_object_mut().and_then(|o| o.remove("mail")).ok_or("version 1 states have `mail`")?;
    state["email"] = mail;
    Ok(state)
}

/// The same two steps over any state: `fill` sets the address and counts, `send` fails until
/// `ready` and then returns the address it finds in the state.
fn contact_flow<S: FlowState>(
    store: Arc<dyn RunStore>,
    ready: Arc<AtomicBool>,
    set: fn(&mut S),
    get: fn(&S) -> String,
) -> FlowBuilder<S> {
    FlowBuilder::<S>::new("contacts")
        .store(store)
        .start("fill", move |cx: Cx<S>, (): ()| async move {
            cx.update(set);
            Ok(())
        })
        .listen("send", step("fill"), move |cx: Cx<S>, (): ()| {
            let ready = ready.clone();
            async move {
                if !ready.load(Ordering::SeqCst) {
                    return Err("the mail server is down".into());
                }
                Ok(cx.state(get))
            }
        })
}

fn v1(store: Arc<dyn RunStore>, ready: Arc<AtomicBool>) -> FlowBuilder<ContactV1> {
    contact_flow(
        store,
        ready,
        |s: &mut ContactV1| {
            s.mail = "ada@example.com".into();
            s.n += 1;
        },
        |s: &ContactV1| s.mail.clone(),
    )
    .state_version(1)
}

fn v2(store: Arc<dyn RunStore>, ready: Arc<AtomicBool>) -> FlowBuilder<ContactV2> {
    contact_flow(
        store,
        ready,
        |s: &mut ContactV2| {
            s.email = "ada@example.com".into();
            s.n += 1;
        },
        |s: &ContactV2| format!("{} ({})", s.email, s.n),
    )
    .state_version(2)
}

/// A run of version 1 that failed after `fill`'s checkpoint: its stored state has `mail`.
async fn failed_v1_run(store: Arc<dyn RunStore>) -> RunId {
    let flow = v1(store.clone(), Arc::new(AtomicBool::new(false))).build().unwrap();
    let err = flow.kickoff(()).await.unwrap_err();
    let Error::StepFailed { run_id, .. } = err else { panic!("{err}") };
    let stored = store.load_run(run_id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.state_version), (RunStatus::Failed, 1));
    run_id
}

/// The stored run is exactly as it was: status, error, state and version.
async fn untouched(store: &dyn RunStore, run_id: RunId) {
    let stored = store.load_run(run_id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Failed);
    assert_eq!(stored.state_version, 1);
    assert!(stored.state.contains("\"mail\""), "{}", stored.state);
    assert!(stored.error.as_deref().is_some_and(|e| e.contains("mail server is down")), "{:?}", stored.error);
}

async fn a_renamed_field_is_migrated_on_resume(store: Arc<dyn RunStore>) {
    let run_id = failed_v1_run(store.clone()).await;
    let ready = Arc::new(AtomicBool::new(true));

    // Without the migration: refused, naming both versions and the fix; nothing changes.
    let err = v2(store.clone(), ready.clone()).build().unwrap().resume(run_id).await.unwrap_err();
    let Error::Durable(DurableError::StoredState {
        source: StateError::NoMigration { stored: 1, current: 2, missing: 1 },
        ..
    }) = &err
    else {
        panic!("{err:?}")
    };
    assert!(err.to_string().contains("`.migrate_state(1, |state| ..)`"), "{err}");
    untouched(store.as_ref(), run_id).await;

    // With it: the run finishes from its checkpoint with the address moved, and `fill` does
    // not run again (the count stays 1).
    let flow = v2(store.clone(), ready).migrate_state(1, rename_mail).build().unwrap();
    let run = flow.resume(run_id).await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "ada@example.com (1)");
    let stored = store.load_run(run_id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.state_version), (RunStatus::Finished, 2));
    assert!(stored.state.contains("\"email\"") && !stored.state.contains("\"mail\""), "{}", stored.state);
    // The finished run reads back at its new version.
    assert_eq!(flow.inspect(run_id).await.unwrap().state.email, "ada@example.com");
}

async fn a_removed_field_is_refused_not_dropped(store: Arc<dyn RunStore>) {
    let run_id = failed_v1_run(store.clone()).await;
    // Version 1 still, but the type lost `mail`: decoding would drop it at the next checkpoint.
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Shrunk {
        n: u32,
    }
    let flow =
        contact_flow(store.clone(), Arc::new(AtomicBool::new(true)), |s: &mut Shrunk| s.n += 1, |s| s.n.to_string())
            .state_version(1)
            .build()
            .unwrap();
    let err = flow.resume(run_id).await.unwrap_err();
    let Error::Durable(DurableError::StoredState { source: StateError::Dropped { fields, version: 1, .. }, .. }) = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(fields, &["mail"]);
    let message = err.to_string();
    assert!(
        message.contains("`.state_version(2)`") && message.contains("`.migrate_state(1, |state| ..)`"),
        "{message}"
    );
    untouched(store.as_ref(), run_id).await;
    // A fork, which starts over from the state, is refused alike.
    assert!(matches!(flow.fork(run_id, ()).await, Err(Error::Durable(DurableError::StoredState { .. }))));
}

async fn a_newer_state_is_refused(store: Arc<dyn RunStore>) {
    let run_id = failed_v1_run(store.clone()).await;
    let older = contact_flow(
        store.clone(),
        Arc::new(AtomicBool::new(true)),
        |s: &mut ContactV1| s.n += 1,
        |s: &ContactV1| s.mail.clone(),
    )
    .build()
    .unwrap();
    let err = older.resume(run_id).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Durable(DurableError::StoredState { source: StateError::Newer { stored: 1, current: 0 }, .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(&format!("run {run_id} cannot be read by this definition of flow `contacts`")));
    untouched(store.as_ref(), run_id).await;
}

fn sqlite() -> (tempfile::TempDir, Arc<dyn RunStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(dir.path().join("runs.db")));
    (dir, store)
}

#[tokio::test]
async fn sqlite_migrates_a_renamed_field_on_resume() {
    let (_dir, store) = sqlite();
    a_renamed_field_is_migrated_on_resume(store).await;
}

#[tokio::test]
async fn sqlite_refuses_a_removed_field() {
    let (_dir, store) = sqlite();
    a_removed_field_is_refused_not_dropped(store).await;
}

#[tokio::test]
async fn sqlite_refuses_a_newer_state() {
    let (_dir, store) = sqlite();
    a_newer_state_is_refused(store).await;
}

#[cfg(crewflow_postgres_tests)]
async fn postgres() -> Arc<dyn RunStore> {
    Arc::new(crewflow::store::PostgresStore::connect(&common::postgres::fresh_schema().await).await.unwrap())
}

#[cfg(crewflow_postgres_tests)]
#[tokio::test]
async fn postgres_migrates_a_renamed_field_on_resume() {
    a_renamed_field_is_migrated_on_resume(postgres().await).await;
}

#[cfg(crewflow_postgres_tests)]
#[tokio::test]
async fn postgres_refuses_a_removed_field_and_a_newer_state() {
    a_removed_field_is_refused_not_dropped(postgres().await).await;
    a_newer_state_is_refused(postgres().await).await;
}

#[cfg(not(crewflow_postgres_tests))]
#[tokio::test]
#[ignore = "set CREWFLOW_TEST_POSTGRES to a PostgreSQL URL to run the PostgreSQL state-version tests"]
async fn postgres_state_versions() {}

/// Sessions: the state a conversation keeps is versioned the same way.
#[tokio::test]
async fn a_session_written_at_an_older_version_is_migrated_or_refused() {
    use common::chat::{on_file, sid, temp_db};

    #[derive(Debug, Default, Serialize, Deserialize)]
    struct SupportV1 {
        chat: ChatState,
        customer: String,
    }
    crewflow::conversational!(SupportV1, chat);
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct SupportV2 {
        chat: ChatState,
        customer_name: String,
    }
    crewflow::conversational!(SupportV2, chat);

    let (_dir, path) = temp_db();
    let first = on_file(
        FlowBuilder::<SupportV1>::new("support").state_version(1).start(
            "answer",
            |cx: Cx<SupportV1>, m: String| async move {
                cx.update(|s| s.customer = "Ada".into());
                Ok(format!("noted: {m}"))
            },
        ),
        &path,
    );
    first.handle_turn(sid("s1"), "hello").await.unwrap();

    let v2 = || {
        FlowBuilder::<SupportV2>::new("support").state_version(2).start(
            "answer",
            |cx: Cx<SupportV2>, _m: String| async move {
                Ok(format!("hello again, {}", cx.state(|s| s.customer_name.clone())))
            },
        )
    };
    // Without a migration: refused, and the session is unchanged (one turn, version 1).
    let err = on_file(v2(), &path).handle_turn(sid("s1"), "again").await.unwrap_err();
    assert!(err.to_string().contains("no migration from version 1"), "{err}");
    let store = SqliteStore::open(&path);
    let kept = store.load_session("support", "s1").await.unwrap().unwrap();
    assert_eq!((kept.turns, kept.state_version), (1, 1));

    // With one: the customer's name comes through, and the session is saved at version 2.
    let migrated = on_file(
        v2().migrate_state(1, |mut s: Value| {
            let name = s.as_object_mut().and_then(|o| o.remove("customer")).unwrap_or(Value::Null);
            s["customer_name"] = name;
            Ok(s)
        }),
        &path,
    );
    let turn = migrated.handle_turn(sid("s1"), "again").await.unwrap();
    assert_eq!(turn.reply, "hello again, Ada");
    let saved = store.load_session("support", "s1").await.unwrap().unwrap();
    assert_eq!((saved.turns, saved.state_version), (2, 2));
    assert_eq!(migrated.session(sid("s1")).await.unwrap().unwrap().state.chat.messages.len(), 4);
}

#[test]
fn the_builder_refuses_migrations_that_cannot_run() {
    let build =
        |b: FlowBuilder<ContactV2>| b.start("a", |_cx, (): ()| async { Ok(()) }).build().err().map(|e| e.to_string());
    let ahead = build(FlowBuilder::new("f").state_version(2).migrate_state(2, Ok)).unwrap();
    assert!(ahead.contains("a migration from state version 2 is registered, but the state is at version 2"), "{ahead}");
    assert!(ahead.contains("`.state_version(3)`"), "{ahead}");
    let twice = build(FlowBuilder::new("f").state_version(2).migrate_state(1, Ok).migrate_state(1, Ok)).unwrap();
    assert!(twice.contains("two migrations of the state from version 1"), "{twice}");
    assert_eq!(build(FlowBuilder::new("f").state_version(2).migrate_state(0, Ok).migrate_state(1, Ok)), None);
}

#[tokio::test]
async fn the_macro_declares_the_state_version() {
    struct Versioned;
    #[flow(state = ContactV2, state_version = 2)]
    impl Versioned {
        #[start]
        async fn go(&self) -> Result<()> {
            Ok(())
        }
    }
    let flow = Versioned.into_builder().migrate_state(1, rename_mail).build().unwrap();
    assert_eq!(flow.state_version(), 2);
    let state = flow.decode_state(1, r#"{"mail":"ada@example.com","n":3}"#).unwrap();
    assert_eq!((state.email.as_str(), state.n), ("ada@example.com", 3));
}
