//! Helpers for the conversation tests.

use crewflow::chat::SessionId;
use crewflow::prelude::*;
use crewflow::store::SqliteStore;

/// A temporary SQLite file (kept while the `TempDir` lives).
pub fn temp_db() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("no temp dir: {e}"));
    let path = dir.path().join("chat.db");
    (dir, path)
}

/// A session id the test knows to be valid.
pub fn sid(id: &str) -> SessionId {
    SessionId::new(id).unwrap_or_else(|e| panic!("{e}"))
}

/// The flow `builder` builds, holding its sessions in the SQLite file at `path`.
pub fn on_file<S: Conversational>(builder: FlowBuilder<S>, path: &std::path::Path) -> ChatFlow<S> {
    ChatFlow::new(builder.build().unwrap_or_else(|e| panic!("{e}")), SqliteStore::open(path))
}

/// [`on_file`] with chat options.
pub fn on_file_with<S: Conversational>(
    builder: FlowBuilder<S>,
    path: &std::path::Path,
    options: ChatOptions,
) -> ChatFlow<S> {
    on_file(builder, path).with_options(options).unwrap_or_else(|e| panic!("{e}"))
}

/// A flow that replies `echo: <message> (#<turn>)` by returning a string.
pub fn echo_builder() -> FlowBuilder<ChatState> {
    FlowBuilder::<ChatState>::new("echo").start("answer", |cx: Cx<ChatState>, message: String| async move {
        let turn = cx.state(|s| s.turns);
        Ok(format!("echo: {message} (#{turn})"))
    })
}

/// [`echo_builder`], holding its sessions in the SQLite file at `path`.
pub fn echo_flow(path: &std::path::Path) -> ChatFlow<ChatState> {
    on_file(echo_builder(), path)
}
