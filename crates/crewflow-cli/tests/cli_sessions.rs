//! Sessions and their traces, written by the store as a conversation would (a turn with a step,
//! a model call and a failed tool call), read back through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use chrono::{Duration, Utc};
use common::{Scratch, json_lines, stderr, stdout};
use crewflow_chat::{ChatMessage, Role, SpanRecord, TraceWrite, TurnRecord, TurnSave};
use crewflow_core::{RunId, TokenUsage};
use serde_json::json;

fn span(
    id: &str,
    parent: &str,
    kind: &str,
    name: &str,
    from_ms: i64,
    to_ms: i64,
    attributes: serde_json::Value,
) -> SpanRecord {
    let t0 = Utc::now() - Duration::seconds(5);
    SpanRecord {
        span_id: id.into(),
        parent_id: Some(parent.into()),
        kind: kind.into(),
        name: name.into(),
        started_at: t0 + Duration::milliseconds(from_ms),
        ended_at: Some(t0 + Duration::milliseconds(to_ms)),
        attributes,
    }
}

fn save_session(db: &str) {
    let store = crewflow_store::open_sessions(db).unwrap();
    let now = Utc::now();
    let save = TurnSave {
        session_id: "alice".into(),
        flow: "support".into(),
        state: json!({"messages": []}).to_string(),
        state_version: 0,
        expected_turns: 0,
        messages_from: 0,
        messages: vec![
            ChatMessage::new(Role::User, "my invoice is wrong", 0),
            ChatMessage::new(Role::Assistant, "I have opened a ticket", 0),
        ],
        turn: TurnRecord {
            session_id: "alice".into(),
            index: 0,
            run_id: RunId::new(),
            user_message: "my invoice is wrong".into(),
            reply: "I have opened a ticket".into(),
            intent: Some("billing".into()),
            usage: TokenUsage { prompt_tokens: 120, completion_tokens: 30, cached_tokens: 0 },
            started_at: now - Duration::seconds(5),
            finished_at: now,
        },
        trace: Some(TraceWrite {
            new_trace_id: "trace-1".into(),
            idle_after: None,
            spans: vec![
                span("t0", "session", "turn", "turn 0", 0, 900, json!({"intent": "billing"})),
                span("t0.s0", "t0", "step", "answer", 10, 880, json!({"activation": 0, "route": "billing"})),
                span(
                    "t0.l0",
                    "t0.s0",
                    "llm",
                    "openai",
                    20,
                    600,
                    json!({"provider": "openai", "usage": {"prompt_tokens": 120, "completion_tokens": 30}, "finish_reason": "stop"}),
                ),
                span("t0.x0", "t0.s0", "tool", "lookup_invoice", 610, 700, json!({"error": "invoice 42 not found"})),
            ],
        }),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(store.save_turn(&save))
        .unwrap();
}

#[test]
fn sessions_are_listed_shown_traced_and_deleted() {
    let s = Scratch::new();
    let db = s.db("chat.db");
    save_session(&db);

    let list = stdout(&s.cmd(&["sessions", "list", "--store", &db]).output().unwrap());
    assert!(list.starts_with("FLOW "), "{list}");
    assert!(list.lines().nth(1).unwrap().starts_with("support               alice "), "{list}");
    let list =
        json_lines(&s.cmd(&["sessions", "list", "--flow", "support", "--json", "--store", &db]).output().unwrap());
    assert_eq!((list[0]["id"].as_str(), list[0]["turns"].as_u64()), (Some("alice"), Some(1)));
    let none = json_lines(&s.cmd(&["sessions", "list", "--flow", "sales", "--json", "--store", &db]).output().unwrap());
    assert!(none.is_empty());

    let show = stdout(&s.cmd(&["sessions", "show", "support", "alice", "--store", &db]).output().unwrap());
    assert!(show.starts_with("session alice of flow `support`: 1 turns\n"), "{show}");
    assert!(show.contains("    user: my invoice is wrong\n    reply: I have opened a ticket\n"), "{show}");
    assert!(show.contains(" [billing] (run "), "{show}");
    let shown =
        json_lines(&s.cmd(&["sessions", "show", "support", "alice", "--json", "--store", &db]).output().unwrap());
    let transcript: Vec<_> = shown[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(transcript, [("user", "my invoice is wrong"), ("assistant", "I have opened a ticket")]);

    let out = s.cmd(&["trace", "--session", "support/alice", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let trace = stdout(&out);
    let lines: Vec<&str> = trace.lines().collect();
    assert_eq!(lines[0], "trace trace-1 · session `alice` of `support` · 1 turns", "{trace}");
    // the tree: session > turn > step > (model call, tool call), with what each carries
    let find = |needle: &str| {
        lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no `{needle}` in\n{trace}"))
    };
    let (turn, step, llm, tool) =
        (find("turn turn 0"), find("step answer"), find("llm openai"), find("tool lookup_invoice"));
    assert!(lines[1].starts_with("└─ session alice  open  "), "{trace}");
    assert!(lines[turn].starts_with("   └─ turn turn 0  900.0 ms  "), "{trace}");
    assert!(turn < step && step < llm && llm < tool, "{trace}");
    assert!(lines[llm].starts_with("         ├─ llm openai  580.0 ms"), "{trace}");
    assert!(lines[llm].ends_with("[tokens 120+30, provider openai, finish_reason stop]"), "{trace}");
    assert!(lines[tool].starts_with("         └─ tool lookup_invoice  90.0 ms"), "{trace}");
    assert!(lines[tool].ends_with("[ERROR invoice 42 not found]"), "{trace}");
    assert!(lines[step].ends_with("[route billing]"), "{trace}");

    // The same as one page: each span in its list, its notes beside it, nothing to fetch.
    let page = s.path("session.html");
    let out = s
        .cmd(&["trace", "--session", "support/alice", "--html", page.to_str().unwrap(), "--store", &db])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).ends_with("(session support/alice, 1 traces, 5 spans)\n"), "{}", stderr(&out));
    let html = std::fs::read_to_string(&page).unwrap();
    let at = |needle: &str| html.find(needle).unwrap_or_else(|| panic!("no `{needle}` in\n{html}"));
    assert!(
        at("data-kind=\"session\"") < at("data-kind=\"turn\"") && at("data-kind=\"turn\"") < at("data-kind=\"step\"")
    );
    assert!(at("data-kind=\"step\"") < at("data-kind=\"llm\"") && at("data-kind=\"llm\"") < at("data-kind=\"tool\""));
    assert!(html.contains("tokens 120+30, provider openai, finish_reason stop"), "{html}");
    assert!(html.contains("<li class=\"span error\" data-kind=\"tool\">"), "{html}");
    assert!(html.contains("ERROR invoice 42 not found"), "{html}");
    assert!(!html.contains("<script") && !html.contains("http://") && !html.contains("https://"), "{html}");

    let json = json_lines(&s.cmd(&["trace", "--session", "support/alice", "--json", "--store", &db]).output().unwrap());
    let kinds: Vec<&str> = json[0]["spans"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["session", "turn", "step", "llm", "tool"]);

    let out = s.cmd(&["sessions", "delete", "support", "alice", "--store", &db]).output().unwrap();
    assert_eq!((out.status.code(), stderr(&out)), (Some(0), "deleted session `alice` of flow `support`\n".to_string()));
    let out = s.cmd(&["sessions", "show", "support", "alice", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    let out = s.cmd(&["trace", "--session", "support/alice", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "the traces went with the session");
}
