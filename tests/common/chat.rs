//! Helpers for the conversation tests.

use crewflow::prelude::*;
use crewflow::store::SqliteStore;

/// A temporary SQLite file (kept while the `TempDir` lives).
pub fn temp_db() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("no temp dir: {e}"));
    let path = dir.path().join("chat.db");
    (dir, path)
}

/// A flow that replies `echo: <message> (#<turn>)` by returning a string.
pub fn echo_builder(path: &std::path::Path) -> FlowBuilder<ChatState> {
    FlowBuilder::<ChatState>::new("echo")
        .start("answer", |cx: Cx<ChatState>, message: String| async move {
            let turn = cx.state(|s| s.turns);
            Ok(format!("echo: {message} (#{turn})"))
        })
        .store(SqliteStore::open(path))
}

/// [`echo_builder`], built.
pub fn echo_flow(path: &std::path::Path) -> Flow<ChatState> {
    echo_builder(path).build().unwrap_or_else(|e| panic!("{e}"))
}
