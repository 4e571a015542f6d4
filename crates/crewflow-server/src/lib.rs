//! Serve crewflow flows over HTTP: an [axum] router you mount into your own app.
//!
//! A [`Server`] hosts flows by name, all keeping their runs in one store (SQLite or
//! PostgreSQL, from `crewflow-store`), and conversational flows ([`Server::chat`], a
//! `crewflow-chat` `ChatFlow` with its [`DoubleTexting`] strategy). [`router`] turns it into an
//! `axum::Router` with (among others; `GET /openapi.json` documents them all, and [`routes`]
//! lists them):
//!
//! | Request | Answer |
//! |---|---|
//! | `GET /` | a web page to pick a flow, chat, answer feedback, browse runs and sessions (served without a key under [`tenant_router`]; it asks for one) |
//! | `GET /flows` | the flows served: `{"flows": [{"name", "steps"}]}` |
//! | `POST /flows/{flow}/runs` | starts a run with the JSON body as its inputs: `202 {"run_id", "status": "running"}` as soon as the run is recorded; with `?wait=true`, `200` and the result when it finishes or pauses |
//! | `GET /runs/{id}` | the run: status, output or error, steps, pending feedback |
//! | `GET /runs?flow=&status=&limit=` | runs, newest first |
//! | `GET /runs/{id}/events` | the run's events as server-sent events (`event: <type>`, `data: <JSON>`), from its first, ending with its end (or pause) |
//! | `GET /feedback` | every pause waiting for an answer |
//! | `POST /runs/{id}/feedback` | `{"answer": "..."}` answers a paused run and continues it: `202` at once, or the result with `?wait=true`; `409` when it is not paused or already answered |
//! | `POST /runs/{id}/cancel`, `/resume`, `/fork` | cancel a run driven here; continue a failed, cancelled or orphaned run from its checkpoint; start a new run from a run's state with new inputs |
//! | `GET /flows/{flow}`, `/flows/{flow}/plot` | a flow's steps, triggers and inputs; its picture (HTML, `?format=mermaid`) |
//! | `POST /sessions`, `GET /sessions`, `GET`/`DELETE /sessions/{id}` | sessions of conversational flows: create, list, history (messages, turns, traces), delete |
//! | `POST /sessions/{id}/turns` | `{"message": "..."}`: the turn's reply, or its frames as SSE with `?stream=sse` |
//! | `GET /sessions/{id}/ws` | a WebSocket: send `{"message": "..."}`, receive the same frames as the SSE |
//! | `POST /flows/{flow}/schedules`, `GET /schedules`, `GET`/`DELETE /schedules/{id}` | cron schedules: a run of the flow with fixed inputs at each tick, read in the schedule's time zone (UTC by default), fired once per tick across every server sharing the store |
//!
//! Refusals answer `{"error": {"code", "message"}}`: `400` for bad inputs or answers (the
//! message names the field), `404` for an unknown flow or run, `409` for conflicts, `503` when
//! the store does not answer. Bodies over the size limit answer `413`, bodies that arrive too
//! slowly `408`, answers that do not start in time `504`, and a key over its rate `429`
//! ([`ServerConfig`], [`RateLimit`]). The full reference is `docs/server.md`.
//!
//! ```
//! use crewflow_core::{Cx, FlowBuilder};
//! use crewflow_server::{Server, router};
//! # use serde::{Deserialize, Serialize};
//! #[derive(Default, Serialize, Deserialize)]
//! struct Greeting { name: String }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = crewflow_store::open("sqlite::memory:")?;
//! let hello = FlowBuilder::<Greeting>::new("hello")
//!     .start("greet", |cx: Cx<Greeting>, (): ()| async move {
//!         Ok(format!("hello, {}", cx.state(|g| g.name.clone())))
//!     })
//!     .store(store.clone())
//!     .build()?;
//!
//! let app = axum::Router::new().nest("/crewflow", router(Server::new(store).flow(&hello)?));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("http://{}/crewflow/flows/hello/runs?wait=true", listener.local_addr()?);
//! tokio::spawn(async move { axum::serve(listener, app).await });
//!
//! crewflow_llm::install_crypto_provider(); // reqwest is built without its own TLS provider
//! let reply = reqwest::Client::new().post(url).body(r#"{"name": "Ada"}"#).send().await?;
//! assert_eq!(reply.status(), 200);
//! let run: serde_json::Value = serde_json::from_str(&reply.text().await?)?;
//! assert_eq!((run["status"].as_str(), run["output"].as_str()), (Some("finished"), Some("hello, Ada")));
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! Several tenants, each a `Server` over its own stores, are served behind API keys by
//! [`tenant_router`] ([`Tenants`]): keys given in code, or kept hashed in a store shared by
//! every instance ([`issue_api_key`], [`Tenants::keys_from`]), made and revoked while the
//! servers run.
//!
//! A [`Webhook`] ([`Server::webhook`]) tells a URL of every run's end or pause, signed with
//! HMAC-SHA256 ([`verify_signature`] checks it), kept in the run store until delivered and
//! retried with backoff.
//!
//! Runs started by the server run in the background on the caller's tokio runtime; their
//! events are kept in memory for the most recent runs ([`Server::keep_events`]) so a client
//! that subscribes late still sees them from the first; for other runs (after a restart, or
//! driven by another instance) the stream is told from the store: the stored steps, then the
//! run's end or pause.

mod chat;
mod config;
mod drain;
mod error;
mod flows;
mod frames;
mod hosted;
mod keys;
mod lanes;
mod live;
mod openapi;
mod outbox;
mod page;
mod replay;
mod routes;
mod runs;
mod schedules;
mod sessions;
mod tenants;
mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;

use crewflow_chat::{ChatFlow, Conversational};
use crewflow_core::persist::RunStore;
use crewflow_core::{Flow, FlowState};

pub use config::{RateLimit, ServerConfig};
pub use drain::Drain;
pub use error::ServerError;
pub use keys::{API_KEY_PREFIX, DEFAULT_KEY_REFRESH, IssuedApiKey, NewApiKey, issue_api_key};
pub use lanes::DoubleTexting;
pub use outbox::WorkerWebhooks;
pub use tenants::{Tenants, tenant_router};
pub use webhooks::{DEFAULT_TOLERANCE, SIGNATURE_HEADER, SignatureError, Webhook, sign, verify_signature};

/// The flows a server hosts and the store their runs are kept in. Turn it into a router with
/// [`router`].
pub struct Server {
    store: Arc<dyn RunStore>,
    flows: BTreeMap<String, Arc<dyn hosted::Hosted>>,
    chats: BTreeMap<String, (Arc<dyn chat::HostedChat>, DoubleTexting)>,
    keep_events: usize,
    config: ServerConfig,
    reservation_ttl: std::time::Duration,
    tenant: String,
    scheduling: schedules::Scheduling,
    webhook: Option<Webhook>,
    drain: Drain,
    page: bool,
}

impl Server {
    /// A server whose runs are kept in `store` (every flow it hosts must keep its runs there).
    pub fn new(store: Arc<dyn RunStore>) -> Self {
        Server {
            store,
            flows: BTreeMap::new(),
            chats: BTreeMap::new(),
            keep_events: 1024,
            config: ServerConfig::default(),
            reservation_ttl: std::time::Duration::from_secs(3600),
            tenant: String::new(),
            scheduling: schedules::Scheduling::default(),
            webhook: None,
            drain: Drain::default(),
            page: true,
        }
    }

    /// Hosts `flow` under its name. The flow must keep its runs in the server's store (built
    /// with `FlowBuilder::store(store.clone())`), so that the server can list, show and
    /// resume them; and no other hosted flow may have its name.
    pub fn flow<S: FlowState>(mut self, flow: &Flow<S>) -> Result<Self, ServerError> {
        let name = flow.name().to_string();
        if self.is_taken(&name) {
            return Err(ServerError::DuplicateFlow { flow: name });
        }
        match flow.store() {
            None => return Err(ServerError::FlowWithoutStore { flow: name }),
            Some(own) if !Arc::ptr_eq(own, &self.store) => {
                return Err(ServerError::OtherStore {
                    flow: name,
                    flow_store: own.describe(),
                    server_store: self.store.describe(),
                });
            }
            Some(_) => {}
        }
        self.flows.insert(name, Arc::new(flow.clone()));
        Ok(self)
    }

    /// Hosts a conversational flow under its name: its sessions and turns are served under
    /// `/sessions` (and it is listed, described and drawn under `/flows` like any flow).
    /// `strategy` says what a turn that arrives while the session's previous turn runs does.
    /// Its sessions live in the chat flow's own session store, not in the server's run store.
    pub fn chat<S: Conversational>(mut self, chat: &ChatFlow<S>, strategy: DoubleTexting) -> Result<Self, ServerError> {
        let name = chat.name().to_string();
        if self.is_taken(&name) {
            return Err(ServerError::DuplicateFlow { flow: name });
        }
        self.chats.insert(name, (Arc::new(chat.clone()), strategy));
        Ok(self)
    }

    fn is_taken(&self, name: &str) -> bool {
        self.flows.contains_key(name) || self.chats.contains_key(name)
    }

    /// How many recent runs' events are kept in memory for late SSE subscribers (default
    /// 1024; running runs are always kept).
    pub fn keep_events(mut self, runs: usize) -> Self {
        self.keep_events = runs.max(1);
        self
    }

    /// How long a session created with `POST /sessions` stays reserved while no request names
    /// it and it has no saved turn (default 1 hour): then it lapses, its id answers `404
    /// unknown_session` and may be created again. A session with a saved turn lives in its
    /// store and never lapses.
    pub fn reservation_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.reservation_ttl = ttl;
        self
    }

    /// Body and request limits and CORS ([`ServerConfig`]; its defaults otherwise). Under
    /// [`tenant_router`], [`Tenants::config`] applies instead.
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Sends a signed webhook when a run this server drives finishes, fails, pauses for
    /// feedback or is cancelled ([`Webhook`]). Under [`tenant_router`], each tenant's server
    /// sends its own runs' webhooks. Runs a worker drives (those left queued by
    /// [`run_scheduled(false)`](Server::run_scheduled), say) are told by [`WorkerWebhooks`].
    pub fn webhook(mut self, webhook: Webhook) -> Self {
        self.webhook = Some(webhook);
        self
    }

    /// How often this server looks for due schedule ticks (default 1 s): a tick fires at most
    /// this long after its time. See `docs/server.md` (schedules).
    pub fn schedule_every(mut self, every: std::time::Duration) -> Self {
        self.scheduling.every = every.max(std::time::Duration::from_millis(10));
        self
    }

    /// How late a missed schedule tick may fire (default 1 hour): when no server fired for a
    /// while (all were down, the store was unreachable), only the latest missed tick fires,
    /// and only if it is at most this old when a server finds it; an older one is skipped —
    /// recorded as skipped (`"skipped": true`, no run, in `GET /schedules/{id}`'s fires) — and
    /// the schedule goes on from the next tick. `None` fires it however old. A schedule's own
    /// limit (`max_lateness_seconds` when it is created) outranks this one. Keep it well above
    /// [`schedule_every`](Server::schedule_every). See `docs/server.md` (schedules).
    pub fn max_lateness(mut self, limit: Option<std::time::Duration>) -> Self {
        self.scheduling.max_lateness = limit;
        self
    }

    /// Whether this server fires schedule ticks (default true). Several servers on one store
    /// may all fire: each tick fires once. Off, it still serves the schedule routes.
    pub fn fire_schedules(mut self, fire: bool) -> Self {
        self.scheduling.fire = fire;
        self
    }

    /// Whether the server that fired a tick drives its run (default true), or leaves it queued
    /// for a `crewflow worker` (a [`crewflow_core::Worker`]) to claim. Either way the run is
    /// recorded queued with the tick, in one transaction.
    pub fn run_scheduled(mut self, here: bool) -> Self {
        self.scheduling.run_here = here;
        self
    }

    /// Whether `GET /` serves the web page (default true; `docs/server.md`, "The web page").
    /// Off, `GET /` answers `404 not_found` like any path the router does not serve. Under
    /// [`tenant_router`], [`Tenants::page`] applies instead.
    pub fn page(mut self, serve: bool) -> Self {
        self.page = serve;
        self
    }

    /// A handle to shut this server down gracefully (take it before [`router`]): stop taking
    /// runs and turns, then wait for those going (see [`Drain`]).
    pub fn drain(&self) -> Drain {
        self.drain.clone()
    }

    /// The names of the flows hosted (conversational ones too), by name.
    pub fn flow_names(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self.flows.keys().chain(self.chats.keys()).map(String::as_str).collect();
        names.sort_unstable();
        names.into_iter()
    }
}

/// Every route the [`router`] serves, as `(method, path)` pairs (paths as axum spells them,
/// `/runs/{id}`): the list `GET /openapi.json` documents, checked by the tests.
pub fn routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    routes::ROUTES.iter().copied()
}

/// The server's routes, ready to serve (`axum::serve(listener, router(server))`) or to mount
/// into an app (`Router::new().nest("/crewflow", router(server))`).
///
/// The server's [`ServerConfig`] applies: bodies are read whole within its size and time
/// limits before a handler sees them, requests are answered within its timeout, and CORS is
/// answered for its origins.
pub fn router(server: Server) -> axum::Router {
    let config = server.config.clone();
    config.outer(config.bodies(routes::router(server)))
}
