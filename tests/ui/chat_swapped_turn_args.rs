// A call ported from CrewAI, `flow.handle_turn(message, session_id=...)`, with the message first:
// it must not compile (two plain strings would silently open a session named after the message).
use crewflow::prelude::*;

async fn ported(chat: &ChatFlow<ChatState>, message: &str, session_id: &str) {
    let _ = chat.handle_turn(message, session_id).await;
}

fn main() {}
