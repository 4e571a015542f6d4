//! A run's journal of side effects: operations whose results are recorded, so that a step
//! that runs again (after a crash, a resume or a retry) gets them back instead of doing them
//! again.
//!
//! [`Cx::once`](crate::Cx::once) runs an operation (a payment, an e-mail, a model call),
//! writes its result to the store and only then lets the step go on. When the step runs again
//! — same run, same execution of the step (a loop's next round is another execution) — the
//! same call finds the recorded result and returns it without running the operation.
//!
//! Keys are derived, never random: the run, the step's execution, the caller's name and, for
//! repeated calls with one name in one execution, their order (`charge`, `charge#1`, ...). So a
//! step re-run after a crash makes the same calls under the same keys, and
//! [`Cx::idempotency_key`](crate::Cx::idempotency_key) gives services that dedupe on their
//! side the same key too.
//!
//! Where the guarantee ends: an operation that finished but whose record was not committed
//! when the process died runs again (its record is the last thing written before the step goes
//! on). It gets the same key, so a service that dedupes on it sees one effect. See
//! `docs/store.md` for the window's measured size.
//!
//! A run without a store has no journal: `once` simply runs the operation.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::BoxError;
use crate::id::RunId;
use crate::persist::{JournalEntry, RunStore};

/// Why [`Cx::once`](crate::Cx::once) did not return a result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnceError {
    /// The operation itself failed. Nothing was recorded: when the step runs again, the
    /// operation runs again (with the same key).
    #[error("`{name}` failed: {source}")]
    Failed {
        /// The operation's name.
        name: String,
        /// Its error (downcast it to the operation's own error type).
        source: BoxError,
    },
    /// The operation succeeded but its result could not be recorded (the store failed, or
    /// this process lost the run to another). The step fails; when it runs again, the
    /// operation runs again with the same key.
    #[error(
        "`{key}` ran, but its result could not be recorded in the run's journal: {source}; when the step runs again the operation runs again with the same idempotency key"
    )]
    Record {
        /// The journal key.
        key: String,
        /// The store's error.
        source: BoxError,
    },
    /// The operation's result does not convert to JSON, so it cannot be recorded.
    #[error("the result of `{key}` cannot be recorded: {message}; return a type that serializes to JSON")]
    Unrecordable {
        /// The journal key.
        key: String,
        /// serde's message.
        message: String,
    },
    /// A recorded result does not decode as the type asked for (the code changed since).
    #[error(
        "the recorded result of `{key}` does not decode as {type_name}: {message}; the step's code changed since the result was recorded (keep the type, or use a new operation name)"
    )]
    Decode {
        /// The journal key.
        key: String,
        /// The type asked for.
        type_name: &'static str,
        /// serde's message.
        message: String,
    },
}

/// The journal of one durable run (see the [module docs](self)).
pub(crate) struct Journal {
    /// `None` for a run without a store: calls are counted (keys stay stable) but not recorded.
    store: Option<Arc<dyn RunStore>>,
    run_id: RunId,
    /// The fencing token of this process's claim (set when the run is recorded or claimed).
    fencing: AtomicU64,
    /// Results recorded by earlier attempts of the executions in flight, and by this one.
    recorded: Mutex<HashMap<(u64, String), Arc<str>>>,
    /// Per execution and name: how many calls were made in this attempt.
    calls: Mutex<HashMap<(u64, String), u32>>,
}

impl Journal {
    pub fn new(store: Option<Arc<dyn RunStore>>, run_id: RunId) -> Self {
        Journal { store, run_id, fencing: AtomicU64::new(0), recorded: Mutex::default(), calls: Mutex::default() }
    }

    pub fn set_fencing(&self, fencing: u64) {
        self.fencing.store(fencing, Ordering::Release);
    }

    /// Keeps the results an earlier attempt recorded (loaded when the run resumes).
    pub fn restore(&self, entries: Vec<JournalEntry>) {
        let mut recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
        for e in entries {
            recorded.insert((e.activation, e.key), Arc::from(e.value));
        }
    }

    /// Forgets this attempt's call counts of `execution`, before it runs again (a retry).
    pub fn restart(&self, execution: u64) {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).retain(|(e, _), _| *e != execution);
    }

    /// The key of the next call named `name` in `execution`: `name`, then `name#1`, ...
    pub fn next_key(&self, execution: u64, name: &str) -> String {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let n = calls.entry((execution, name.to_string())).or_insert(0);
        let key = if *n == 0 { name.to_string() } else { format!("{name}#{n}") };
        *n += 1;
        key
    }

    fn recorded(&self, execution: u64, key: &str) -> Option<Arc<str>> {
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner).get(&(execution, key.to_string())).cloned()
    }

    /// Runs `op` once per key (see the [module docs](self)).
    pub async fn once<T, E, Fut>(
        &self,
        execution: u64,
        name: &str,
        op: impl FnOnce(String) -> Fut,
    ) -> Result<T, OnceError>
    where
        T: Serialize + DeserializeOwned,
        E: Into<BoxError>,
        Fut: Future<Output = Result<T, E>>,
    {
        self.once_or_replay(execution, name, op).await.map(|(value, _)| value)
    }

    /// [`once`](Journal::once), saying whether the result was replayed from the journal
    /// (`true`) or the operation ran now (`false`).
    pub async fn once_or_replay<T, E, Fut>(
        &self,
        execution: u64,
        name: &str,
        op: impl FnOnce(String) -> Fut,
    ) -> Result<(T, bool), OnceError>
    where
        T: Serialize + DeserializeOwned,
        E: Into<BoxError>,
        Fut: Future<Output = Result<T, E>>,
    {
        let key = self.next_key(execution, name);
        if let Some(value) = self.recorded(execution, &key) {
            let decoded = serde_json::from_str(&value).map_err(|e| OnceError::Decode {
                key,
                type_name: std::any::type_name::<T>(),
                message: e.to_string(),
            })?;
            return Ok((decoded, true));
        }
        let result = op(idempotency_key(self.run_id, execution, &key))
            .await
            .map_err(|e| OnceError::Failed { name: name.to_string(), source: e.into() })?;
        let Some(store) = &self.store else { return Ok((result, false)) };
        let value = serde_json::to_string(&result)
            .map_err(|e| OnceError::Unrecordable { key: key.clone(), message: e.to_string() })?;
        let entry = JournalEntry { activation: execution, key, value, recorded_at: None };
        let fencing = self.fencing.load(Ordering::Acquire);
        if let Err(source) = store.record_journal(self.run_id, fencing, &entry).await {
            return Err(OnceError::Record { key: entry.key, source });
        }
        self.recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((execution, entry.key), Arc::from(entry.value));
        Ok((result, false))
    }
}

/// The idempotency key of call `key` of `execution` in `run_id`: the same every time that
/// execution runs, different for every other run, execution (loop round) and name.
pub(crate) fn idempotency_key(run_id: RunId, execution: u64, key: &str) -> String {
    format!("{run_id}:{execution}:{key}")
}
