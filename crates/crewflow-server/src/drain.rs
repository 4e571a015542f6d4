//! Draining a server at shutdown: stop taking work, wait for the runs and turns it drives.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use crate::error::ApiError;

/// A handle to shut a [`Server`](crate::Server) down gracefully, taken with
/// [`Server::drain`](crate::Server::drain) before the server becomes a router.
///
/// After [`begin`](Drain::begin), requests that would start work — a run (`POST
/// /flows/{flow}/runs`), an answer to a pause, a resume, a fork, a turn, a session's WebSocket —
/// answer `503 shutting_down`; everything else (reads, event streams, cancels) is still served.
/// [`idle`](Drain::idle) resolves once no run or turn this server started is still going; the
/// caller decides how long to wait for it. A run still going when the process exits is not
/// lost: its checkpoints are in the store, and `crewflow runs resume`, `POST
/// /runs/{id}/resume` on another instance, or a worker (once its owner is seen dead on this
/// host, or its lease lapses) continues it. A turn still going is lost (nothing of an unfinished
/// turn is saved), its client sees the connection close.
///
/// ```no_run
/// # async fn demo(
/// #     server: crewflow_server::Server,
/// #     listener: tokio::net::TcpListener,
/// #     signal: impl std::future::Future<Output = ()> + Send + 'static,
/// # ) -> std::io::Result<()> {
/// use std::time::Duration;
///
/// let drain = server.drain();
/// let stop = drain.clone();
/// let serving = axum::serve(listener, crewflow_server::router(server)).with_graceful_shutdown(async move {
///     signal.await; // SIGTERM, Ctrl-C: tokio::signal
///     stop.begin();
/// });
/// serving.await?;
/// // up to 30 s for the runs in flight; the rest stay checkpointed for another instance
/// if tokio::time::timeout(Duration::from_secs(30), drain.idle()).await.is_err() {
///     eprintln!("left running: {:?}", drain.in_flight());
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

struct Inner {
    draining: AtomicBool,
    next: AtomicU64,
    /// What runs, by ticket: `run <id>` or `turn <id>`.
    running: Mutex<BTreeMap<u64, String>>,
    /// How many entries `running` holds, for [`Drain::idle`].
    count: watch::Sender<usize>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            draining: AtomicBool::new(false),
            next: AtomicU64::new(0),
            running: Mutex::new(BTreeMap::new()),
            count: watch::channel(0).0,
        }
    }
}

impl Drain {
    /// Stops taking work: from now on, requests that would start a run or a turn answer `503`.
    pub fn begin(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Whether [`begin`](Drain::begin) was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// The runs and turns going now, as `run <id>` / `turn <id>`, oldest first.
    pub fn in_flight(&self) -> Vec<String> {
        self.lock().values().cloned().collect()
    }

    /// Resolves when no run or turn this server started is going (at once if none is).
    pub async fn idle(&self) {
        let mut count = self.inner.count.subscribe();
        // The sender lives in `self`: `wait_for` cannot fail while it is borrowed here.
        let _ = count.wait_for(|n| *n == 0).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, String>> {
        self.inner.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `what` as going until the returned guard is dropped.
    pub(crate) fn track(&self, what: String) -> Tracked {
        let ticket = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let mut running = self.lock();
        running.insert(ticket, what);
        self.inner.count.send_replace(running.len());
        Tracked { drain: self.clone(), ticket }
    }
}

/// A run or turn counted by its [`Drain`] while it goes.
pub(crate) struct Tracked {
    drain: Drain,
    ticket: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut running = self.drain.lock();
        running.remove(&self.ticket);
        self.drain.inner.count.send_replace(running.len());
    }
}

/// Refuses requests that would start work once the server drains (see [`Drain`]).
pub(crate) async fn refuse_work_when_draining(drain: Drain, request: Request, next: Next) -> Response {
    if drain.is_draining() && starts_work(request.method(), request.uri().path()) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "this server is shutting down and takes no new runs or turns; send the request to another instance, or again once it is back",
        )
        .into_response();
    }
    next.run(request).await
}

fn starts_work(method: &Method, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    match *method {
        Method::POST => {
            let last = path.rsplit('/').next().unwrap_or("");
            matches!(last, "runs" | "feedback" | "resume" | "fork" | "turns") && path.matches('/').count() == 3
        }
        Method::GET => path.starts_with("/sessions/") && path.ends_with("/ws"),
        _ => false,
    }
}
