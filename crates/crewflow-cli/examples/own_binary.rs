//! A binary of your own with the `crewflow` command line built in, for its compiled flows:
//!
//! ```text
//! cargo run -p crewflow-cli --example own_binary -- run greet --input name=Ada
//! cargo run -p crewflow-cli --example own_binary -- plot greet --format mermaid
//! CREWFLOW_DB=sqlite://greet.db cargo run -p crewflow-cli --example own_binary -- runs list
//! ```
//!
//! With `$CREWFLOW_DB` set, the flow keeps its runs in that store (so `runs list`, `trace`,
//! `runs fork` and `worker` see them); without it, runs live in memory.

use std::process::ExitCode;

use crewflow_core::trigger::label;
use crewflow_core::{Cx, Flow, FlowBuilder};
use serde_json::{Map, Value};

type State = Map<String, Value>;

/// `greet`: `hello` greets `name`, `check` routes long names apart, then `done` or `long`.
fn greet() -> Result<Flow<State>, crewflow_core::Error> {
    let mut builder = FlowBuilder::<State>::new("greet")
        .start("hello", |cx: Cx<State>, (): ()| async move {
            let name = cx.state(|s| s.get("name").and_then(Value::as_str).unwrap_or("world").to_string());
            Ok(format!("hello, {name}"))
        })
        .router("check", "hello", |_cx: Cx<State>, greeting: String| async move {
            Ok(if greeting.len() > 20 { "long" } else { "short" }.to_string())
        })
        .routes(["short", "long"])
        .listen("done", label("short"), |_cx: Cx<State>, (): ()| async { Ok("greeted".to_string()) })
        .listen("long", label("long"), |_cx: Cx<State>, (): ()| async { Ok("greeted at length".to_string()) });
    if let Some(url) = std::env::var("CREWFLOW_DB").ok().filter(|u| !u.is_empty()) {
        let store = crewflow_store::open(&url).map_err(|e| crewflow_core::Error::Internal(e.to_string()))?;
        builder = builder.store_arc(store);
    }
    builder.build()
}

/// Mounts `greet` into the crewflow command line and runs this process's arguments.
pub fn main() -> ExitCode {
    match greet() {
        Ok(flow) => crewflow_cli::App::new().flow(&flow).run(),
        Err(e) => {
            eprintln!("error: the flow `greet` does not build: {e}");
            ExitCode::from(2)
        }
    }
}
