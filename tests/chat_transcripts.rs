//! A session's transcript as rows (schema migration 6): a turn reads only the end it needs and
//! appends its messages, so its cost does not grow with the session. Sessions written before
//! are converted by the migration itself (SQLite and PostgreSQL), or, when the migration
//! cannot tell where their transcript is, by their next turn.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::chat::{on_file_with, sid, temp_db};
use crewflow::chat::{ChatMessage, ChatOptions, ChatState, SessionStore, Summarizer, SummaryFuture};
use crewflow::prelude::*;
use crewflow::store::{PostgresStore, SqliteStore};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A state embedding its conversation, with another `ChatState` beside it (an archive), so the
/// store cannot tell from the JSON alone which is the transcript.
#[derive(Default, Serialize, Deserialize)]
struct Support {
    chat: ChatState,
    customer: String,
    score: f64,
    archive: Option<ChatState>,
}
crewflow::conversational!(Support, chat);

/// A `ChatState` as earlier versions stored it: the transcript inside, `turns` turns tagged `tag`.
fn legacy_chat(turns: u64, tag: &str) -> Value {
    let messages: Vec<Value> = (0..turns)
        .flat_map(|t| {
            [
                json!({"role": "user", "content": format!("{tag} q{t}"), "turn": t}),
                json!({"role": "assistant", "content": format!("{tag} a{t}"), "turn": t}),
            ]
        })
        .collect();
    json!({"messages": messages, "last_user_message": format!("{tag} q{}", turns - 1), "last_intent": null,
           "previous_intent": null, "summary": null, "summarized": 0, "turns": turns})
}

/// The sessions an earlier version left: (flow, id, state).
fn legacy_sessions() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("legacy", "plain", legacy_chat(2, "p")),
        ("support", "nested", json!({"chat": legacy_chat(2, "n"), "customer": "Ada", "score": 1.5, "archive": null})),
        (
            "support",
            "ambiguous",
            json!({"chat": legacy_chat(2, "x"), "customer": "Bo", "score": 0.25, "archive": legacy_chat(1, "old")}),
        ),
    ]
}

fn texts(messages: &[ChatMessage]) -> Vec<&str> {
    messages.iter().map(|m| m.content.as_str()).collect()
}

/// What the migration made of [`legacy_sessions`], read through the store.
async fn check_migrated(store: &dyn SessionStore) {
    let plain = store.load_session("legacy", "plain").await.unwrap().unwrap();
    assert_eq!(texts(&plain.messages), ["p q0", "p a0", "p q1", "p a1"]);
    assert_eq!(plain.messages[1].role, crewflow::chat::Role::Assistant);
    assert_eq!((plain.messages[3].turn, plain.message_count, plain.turns), (1, 4, 2));
    let state: Value = serde_json::from_str(&plain.state).unwrap();
    assert_eq!(state["messages"], json!([]), "the transcript left the state");
    assert_eq!((state["turns"].as_u64(), state["last_user_message"].as_str()), (Some(2), Some("p q1")));

    let nested = store.load_session("support", "nested").await.unwrap().unwrap();
    assert_eq!(texts(&nested.messages), ["n q0", "n a0", "n q1", "n a1"]);
    let state: Value = serde_json::from_str(&nested.state).unwrap();
    assert_eq!(state["chat"]["messages"], json!([]));
    assert_eq!((state["customer"].as_str(), state["score"].as_f64()), (Some("Ada"), Some(1.5)));

    let ambiguous = store.load_session("support", "ambiguous").await.unwrap().unwrap();
    assert_eq!(ambiguous.message_count, 0, "two transcripts: the migration leaves it to the next turn");
    let state: Value = serde_json::from_str(&ambiguous.state).unwrap();
    assert_eq!(state, legacy_sessions()[2].2, "left exactly as it was");
}

/// Each migrated session continues, and shows its whole transcript.
async fn continue_migrated(store: Arc<dyn SessionStore>) {
    let options = ChatOptions::default().window(2);
    let plain = FlowBuilder::<ChatState>::new("legacy")
        .start("answer", |_cx, m: String| async move { Ok(format!("re {m}")) })
        .build()
        .unwrap();
    let plain = ChatFlow::with_shared_store(plain, store.clone()).with_options(options.clone()).unwrap();
    let turn = plain.handle_turn(sid("plain"), "p q2").await.unwrap();
    assert_eq!(turn.index, 2);
    let state = plain.session(sid("plain")).await.unwrap().unwrap().state;
    assert_eq!(texts(&state.messages), ["p q0", "p a0", "p q1", "p a1", "p q2", "re p q2"]);

    let support = FlowBuilder::<Support>::new("support")
        .start("answer", |cx: Cx<Support>, m: String| async move {
            Ok(format!("{m} for {}", cx.state(|s| s.customer.clone())))
        })
        .build()
        .unwrap();
    let support = ChatFlow::with_shared_store(support, store.clone()).with_options(options).unwrap();
    for (id, tag) in [("nested", "n"), ("ambiguous", "x")] {
        support.handle_turn(sid(id), &format!("{tag} q2")).await.unwrap();
        let state = support.session(sid(id)).await.unwrap().unwrap().state;
        let customer = if id == "nested" { "Ada" } else { "Bo" };
        let expected = [
            format!("{tag} q0"),
            format!("{tag} a0"),
            format!("{tag} q1"),
            format!("{tag} a1"),
            format!("{tag} q2"),
            format!("{tag} q2 for {customer}"),
        ];
        assert_eq!(texts(&state.chat.messages), expected, "{id}");
        let stored = store.load_session("support", id).await.unwrap().unwrap();
        assert_eq!(stored.message_count, 6, "{id}: the transcript is rows now");
        let raw: Value = serde_json::from_str(&stored.state).unwrap();
        assert_eq!(raw["chat"]["messages"], json!([]), "{id}");
        if id == "ambiguous" {
            assert_eq!(raw["archive"], legacy_chat(1, "old"), "the other transcript is the state's own");
            assert_eq!(state.archive.map(|a| a.messages.len()), Some(2));
        }
    }
}

#[tokio::test]
async fn sqlite_migration_moves_existing_transcripts_into_rows() {
    let (_dir, path) = temp_db();
    // A database as an earlier version left it: schema 5, transcripts inside the states.
    SqliteStore::open(&path).list_sessions(&Default::default()).await.unwrap();
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "DROP TABLE crewflow_api_keys; DROP TABLE crewflow_schedule_ticks; DROP TABLE crewflow_schedules; DROP TABLE crewflow_webhooks;
         DROP TABLE crewflow_messages; ALTER TABLE crewflow_sessions DROP COLUMN message_count;
         DROP INDEX crewflow_runs_by_parent; ALTER TABLE crewflow_runs DROP COLUMN parent_run_id;
         ALTER TABLE crewflow_runs DROP COLUMN parent_activation;
         DELETE FROM crewflow_schema WHERE version >= 6;",
    )
    .unwrap();
    for (flow, id, state) in legacy_sessions() {
        c.execute(
            "INSERT INTO crewflow_sessions (flow, id, state, turns, created_at, updated_at, state_version)
             VALUES (?1, ?2, ?3, 2, 0, 0, 0)",
            rusqlite::params![flow, id, state.to_string()],
        )
        .unwrap();
    }
    drop(c);

    let store = Arc::new(SqliteStore::open(&path));
    check_migrated(&*store).await;
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT max(version) FROM crewflow_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 11);
    continue_migrated(store).await;
}

#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn postgres_migration_moves_existing_transcripts_into_rows() {
    let url = common::postgres::fresh_schema().await;
    PostgresStore::connect_lazy(&url).unwrap().list_sessions(&Default::default()).await.unwrap();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "DROP TABLE crewflow_api_keys; DROP TABLE crewflow_schedule_ticks; DROP TABLE crewflow_schedules; DROP TABLE crewflow_webhooks;
             DROP TABLE crewflow_messages; ALTER TABLE crewflow_sessions DROP COLUMN message_count;
             DROP INDEX crewflow_runs_by_parent; ALTER TABLE crewflow_runs DROP COLUMN parent_run_id;
             ALTER TABLE crewflow_runs DROP COLUMN parent_activation;
             ALTER TABLE crewflow_steps ADD CONSTRAINT crewflow_steps_run_id_fkey
                 FOREIGN KEY (run_id) REFERENCES crewflow_runs (id) ON DELETE CASCADE;
             DELETE FROM crewflow_schema WHERE version >= 6;",
        )
        .await
        .unwrap();
    for (flow, id, state) in legacy_sessions() {
        client
            .execute(
                "INSERT INTO crewflow_sessions (flow, id, state, turns, created_at, updated_at, state_version)
                 VALUES ($1, $2, $3::text::jsonb, 2, now(), now(), 0)",
                &[&flow, &id, &state.to_string()],
            )
            .await
            .unwrap();
    }

    let store = Arc::new(PostgresStore::connect_lazy(&url).unwrap());
    check_migrated(&*store).await;
    let version: i32 = client.query_one("SELECT max(version) FROM crewflow_schema", &[]).await.unwrap().get(0);
    assert_eq!(version, 12);
    let fk: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'crewflow_steps'::regclass AND contype = 'f'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(fk, 0, "migration 9 dropped the steps' foreign key");
    continue_migrated(store).await;
}

/// A flow whose step replies with what it sees: how many messages, from where in the
/// transcript.
fn seeing(path: &std::path::Path, options: ChatOptions) -> ChatFlow<ChatState> {
    on_file_with(
        FlowBuilder::<ChatState>::new("seeing").start("answer", |cx: Cx<ChatState>, _m: String| async move {
            Ok(cx.state(|s| format!("{} {}", s.messages.len(), s.transcript_offset())))
        }),
        path,
        options,
    )
}

fn seen(reply: &str) -> (usize, usize) {
    let (len, offset) = reply.split_once(' ').unwrap();
    (len.parse().unwrap(), offset.parse().unwrap())
}

#[tokio::test]
async fn a_turn_loads_the_end_of_the_transcript_its_history_needs() {
    let (_dir, path) = temp_db();
    let flow = seeing(&path, ChatOptions::default().window(4));
    for t in 0..30 {
        let (len, offset) = seen(&flow.handle_turn(sid("s"), &format!("q{t}")).await.unwrap().reply);
        // The window's 4 messages (fewer at first) and the turn's own user message.
        assert_eq!(len, (2 * t).min(4) + 1, "turn {t}");
        assert_eq!(offset + len, 2 * t + 1, "turn {t}: the loaded messages are the transcript's end");
    }
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    assert_eq!((state.messages.len(), state.transcript_offset()), (60, 0), "the session is shown whole");
    assert_eq!(state.messages[58].content, "q29");

    // Flows whose steps read everything said ask for it.
    let whole = seeing(&path, ChatOptions::default().window(4).whole_transcript(true));
    let reply = whole.handle_turn(sid("s"), "q30").await.unwrap().reply;
    assert_eq!(seen(&reply), (61, 0));
}

#[tokio::test]
async fn a_step_that_changes_loaded_messages_rewrites_the_transcript_from_there() {
    let (_dir, path) = temp_db();
    let flow = on_file_with(
        FlowBuilder::<ChatState>::new("editing").start("answer", |cx: Cx<ChatState>, m: String| async move {
            match m.as_str() {
                "correct that" => cx.update(|s| {
                    let n = s.messages.len();
                    s.messages[n - 2].content = "a2, corrected".into();
                }),
                "forget it" => cx.update(|s| s.messages.clear()),
                _ => {}
            }
            Ok(format!("a{}", cx.state(|s| s.turns)))
        }),
        &path,
        ChatOptions::default().window(4),
    );
    for t in 0..3 {
        flow.handle_turn(sid("s"), &format!("q{t}")).await.unwrap();
    }
    flow.handle_turn(sid("s"), "correct that").await.unwrap();
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    assert_eq!(texts(&state.messages), ["q0", "a0", "q1", "a1", "q2", "a2, corrected", "correct that", "a3"]);

    // Clearing the messages clears those the turn loaded (its window and its own message);
    // the older ones were not in the turn and stay.
    flow.handle_turn(sid("s"), "forget it").await.unwrap();
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    assert_eq!(texts(&state.messages), ["q0", "a0", "q1", "a1", "a4"]);
    assert_eq!(state.turns, 5);
    flow.handle_turn(sid("s"), "q5").await.unwrap();
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    assert_eq!(texts(&state.messages), ["q0", "a0", "q1", "a1", "a4", "q5", "a5"]);
}

/// Summarizes as `N messages` (N counted over all summaries), failing while `failing` is set.
#[derive(Clone, Default)]
struct FlakySummarizer {
    failing: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl Summarizer for FlakySummarizer {
    fn summarize<'a>(&'a self, previous: Option<&'a str>, messages: &'a [ChatMessage]) -> SummaryFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let failing = self.failing.load(Ordering::SeqCst);
        let before: usize = previous.and_then(|p| p.split(' ').next()?.parse().ok()).unwrap_or(0);
        let text = format!("{} messages", before + messages.len());
        Box::pin(async move { if failing { Err("the model is down".into()) } else { Ok(text) } })
    }
}

#[tokio::test]
async fn compaction_after_a_failing_summarizer_summarizes_every_message_it_missed() {
    let (_dir, path) = temp_db();
    let summarizer = FlakySummarizer::default();
    let flow = on_file_with(
        FlowBuilder::<ChatState>::new("compacting").start("answer", |_cx, m: String| async move { Ok(m) }),
        &path,
        ChatOptions::default().window(4).summarize(10, summarizer.clone()),
    );
    for t in 0..8 {
        flow.handle_turn(sid("s"), &format!("q{t}")).await.unwrap();
    }
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    // Compacted once, at 12 messages (all but the window's 4); 8 uncovered since.
    assert_eq!((state.summarized, state.summary.as_deref()), (8, Some("8 messages")));
    // The summarizer fails for 10 turns: the uncovered messages pile up past what a turn loads.
    summarizer.failing.store(true, Ordering::SeqCst);
    for t in 8..18 {
        flow.handle_turn(sid("s"), &format!("q{t}")).await.unwrap();
    }
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    assert_eq!((state.summarized, state.messages.len()), (8, 36), "nothing compacted while it failed");
    summarizer.failing.store(false, Ordering::SeqCst);
    flow.handle_turn(sid("s"), "q18").await.unwrap();
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    // Every message but the window is covered, and the summary counted each exactly once.
    assert_eq!(state.summarized, 38 - 4);
    assert_eq!(state.summary.as_deref(), Some("34 messages"));
}
