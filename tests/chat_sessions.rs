//! Sessions in the store: restarts continue them, new ids start fresh, list / show / delete.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::chat::{echo_builder, echo_flow, on_file, sid, temp_db};
use crewflow::chat::{ChatError, ChatMessage, ChatState, Role, SessionStore};
use crewflow::prelude::*;
use crewflow::store::SqliteStore;

#[tokio::test]
async fn a_new_flow_and_store_on_the_same_file_continue_the_session() {
    let (_dir, path) = temp_db();
    {
        let flow = echo_flow(&path);
        flow.handle_turn(sid("ada"), "first").await.unwrap();
        flow.handle_turn(sid("ada"), "second").await.unwrap();
    } // the flow and its store are gone: a process restart
    let flow = echo_flow(&path);
    let turn = flow.handle_turn(sid("ada"), "third").await.unwrap();
    assert_eq!(turn.index, 2);
    assert_eq!(turn.reply, "echo: third (#2)");
    let state = flow.session(sid("ada")).await.unwrap().unwrap().state;
    let texts: Vec<_> = state.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["first", "echo: first (#0)", "second", "echo: second (#1)", "third", "echo: third (#2)"]);
}

#[tokio::test]
async fn sessions_are_listed_shown_and_deleted() {
    let (_dir, path) = temp_db();
    let flow = echo_flow(&path);
    flow.handle_turn(sid("a"), "1").await.unwrap();
    flow.handle_turn(sid("b"), "1").await.unwrap();
    flow.handle_turn(sid("b"), "2").await.unwrap();
    let listed = flow.list_sessions(0).await.unwrap();
    let mut ids: Vec<_> = listed.iter().map(|s| (s.id.as_str(), s.turns)).collect();
    ids.sort();
    assert_eq!(ids, [("a", 1), ("b", 2)]);
    assert_eq!(flow.session(sid("b")).await.unwrap().unwrap().turns.len(), 2);
    assert!(flow.delete_session(sid("b")).await.unwrap());
    assert!(!flow.delete_session(sid("b")).await.unwrap(), "deleting twice finds nothing");
    assert!(flow.session(sid("b")).await.unwrap().is_none());
    assert!(flow.session_traces(sid("b")).await.unwrap().is_empty(), "its traces went with it");
    // A deleted id starts over.
    assert_eq!(flow.handle_turn(sid("b"), "again").await.unwrap().index, 0);
}

#[tokio::test]
async fn sessions_of_two_flows_with_the_same_id_stay_apart() {
    let (_dir, path) = temp_db();
    let echo = echo_flow(&path);
    let other = on_file(echo_builder().rename("other"), &path);
    echo.handle_turn(sid("same"), "for echo").await.unwrap();
    let turn = other.handle_turn(sid("same"), "for other").await.unwrap();
    assert_eq!(turn.index, 0);
    assert_eq!(other.session(sid("same")).await.unwrap().unwrap().state.messages.len(), 2);
    assert_eq!(other.list_sessions(0).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_stored_state_that_no_longer_parses_is_reported_with_the_fix() {
    let (_dir, path) = temp_db();
    echo_flow(&path).handle_turn(sid("s"), "hi").await.unwrap();

    #[derive(Default, serde::Serialize, serde::Deserialize)]
    struct Strict {
        chat: ChatState,
        required: u32, // not in the stored state, and no default
    }
    crewflow::conversational!(Strict, chat);
    let flow =
        on_file(FlowBuilder::<Strict>::new("echo").start("answer", |_cx, m: String| async move { Ok(m) }), &path);
    let err = flow.handle_turn(sid("s"), "hi").await.unwrap_err();
    assert!(matches!(err, ChatError::CorruptSession { .. }), "{err:?}");
    assert!(err.to_string().contains("#[serde(default)]") && err.to_string().contains("delete the session"), "{err}");
}

#[tokio::test]
async fn a_turn_saved_elsewhere_in_between_is_a_conflict_not_a_silent_loss() {
    use crewflow::chat::{TurnRecord, TurnSave};

    let (_dir, path) = temp_db();
    let other_path = path.clone();
    // The step plays another process without a cross-process lock: it saves a turn of the
    // same session directly in the store while this turn runs.
    let flow = on_file(
        FlowBuilder::<ChatState>::new("raced").start("answer", move |_cx, m: String| {
            let other = SqliteStore::open(&other_path);
            async move {
                let now = chrono::Utc::now();
                let record = TurnRecord {
                    session_id: "s".into(),
                    index: 0,
                    run_id: crewflow::RunId::new(),
                    user_message: "elsewhere".into(),
                    reply: "saved elsewhere".into(),
                    intent: None,
                    usage: Default::default(),
                    started_at: now,
                    finished_at: now,
                };
                let save = TurnSave {
                    session_id: "s".into(),
                    flow: "raced".into(),
                    state: serde_json::to_string(&ChatState::default()).unwrap(),
                    state_version: 0,
                    expected_turns: 0,
                    messages_from: 0,
                    messages: vec![
                        ChatMessage::new(Role::User, "elsewhere", 0),
                        ChatMessage::new(Role::Assistant, "saved elsewhere", 0),
                    ],
                    turn: record,
                    trace: None,
                };
                SessionStore::save_turn(&other, &save).await.map_err(StepError::from_boxed)?;
                Ok(m)
            }
        }),
        &path,
    );
    let err = flow.handle_turn(sid("s"), "here").await.unwrap_err();
    assert!(matches!(err, ChatError::SessionConflict(_)), "{err:?}");
    assert!(err.to_string().contains("nothing of this turn was saved"), "{err}");
    let session = flow.session(sid("s")).await.unwrap().unwrap();
    let replies: Vec<_> = session.turns.iter().map(|t| t.reply.as_str()).collect();
    assert_eq!(replies, ["saved elsewhere"], "the other save stands; this one was refused whole");
    let transcript: Vec<_> = session.state.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(transcript, ["elsewhere", "saved elsewhere"], "no message of the refused turn was appended");
}

/// A session saved before conversations left crewflow-core (the state JSON as that code wrote
/// it: `ChatState` with its own `Role`) loads and continues: the stored format did not change.
#[tokio::test]
async fn a_session_stored_by_earlier_versions_still_loads_and_continues() {
    use crewflow::chat::{TurnRecord, TurnSave};
    let (_dir, path) = temp_db();
    let state = r#"{"messages":[{"role":"user","content":"hello","turn":0},{"role":"assistant","content":"echo: hello (#0)","turn":0}],"last_user_message":"hello","last_intent":"greeting","previous_intent":null,"summary":null,"summarized":0,"turns":1}"#;
    let now = chrono::Utc::now();
    let record = TurnRecord {
        session_id: "old".into(),
        index: 0,
        run_id: crewflow::RunId::new(),
        user_message: "hello".into(),
        reply: "echo: hello (#0)".into(),
        intent: Some("greeting".into()),
        usage: Default::default(),
        started_at: now,
        finished_at: now,
    };
    let save = TurnSave {
        session_id: "old".into(),
        flow: "echo".into(),
        state: state.into(),
        state_version: 0,
        expected_turns: 0,
        // Its transcript is in the state, as every session's was before transcripts were rows
        // (and as the store's migration leaves one whose transcript it cannot tell apart).
        messages_from: 0,
        messages: Vec::new(),
        turn: record,
        trace: None,
    };
    SessionStore::save_turn(&SqliteStore::open(&path), &save).await.unwrap();

    let flow = echo_flow(&path);
    let loaded = flow.session(sid("old")).await.unwrap().unwrap();
    assert_eq!(loaded.state.messages[1].role, Role::Assistant);
    assert_eq!(loaded.state.last_intent.as_deref(), Some("greeting"));
    let turn = flow.handle_turn(sid("old"), "again").await.unwrap();
    assert_eq!((turn.index, turn.reply.as_str()), (1, "echo: again (#1)"));
    let state = flow.session(sid("old")).await.unwrap().unwrap().state;
    let texts: Vec<_> = state.messages.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
    assert_eq!(
        texts,
        [("user", "hello"), ("assistant", "echo: hello (#0)"), ("user", "again"), ("assistant", "echo: again (#1)")]
    );
    assert_eq!(state.previous_intent.as_deref(), Some("greeting"));
}
