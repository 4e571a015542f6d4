//! Runs this server drives: their events so far (for SSE subscribers who come late) and how
//! they ended, kept in memory for the most recent runs.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use crewflow_core::{Canceller, RunId};
use tokio::sync::watch;

use crate::frames::Frame;
use crate::hosted::Outcome;
use crate::webhooks::Notifier;

/// How a driven run came back.
#[derive(Clone, Debug)]
pub(crate) enum Ended {
    Ok(Box<Outcome>),
    Err {
        cancelled: bool,
        message: String,
        refused: bool,
        /// The status and code a waiting request answers with, were it refused.
        status: axum::http::StatusCode,
        code: &'static str,
    },
}

/// One run this server drives (or drove).
pub(crate) struct Live {
    pub flow: String,
    run_id: RunId,
    /// Told of each end (the server's webhook), if any.
    notifier: Option<Arc<Notifier>>,
    inner: Mutex<LiveInner>,
    /// Bumped on every new frame and at the end.
    tick: watch::Sender<u64>,
}

struct LiveInner {
    frames: Vec<Frame>,
    ended: Option<Ended>,
    /// Cancels the part of the run being driven now.
    cancel: Option<Canceller>,
    /// How many frames there were when the part being driven now began (a run continued
    /// after a pause keeps its earlier frames).
    begun_at: usize,
}

impl Live {
    fn new(flow: String, run_id: RunId, notifier: Option<Arc<Notifier>>) -> Self {
        let (tick, _) = watch::channel(0);
        Live {
            flow,
            run_id,
            notifier,
            inner: Mutex::new(LiveInner { frames: Vec::new(), ended: None, cancel: None, begun_at: 0 }),
            tick,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one frame (an event serialized once for every subscriber).
    pub fn push(&self, frame: Frame) {
        self.lock().frames.push(frame);
        self.tick.send_modify(|t| *t += 1);
    }

    pub fn end(&self, ended: Ended) {
        if let Some(notifier) = &self.notifier {
            notifier.ended(self.run_id, &self.flow, &ended);
        }
        let mut inner = self.lock();
        inner.ended = Some(ended);
        inner.cancel = None;
        drop(inner);
        self.tick.send_modify(|t| *t += 1);
    }

    pub fn set_cancel(&self, cancel: Canceller) {
        self.lock().cancel = Some(cancel);
    }

    /// Asks the run to stop; `false` when it is not being driven here (ended, or paused).
    pub fn cancel(&self) -> bool {
        let inner = self.lock();
        match (&inner.ended, &inner.cancel) {
            (None, Some(cancel)) => {
                cancel.cancel();
                true
            }
            _ => false,
        }
    }

    pub fn ended(&self) -> Option<Ended> {
        self.lock().ended.clone()
    }

    /// Frames from `from` on, and whether the run has ended.
    pub fn frames_from(&self, from: usize) -> (Vec<Frame>, bool) {
        let inner = self.lock();
        (inner.frames.get(from..).map(<[_]>::to_vec).unwrap_or_default(), inner.ended.is_some())
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
    }

    /// Waits until the part of the run being driven now has its first frame (a run's first
    /// event comes after its record or its claim is in the store) or has ended; `Some` when it
    /// ended before any frame: it was not recorded, or its claim was refused.
    pub async fn recorded(&self) -> Option<Ended> {
        let mut rx = self.subscribe();
        loop {
            rx.borrow_and_update();
            {
                let inner = self.lock();
                if inner.frames.len() > inner.begun_at {
                    return None;
                }
                if let Some(ended) = &inner.ended {
                    return Some(ended.clone());
                }
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Waits until the run ends.
    pub async fn wait(&self) -> Ended {
        let mut rx = self.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(ended) = self.ended() {
                return ended;
            }
            if rx.changed().await.is_err() {
                return Ended::Err {
                    cancelled: false,
                    message: "the run's task went away".into(),
                    refused: false,
                    status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    code: "run_failed",
                };
            }
        }
    }
}

/// The runs this server drives, and the most recent ones it drove.
pub(crate) struct Table {
    inner: Mutex<TableInner>,
    keep: usize,
    notifier: Option<Arc<Notifier>>,
}

struct TableInner {
    runs: HashMap<RunId, Arc<Live>>,
    order: VecDeque<RunId>,
}

impl Table {
    pub fn new(keep: usize) -> Self {
        Table { inner: Mutex::new(TableInner { runs: HashMap::new(), order: VecDeque::new() }), keep, notifier: None }
    }

    /// Tells `notifier` of every run's end (and pause).
    pub fn notify(mut self, notifier: Option<Arc<Notifier>>) -> Self {
        self.notifier = notifier;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TableInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, run_id: RunId) -> Option<Arc<Live>> {
        self.lock().runs.get(&run_id).cloned()
    }

    /// Records a run being driven (again, after a pause: its events so far are kept); `None` if
    /// this server drives it already (the check and the insert are one step, so two answers to
    /// one pause never both go through).
    pub fn begin(&self, run_id: RunId, flow: &str) -> Option<Arc<Live>> {
        let mut inner = self.lock();
        if inner.runs.get(&run_id).is_some_and(|live| live.ended().is_none()) {
            return None;
        }
        // A run continued after a pause keeps its events so far: its stream tells the whole run.
        if let Some(live) = inner.runs.get(&run_id).cloned() {
            let mut part = live.lock();
            part.ended = None;
            part.begun_at = part.frames.len();
            drop(part);
            live.tick.send_modify(|t| *t += 1);
            return Some(live);
        }
        let live = Arc::new(Live::new(flow.to_string(), run_id, self.notifier.clone()));
        inner.runs.insert(run_id, live.clone());
        inner.order.push_back(run_id);
        // Forget the oldest ended runs beyond what is kept (running ones always stay).
        let mut scanned = 0;
        while inner.order.len() > self.keep && scanned < inner.order.len() {
            scanned += 1;
            let Some(oldest) = inner.order.pop_front() else { break };
            if inner.runs.get(&oldest).is_some_and(|l| l.ended().is_none()) {
                inner.order.push_back(oldest);
            } else {
                inner.runs.remove(&oldest);
            }
        }
        Some(live)
    }
}
