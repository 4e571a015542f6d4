//! Double-texting: what a turn that arrives while its session's previous turn runs does.
//!
//! Each session with a turn running or waiting has a lane: its turns in arrival order, the
//! first one running. Arrival is recorded synchronously when the request comes in, so the
//! order is the order the server received the turns, whatever the scheduler does next. A lane
//! exists only while it holds a turn.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// What a turn that arrives while the session's previous turn runs does; chosen per flow
/// ([`Server::chat`](crate::Server::chat)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DoubleTexting {
    /// Refuse it: `409 turn_running`, naming the running turn's id.
    Reject,
    /// Queue it: it runs after the turns before it, in the order they arrived.
    #[default]
    Enqueue,
    /// Cancel the running turn (nothing of it is saved: the session is as before it), then run
    /// this one.
    Interrupt,
}

impl DoubleTexting {
    /// The strategy's name, as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            DoubleTexting::Reject => "reject",
            DoubleTexting::Enqueue => "enqueue",
            DoubleTexting::Interrupt => "interrupt",
        }
    }
}

struct Entry {
    turn_id: String,
    /// Set to true to interrupt this turn.
    interrupt: watch::Sender<bool>,
}

#[derive(Default)]
struct Lane {
    turns: VecDeque<Entry>,
}

/// The lanes of every session with a turn running or waiting.
#[derive(Default)]
pub(crate) struct Lanes {
    map: Mutex<HashMap<String, Lane>>,
    /// Bumped whenever a turn leaves a lane, so waiting turns look again.
    moved: watch::Sender<u64>,
}

/// A turn's place in its session's lane; leaving (drop) lets the next one run.
pub(crate) struct Ticket {
    lanes: Arc<Lanes>,
    key: String,
    pub turn_id: String,
    /// How many turns were ahead when it arrived.
    pub ahead: usize,
    interrupted: watch::Receiver<bool>,
}

impl Lanes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lane>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a turn's arrival. With [`DoubleTexting::Reject`], a session that has a turn
    /// already gives the running turn's id instead.
    pub fn enter(self: &Arc<Self>, key: String, turn_id: String, strategy: DoubleTexting) -> Result<Ticket, String> {
        let mut map = self.lock();
        let lane = map.entry(key.clone()).or_default();
        if let Some(running) = lane.turns.front() {
            match strategy {
                DoubleTexting::Reject => return Err(running.turn_id.clone()),
                DoubleTexting::Interrupt => {
                    for entry in &lane.turns {
                        entry.interrupt.send_replace(true);
                    }
                }
                DoubleTexting::Enqueue => {}
            }
        }
        let (interrupt, interrupted) = watch::channel(false);
        let ahead = lane.turns.len();
        lane.turns.push_back(Entry { turn_id: turn_id.clone(), interrupt });
        Ok(Ticket { lanes: self.clone(), key, turn_id, ahead, interrupted })
    }

    fn is_front(&self, key: &str, turn_id: &str) -> bool {
        self.lock().get(key).and_then(|l| l.turns.front()).is_some_and(|e| e.turn_id == turn_id)
    }

    /// How many turns are running or waiting in the session's lane.
    pub fn len(&self, key: &str) -> usize {
        self.lock().get(key).map_or(0, |l| l.turns.len())
    }
}

impl Ticket {
    /// Waits until every turn that arrived before this one has left.
    pub async fn wait_turn(&self) {
        let mut moved = self.lanes.moved.subscribe();
        loop {
            moved.borrow_and_update();
            if self.lanes.is_front(&self.key, &self.turn_id) {
                return;
            }
            if moved.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resolves when a later turn interrupts this one (never, unless the flow interrupts).
    pub async fn interrupted(&self) {
        let mut rx = self.interrupted.clone();
        if rx.wait_for(|flag| *flag).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut map = self.lanes.lock();
        if let Some(lane) = map.get_mut(&self.key) {
            lane.turns.retain(|e| e.turn_id != self.turn_id);
            if lane.turns.is_empty() {
                map.remove(&self.key);
            }
        }
        drop(map);
        self.lanes.moved.send_modify(|n| *n += 1);
    }
}
