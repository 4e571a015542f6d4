//! Procedural macros for crewflow. Use them through the `crewflow` crate, which re-exports
//! them; the generated code refers to `::crewflow` (found under another name with
//! `proc-macro-crate`).
//!
//! | attribute | on | means |
//! |---|---|---|
//! | `#[flow(state = S, name = "..", max_steps = N, state_version = N, persist)]` | an impl block | its marked methods are a flow's steps: checked at compile time, built with `FlowBuilder` |
//! | `#[start]`, `#[start(trigger)]` | a method | a step that runs at kickoff (or when `trigger` fires) |
//! | `#[listen(trigger)]` | a method | a step that runs when `trigger` fires: `step`, `Route::Variant`, `"label"`, `or(..)`, `and(..)`, `a \| b`, `a & b` |
//! | `#[router(trigger, routes = [..])]` | a method | a step whose output is a route |
//! | `#[persist]`, `#[blocking]`, `#[retry(attempts = N, ..)]` | a step | checkpoint after it / drive it on the blocking pool / run it again after a failure |
//! | `#[human_feedback(message = "..", emit = [..], ..)]` | a step | ask a person about its output |
//! | `#[derive(Route)]` | an enum | a typed route |
//! | `#[tool]` | an async fn | a tool for agents (`crewflow::agents`) |
//!
//! Every rule a definition must follow comes from `crewflow-rules`, shared with the builder and
//! YAML flows; the compile-fail cases in `tests/ui/` pin the messages. Read next: the `crewflow`
//! crate's root (a runnable tour) and `docs/architecture.md` (*Macros*).

mod feedback;
mod flow;
mod retry;
mod route;
mod tool;
mod trigger;
mod typecheck;

use proc_macro::TokenStream;
use proc_macro_crate::{FoundCrate, crate_name};
use quote::quote;

/// The path of the `crewflow` crate as the user named it.
fn krate() -> proc_macro2::TokenStream {
    match crate_name("crewflow") {
        Ok(FoundCrate::Name(name)) if name != "crewflow" => {
            let ident = syn::Ident::new(&name, proc_macro2::Span::call_site());
            quote!(::#ident)
        }
        _ => quote!(::crewflow),
    }
}

/// Makes an impl block a flow: its `#[start]`, `#[listen(..)]` and `#[router(..)]` async
/// methods are the steps. See the `crewflow` crate documentation.
#[proc_macro_attribute]
pub fn flow(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = match flow::FlowArgs::parse(args.into()) {
        Ok(a) => a,
        Err(e) => return e.to_compile_error().into(),
    };
    let item = match syn::parse::<syn::ItemImpl>(item) {
        Ok(i) => i,
        Err(e) => {
            return syn::Error::new(
                e.span(),
                "#[flow] goes on an impl block: `#[flow(state = MyState)] impl MyFlow { .. }`",
            )
            .to_compile_error()
            .into();
        }
    };
    flow::expand(args, item, &krate()).into()
}

/// Derives `Route` (and `Serialize`/`Deserialize` as the label) for an enum of unit variants.
/// Variant options: `#[route(terminal)]` (may go unhandled), `#[route(rename = "label")]`.
#[proc_macro_derive(Route, attributes(route))]
pub fn derive_route(item: TokenStream) -> TokenStream {
    let input = match syn::parse::<syn::DeriveInput>(item) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error().into(),
    };
    match route::expand(input, &krate()) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn outside_flow(attr: &str, item: TokenStream) -> TokenStream {
    let msg = format!("#[{attr}] marks a step: use it on an async method inside an impl block marked #[flow(..)]");
    let item = proc_macro2::TokenStream::from(item);
    quote!(::core::compile_error!(#msg); #item).into()
}

/// Marks a start step. Only meaningful inside a `#[flow]` impl block.
#[proc_macro_attribute]
pub fn start(_args: TokenStream, item: TokenStream) -> TokenStream {
    outside_flow("start", item)
}

/// Marks a listener step. Only meaningful inside a `#[flow]` impl block.
#[proc_macro_attribute]
pub fn listen(_args: TokenStream, item: TokenStream) -> TokenStream {
    outside_flow("listen", item)
}

/// Runs this step on tokio's blocking pool (`FlowBuilder::blocking`): for bodies that call
/// blocking code, so that they neither stall the runtime nor serialize with sibling steps. Only
/// meaningful on a step inside a `#[flow]` impl block.
#[proc_macro_attribute]
pub fn blocking(_args: TokenStream, item: TokenStream) -> TokenStream {
    outside_flow("blocking", item)
}

/// Runs this step again after a failure: `#[retry(attempts = 3)]`, optionally with `backoff =
/// <Duration>`, `max_backoff = <Duration>` and `when = <fn(&Error) -> bool>` (the builder's
/// `Retry`). A journaled operation that completed is not repeated by a retry. Only meaningful on a
/// step inside a `#[flow]` impl block.
#[proc_macro_attribute]
pub fn retry(_args: TokenStream, item: TokenStream) -> TokenStream {
    outside_flow("retry", item)
}

/// Checkpoints after this step (only marked steps checkpoint, when any is marked). Only
/// meaningful on a step inside a `#[flow]` impl block. With `#[flow(persist)]` every step
/// checkpoints already: the two add up, and the mark changes nothing.
#[proc_macro_attribute]
pub fn persist(_args: TokenStream, item: TokenStream) -> TokenStream {
    outside_flow("persist", item)
}

/// Asks a person for feedback on the step's output after its body runs:
/// `#[human_feedback(message = "Approve?", emit = ["approved", "rejected"], default_outcome = "rejected",
/// llm = self.llm.clone(), provider = DeferredFeedback, metadata = json!({..}),
/// learn = self.lessons.clone(), learn_source = "hitl", learn_strict = true)]`. `learn` takes a
/// `FeedbackLearner` (e.g. `crewflow::memory::Lessons`); `learn_source` and `learn_strict` need
/// it. Only meaningful on a step inside a `#[flow]` impl block; see `crewflow::feedback`.
#[proc_macro_attribute]
pub fn human_feedback(_args: TokenStream, item: TokenStream) -> TokenStream {
    outside_flow("human_feedback", item)
}

/// Marks a router step. Only meaningful inside a `#[flow]` impl block.
#[proc_macro_attribute]
pub fn router(_args: TokenStream, item: TokenStream) -> TokenStream {
    outside_flow("router", item)
}

/// Makes an async fn a tool an agent can call (`crewflow-agents`): its doc comment is the
/// description the model reads, its parameters are the tool's arguments (their JSON Schema is
/// derived from their types). It keeps the fn and adds a unit struct named in CamelCase
/// (`web_search` -> `WebSearch`) that implements `Tool`. `#[tool(name = "...")]` sets the
/// tool's name (the fn's name by default). The fn returns `Result<T, E>` (`T: Serialize`,
/// `E: Display`), `String` or a JSON value. See `crewflow::agents`.
#[proc_macro_attribute]
pub fn tool(args: TokenStream, item: TokenStream) -> TokenStream {
    match tool::expand(args.into(), item.into()) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}
