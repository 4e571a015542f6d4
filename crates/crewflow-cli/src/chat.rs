//! `crewflow chat`: a conversational flow (`crewflow-chat`) in the terminal. Each stdin line is
//! a turn; the reply is printed as its tokens arrive; `/quit` (or the end of input) ends it.
//! Conversational flows are compiled into a binary of one's own and mounted with
//! [`App::chat`](crate::App::chat): a YAML definition cannot hold a conversation yet.

use std::io::IsTerminal as _;
use std::io::Write as _;

use crewflow_chat::{ChatError, ChatFlow, ChatMessage, Conversational, Role, SessionId, TurnEvent, TurnStream};
use crewflow_server::{DoubleTexting, Server, ServerError};
use serde_json::json;
use tokio::io::AsyncBufReadExt as _;

use crate::commands::Ctx;
use crate::target::BoxFuture;
use crate::{ChatArgs, CliError, Exit};

/// What the commands do with a conversational flow, for any state type.
pub(crate) trait AnyChat: Send + Sync {
    fn name(&self) -> &str;
    /// The server, also hosting this flow's sessions.
    fn serve(&self, server: Server) -> Result<Server, ServerError>;
    fn stream_turn(&self, session: &SessionId, message: &str) -> TurnStream;
    /// The session's transcript, or `None` for a session not stored yet.
    fn history<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, Result<Option<Vec<ChatMessage>>, ChatError>>;
}

impl<S: Conversational> AnyChat for ChatFlow<S> {
    fn name(&self) -> &str {
        ChatFlow::name(self)
    }

    fn serve(&self, server: Server) -> Result<Server, ServerError> {
        server.chat(self, DoubleTexting::Enqueue)
    }

    fn stream_turn(&self, session: &SessionId, message: &str) -> TurnStream {
        ChatFlow::stream_turn(self, session, message)
    }

    fn history<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, Result<Option<Vec<ChatMessage>>, ChatError>> {
        Box::pin(async move { Ok(self.session(session).await?.map(|s| s.state.chat().messages.clone())) })
    }
}

/// Holds a conversation on stdin/stdout: exit 0 after `/quit` or the end of input, 1 if a
/// turn failed (the conversation went on; a failed turn saves nothing).
pub(crate) async fn chat(ctx: &Ctx, args: ChatArgs) -> Result<Exit, CliError> {
    let flow = find(ctx, &args.flow)?;
    let session = match &args.session {
        Some(id) => SessionId::new(id.clone()).map_err(|e| CliError::new(Exit::Usage, format!("--session: {e}")))?,
        None => SessionId::generate(),
    };
    // The sessions live in the store the chat flow was built with (`ChatFlow::new`), chosen
    // in code as a compiled flow's run store is; `--store` does not move them.
    let history = flow.history(&session).await.map_err(|e| session_failed(&flow, e))?;
    greet(ctx, flow.name(), &session, history.as_deref());
    let interactive = std::io::stdin().is_terminal();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut failed = false;
    loop {
        if interactive {
            eprint!("you> ");
        }
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => return Err(CliError::new(Exit::Usage, format!("cannot read stdin: {e}"))),
        };
        let message = line.trim();
        if message == "/quit" {
            break;
        }
        if message.is_empty() {
            continue;
        }
        failed |= !turn(ctx, flow.as_ref(), &session, message).await;
    }
    if !ctx.json {
        eprintln!("session `{session}` kept; `… chat {} --session {session}` goes on with it", flow.name());
    }
    Ok(if failed { Exit::RunFailed } else { Exit::Ok })
}

fn find(ctx: &Ctx, name: &str) -> Result<std::sync::Arc<dyn AnyChat>, CliError> {
    if let Some(chat) = ctx.chats().into_iter().find(|c| c.name() == name) {
        return Ok(chat);
    }
    let names: Vec<String> = ctx.chats().iter().map(|c| c.name().to_string()).collect();
    let mut message = if std::path::Path::new(name).exists() {
        format!(
            "`{name}` is a file, and a flow definition cannot hold a conversation yet; `crewflow chat` takes a conversational flow compiled into a binary of your own (crewflow_cli::App::chat)"
        )
    } else {
        format!("no conversational flow `{name}`")
    };
    if names.is_empty() {
        message.push_str("; this binary mounts none: mount a crewflow_chat::ChatFlow with crewflow_cli::App::chat");
    } else {
        message.push_str(&format!("; this binary has: {}", names.join(", ")));
    }
    Err(CliError::new(Exit::Usage, message))
}

fn session_failed(flow: &std::sync::Arc<dyn AnyChat>, e: ChatError) -> CliError {
    CliError::new(Exit::Store, format!("cannot load the session of flow `{}`: {e}", flow.name()))
}

/// Says which session this is, and replays a resumed one's transcript (on stderr: stdout
/// carries only replies).
fn greet(ctx: &Ctx, flow: &str, session: &SessionId, history: Option<&[ChatMessage]>) {
    if ctx.json {
        return;
    }
    match history {
        None => eprintln!("new session `{session}` of flow `{flow}`; /quit ends it"),
        Some(messages) => {
            eprintln!("session `{session}` of flow `{flow}`, {} messages; /quit ends it", messages.len());
            for m in messages {
                let who = if m.role == Role::User { "you" } else { flow };
                eprintln!("{who}> {}", m.content);
            }
        }
    }
}

/// One turn: tokens printed as they arrive, then the reply (if nothing was streamed).
/// Returns whether the turn succeeded.
async fn turn(ctx: &Ctx, flow: &dyn AnyChat, session: &SessionId, message: &str) -> bool {
    let mut stream = flow.stream_turn(session, message);
    let mut streamed = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(TurnEvent::Token(text)) => {
                streamed = true;
                let mut out = std::io::stdout().lock();
                let _ = if ctx.json {
                    writeln!(out, "{}", json!({"type": "token", "text": text}))
                } else {
                    write!(out, "{text}")
                };
                let _ = out.flush();
            }
            Ok(TurnEvent::Finished(turn)) => {
                if ctx.json {
                    outln!(
                        "{}",
                        json!({"type": "turn", "session_id": turn.session_id.as_str(), "index": turn.index, "run_id": turn.run_id.to_string(),
                               "reply": turn.reply, "intent": turn.intent, "routes": turn.routes})
                    );
                } else if streamed {
                    outln!(); // the reply was printed as it arrived
                } else {
                    outln!("{}", turn.reply);
                }
                return true;
            }
            Ok(_) => {}
            Err(e) => {
                if streamed && !ctx.json {
                    outln!();
                }
                eprintln!("error: the turn failed, nothing of it was saved: {e}");
                return false;
            }
        }
    }
    eprintln!("error: the turn ended without a reply");
    false
}
