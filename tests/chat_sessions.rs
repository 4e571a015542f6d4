//! Sessions in the store: restarts continue them, new ids start fresh, list / show / delete.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::chat::{echo_builder, echo_flow, temp_db};
use crewflow::Error;
use crewflow::chat::ChatState;
use crewflow::prelude::*;
use crewflow::store::SqliteStore;

#[tokio::test]
async fn a_new_flow_and_store_on_the_same_file_continue_the_session() {
    let (_dir, path) = temp_db();
    {
        let flow = echo_flow(&path);
        flow.handle_turn("ada", "first").await.unwrap();
        flow.handle_turn("ada", "second").await.unwrap();
    } // the flow and its store are gone: a process restart
    let flow = echo_flow(&path);
    let turn = flow.handle_turn("ada", "third").await.unwrap();
    assert_eq!(turn.index, 2);
    assert_eq!(turn.reply, "echo: third (#2)");
    let state = flow.session("ada").await.unwrap().unwrap().state;
    let texts: Vec<_> = state.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["first", "echo: first (#0)", "second", "echo: second (#1)", "third", "echo: third (#2)"]);
}

#[tokio::test]
async fn sessions_are_listed_shown_and_deleted() {
    let (_dir, path) = temp_db();
    let flow = echo_flow(&path);
    flow.handle_turn("a", "1").await.unwrap();
    flow.handle_turn("b", "1").await.unwrap();
    flow.handle_turn("b", "2").await.unwrap();
    let listed = flow.list_sessions(0).await.unwrap();
    let mut ids: Vec<_> = listed.iter().map(|s| (s.id.as_str(), s.turns)).collect();
    ids.sort();
    assert_eq!(ids, [("a", 1), ("b", 2)]);
    assert_eq!(flow.session("b").await.unwrap().unwrap().turns.len(), 2);
    assert!(flow.delete_session("b").await.unwrap());
    assert!(!flow.delete_session("b").await.unwrap(), "deleting twice finds nothing");
    assert!(flow.session("b").await.unwrap().is_none());
    assert!(flow.session_traces("b").await.unwrap().is_empty(), "its traces went with it");
    // A deleted id starts over.
    assert_eq!(flow.handle_turn("b", "again").await.unwrap().index, 0);
}

#[tokio::test]
async fn sessions_of_two_flows_with_the_same_id_stay_apart() {
    let (_dir, path) = temp_db();
    let echo = echo_flow(&path);
    let other = echo_builder(&path).rename("other").build().unwrap();
    echo.handle_turn("same", "for echo").await.unwrap();
    let turn = other.handle_turn("same", "for other").await.unwrap();
    assert_eq!(turn.index, 0);
    assert_eq!(other.session("same").await.unwrap().unwrap().state.messages.len(), 2);
    assert_eq!(other.list_sessions(0).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_stored_state_that_no_longer_parses_is_reported_with_the_fix() {
    let (_dir, path) = temp_db();
    echo_flow(&path).handle_turn("s", "hi").await.unwrap();

    #[derive(Default, serde::Serialize, serde::Deserialize)]
    struct Strict {
        chat: ChatState,
        required: u32, // not in the stored state, and no default
    }
    crewflow::conversational!(Strict, chat);
    let flow = FlowBuilder::<Strict>::new("echo")
        .start("answer", |_cx, m: String| async move { Ok(m) })
        .store(SqliteStore::open(&path))
        .build()
        .unwrap();
    let err = flow.handle_turn("s", "hi").await.unwrap_err();
    assert!(matches!(err, Error::CorruptSession { .. }), "{err:?}");
    assert!(err.to_string().contains("#[serde(default)]"), "{err}");
}

#[tokio::test]
async fn a_turn_saved_elsewhere_in_between_is_a_conflict_not_a_silent_loss() {
    use crewflow::chat::{TurnRecord, TurnSave};
    use crewflow::store::RunStore;

    let (_dir, path) = temp_db();
    let other_path = path.clone();
    // The step plays another process without a cross-process lock: it saves a turn of the
    // same session directly in the store while this turn runs.
    let flow = FlowBuilder::<ChatState>::new("raced")
        .start("answer", move |_cx, m: String| {
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
                    expected_turns: 0,
                    turn: record,
                    trace: None,
                };
                other.sessions().unwrap().save_turn(&save).await.map_err(StepError::from_boxed)?;
                Ok(m)
            }
        })
        .store(SqliteStore::open(&path))
        .build()
        .unwrap();
    let err = flow.handle_turn("s", "here").await.unwrap_err();
    assert!(matches!(err, Error::SessionConflict(_)), "{err:?}");
    assert!(err.to_string().contains("nothing of this turn was saved"), "{err}");
    let session = flow.session("s").await.unwrap().unwrap();
    let replies: Vec<_> = session.turns.iter().map(|t| t.reply.as_str()).collect();
    assert_eq!(replies, ["saved elsewhere"], "the other save stands; this one was refused whole");
}
