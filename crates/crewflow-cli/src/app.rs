//! [`App`]: the `crewflow` command line inside a user's own binary, with its compiled flows.

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;

use crewflow_chat::{ChatFlow, Conversational};
use crewflow_core::{Flow, FlowState};

use crate::chat::AnyChat;
use crate::target::AnyFlow;

/// The `crewflow` command line for a binary of your own: the same subcommands (`run`, `plot`,
/// `runs`, `feedback`, `worker`, `trace`, …), and wherever they take a flow file they also
/// take the name of a flow mounted here.
///
/// ```no_run
/// # use crewflow_core::FlowBuilder;
/// # type State = serde_json::Map<String, serde_json::Value>;
/// fn main() -> std::process::ExitCode {
///     let flow = FlowBuilder::<State>::new("greet")
///         .start("hello", |_cx, (): ()| async { Ok("hello".to_string()) })
///         .build()
///         .expect("the flow is well formed");
///     // `my-binary run greet --input name=ada`, `my-binary plot greet`, …
///     crewflow_cli::App::new().flow(&flow).run()
/// }
/// ```
///
/// A mounted flow keeps its runs in the store it was built with
/// (`FlowBuilder::store`); `--store` (or [`App::default_store`]) says where the commands that
/// read stored runs (`runs list`, `trace`, …) and the worker look.
#[derive(Clone, Default)]
pub struct App {
    pub(crate) flows: Vec<Arc<dyn AnyFlow>>,
    pub(crate) chats: Vec<Arc<dyn AnyChat>>,
    pub(crate) default_store: Option<String>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.flows.iter().map(|f| f.name()).collect();
        let chats: Vec<&str> = self.chats.iter().map(|c| c.name()).collect();
        f.debug_struct("App")
            .field("flows", &names)
            .field("chats", &chats)
            .field("default_store", &self.default_store)
            .finish()
    }
}

impl App {
    /// The command line with no compiled flows (what the `crewflow` binary runs).
    pub fn new() -> App {
        App::default()
    }

    /// Mounts a compiled flow: commands accept its name where they take a flow file. A flow
    /// mounted twice under one name: the last one wins.
    pub fn flow<S: FlowState>(mut self, flow: &Flow<S>) -> App {
        self.flows.retain(|f| f.name() != flow.name());
        self.flows.push(Arc::new(flow.clone()));
        self
    }

    /// Mounts a conversational flow: `chat NAME` holds a conversation with it in the terminal,
    /// and `serve` hosts its sessions. Its sessions stay in the store it was built with
    /// (`ChatFlow::new`). A chat flow mounted twice under one name: the last one wins.
    pub fn chat<S: Conversational>(mut self, chat: &ChatFlow<S>) -> App {
        self.chats.retain(|c| c.name() != chat.name());
        self.chats.push(Arc::new(chat.clone()));
        self
    }

    /// The store URL used when neither `--store` nor `$CREWFLOW_DB` names one (else
    /// `crewflow.db`).
    pub fn default_store(mut self, url: impl Into<String>) -> App {
        self.default_store = Some(url.into());
        self
    }

    /// Runs this process's command line and returns its exit status.
    pub fn run(self) -> ExitCode {
        self.run_from(std::env::args_os())
    }

    /// Runs the given command line (its first item is the program's name).
    pub fn run_from<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        crate::run_cli(self, args)
    }
}
