//! How a PostgreSQL store uses its connections: at most so many for queries and so many for
//! holding session locks, and idle ones closed after a while — so that a store per tenant (or
//! per anything) costs the database nothing while it is not used.

use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::Pool;

use crate::StoreError;

/// The connections of a [`PostgresStore`](crate::PostgresStore)
/// ([`connect_lazy_with`](crate::PostgresStore::connect_lazy_with), or options of its URL:
/// `postgres://app@db/flows?pool_size=4&lock_pool_size=8&idle_timeout=60s`).
///
/// A store opens connections as it needs them, up to [`queries`](PoolOptions::queries) for
/// its statements and [`locks`](PoolOptions::locks) for holding conversation sessions' locks
/// (a turn holds one for its whole length), and closes those left unused for
/// [`idle_timeout`](PoolOptions::idle_timeout). Many stores on one database — one per tenant
/// of a run server — then hold connections only while they are used: mind PostgreSQL's
/// `max_connections` (100 by default) against the sum of the stores' busiest moments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolOptions {
    queries: usize,
    locks: usize,
    idle_timeout: Option<Duration>,
}

impl Default for PoolOptions {
    /// 16 connections for queries, 32 for session locks, idle ones closed after 10 minutes.
    fn default() -> Self {
        PoolOptions { queries: 16, locks: 32, idle_timeout: Some(Duration::from_secs(600)) }
    }
}

impl PoolOptions {
    /// The defaults ([`PoolOptions::default`]).
    pub fn new() -> Self {
        PoolOptions::default()
    }

    /// At most `n` connections for statements (URL option `pool_size`; 16 by default). More
    /// callers at once wait for one to free up (30 s at most).
    pub fn queries(mut self, n: usize) -> Self {
        self.queries = n;
        self
    }

    /// At most `n` connections holding session locks (URL option `lock_pool_size`; 32 by
    /// default): as many sessions of this process can be in a turn at once; more wait up to
    /// their lock timeout, then get `SessionBusy`.
    pub fn locks(mut self, n: usize) -> Self {
        self.locks = n;
        self
    }

    /// Closes a connection left unused this long (URL option `idle_timeout=60s`, or `none` to
    /// keep them; 10 minutes by default). Checked every half of it, by a task of the runtime
    /// the store first connects on.
    pub fn idle_timeout(mut self, after: Option<Duration>) -> Self {
        self.idle_timeout = after;
        self
    }

    pub(crate) fn check(&self, url: &str) -> Result<(), StoreError> {
        let invalid = |problem: String| StoreError::InvalidOption { url: url.to_string(), problem };
        for (name, n) in [("pool_size", self.queries), ("lock_pool_size", self.locks)] {
            if !(1..=10_000).contains(&n) {
                return Err(invalid(format!("`{name}={n}`: give from 1 to 10000 connections")));
            }
        }
        if self.idle_timeout.is_some_and(|t| t < Duration::from_millis(10)) {
            return Err(invalid("`idle_timeout` under 10 ms would close connections as they are made; give `idle_timeout=60s` or `none`".into()));
        }
        Ok(())
    }

    pub(crate) fn queries_max(&self) -> usize {
        self.queries
    }

    pub(crate) fn locks_max(&self) -> usize {
        self.locks
    }

    pub(crate) fn idle(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// Takes crewflow's options out of a URL's query: the URL left for the driver, and the
    /// options. `shown` names the URL in errors (without its password).
    pub(crate) fn from_url(url: &str, shown: &str) -> Result<(String, PoolOptions), StoreError> {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), PoolOptions::default()));
        };
        let invalid = |problem: String| StoreError::InvalidOption { url: shown.to_string(), problem };
        let mut options = PoolOptions::default();
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let count = || {
                value.parse::<usize>().map_err(|_| invalid(format!("`{key}={value}` is not a number of connections")))
            };
            match key {
                "pool_size" => options.queries = count()?,
                "lock_pool_size" => options.locks = count()?,
                "idle_timeout" if value.eq_ignore_ascii_case("none") => options.idle_timeout = None,
                "idle_timeout" => {
                    let after = humantime::parse_duration(value).map_err(|e| {
                        invalid(format!("`idle_timeout={value}`: {e}; give a span (`60s`, `10m`) or `none`"))
                    })?;
                    options.idle_timeout = Some(after);
                }
                _ => rest.push(pair),
            }
        }
        options.check(shown)?;
        let url = if rest.is_empty() { base.to_string() } else { format!("{base}?{}", rest.join("&")) };
        Ok((url, options))
    }
}

/// Closes, every half of `idle`, the connections of `pools` unused for `idle`, until the store
/// is dropped (`owner` gone).
pub(crate) fn close_idle<T: Send + Sync + 'static>(owner: Weak<T>, pools: fn(&T) -> [&Pool; 2], idle: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        let every = (idle / 2).max(Duration::from_millis(5));
        loop {
            tokio::time::sleep(every).await;
            let Some(owner): Option<Arc<T>> = owner.upgrade() else { return };
            for pool in pools(&owner) {
                // Only idle connections are looked at; one in use stays until it is returned.
                pool.retain(|_, metrics| metrics.last_used() < idle);
            }
        }
    });
}
