//! Causal bookkeeping that lets the frontier tell loop iterations ("rounds") apart using
//! causality only, never timing.
//!
//! An event *e comes round a loop after* an earlier event *p* (from the point of view of a
//! listener *L*) when e descends from p and the causal chain from p to e runs a step that is in
//! p's causal past, or L itself. Deciding that for arbitrary pairs would need the whole causal
//! graph; instead, whenever a listener needs the answer later (it records `and` progress from p,
//! or an `or` fires on p), it opens a [`Watch`] on p. Every activation that descends from p
//! carries a [`Mark`] for that watch, and the mark flips to `round` the moment the chain passes
//! through one of the watch's round steps. A watch is closed as soon as its listener no longer
//! needs it, so the number of marks an event carries stays bounded by the number of open
//! joins, not by the length of the run.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::EventId;
use super::vec_map::VecMap;

/// A set of step indexes, as a bitset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StepSet(SmallVec<[u64; 2]>);

impl StepSet {
    pub fn insert(&mut self, step: u32) {
        let (word, bit) = ((step / 64) as usize, step % 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << bit;
    }

    pub fn contains(&self, step: u32) -> bool {
        let (word, bit) = ((step / 64) as usize, step % 64);
        self.0.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    pub fn union_with(&mut self, other: &StepSet) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a |= *b;
        }
    }
}

/// A handle on an open watch. The generation makes a closed-and-reused slot unequal to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct WatchId {
    slot: u32,
    generation: u32,
}

/// An event's relation to one open watch: it descends from the watch's origin, and `round`
/// says whether the chain came round a loop on the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Mark {
    pub watch: WatchId,
    pub round: bool,
}

/// What an activation (and the events it produces) knows about its causal past.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Lineage {
    /// Steps with an activation in the causal past, this one's own step included.
    pub past: StepSet,
    /// Open watches whose origin is a causal ancestor.
    pub marks: SmallVec<[Mark; 2]>,
    /// The length of the longest causal chain from a start (starts have depth 1).
    pub depth: u32,
    /// A hash of the causal structure (steps and the keys of their triggers), never of timing:
    /// the last tie-breaker when choosing a run's final output.
    pub key: u64,
}

impl Lineage {
    /// Whether this event came round a loop after the origin of `watch`.
    pub fn came_round(&self, watch: WatchId) -> bool {
        self.marks.iter().any(|m| m.watch == watch && m.round)
    }
}

/// Builds the lineage of a new activation of `step` from the lineages of the events that
/// triggered it.
pub(crate) fn derive<'a>(
    step: u32,
    triggers: impl Iterator<Item = (EventId, &'a Lineage)>,
    watches: &Watches,
) -> Lineage {
    let mut out = Lineage { key: mix(0x9e37_79b9_7f4a_7c15, u64::from(step)), ..Lineage::default() };
    let add = |marks: &mut SmallVec<[Mark; 2]>, mark: Mark| {
        if watches.get(mark.watch).is_none() {
            return; // closed since: irrelevant
        }
        match marks.iter_mut().find(|m| m.watch == mark.watch) {
            Some(m) => m.round |= mark.round,
            None => marks.push(mark),
        }
    };
    for (event, lineage) in triggers {
        out.past.union_with(&lineage.past);
        for m in &lineage.marks {
            add(&mut out.marks, *m);
        }
        for w in watches.originating_at(event) {
            add(&mut out.marks, Mark { watch: *w, round: false });
        }
        out.depth = out.depth.max(lineage.depth);
        out.key = mix(out.key, lineage.key ^ u64::from(event.is_label()));
    }
    out.past.insert(step);
    out.depth += 1;
    for m in out.marks.iter_mut().filter(|m| !m.round) {
        if watches.get(m.watch).is_some_and(|w| w.round_steps.contains(step)) {
            m.round = true;
        }
    }
    out
}

fn mix(a: u64, b: u64) -> u64 {
    let x = (a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left(29);
    x.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (x >> 31)
}

/// An open watch: the event it watches from, and the steps that, when re-run downstream of it,
/// mean a loop came round.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Watch {
    pub origin: EventId,
    pub round_steps: StepSet,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Slot {
    generation: u32,
    watch: Option<Watch>,
}

/// The open watches of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Watches {
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_origin: VecMap<EventId, SmallVec<[WatchId; 2]>>,
}

impl Watches {
    /// Opens a watch on `origin` for `listener`: the round steps are the origin's causal past
    /// plus the listener.
    pub fn open(&mut self, origin: EventId, listener: u32, origin_past: &StepSet) -> WatchId {
        let mut round_steps = origin_past.clone();
        round_steps.insert(listener);
        let watch = Watch { origin, round_steps };
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        s.watch = Some(watch);
        let id = WatchId { slot, generation: s.generation };
        match self.by_origin.get_mut(&origin) {
            Some(list) => list.push(id),
            None => self.by_origin.insert(origin, smallvec::smallvec![id]),
        }
        id
    }

    pub fn close(&mut self, id: WatchId) {
        let Some(s) = self.slots.get_mut(id.slot as usize) else {
            return;
        };
        if s.generation != id.generation {
            return;
        }
        if let Some(w) = s.watch.take() {
            s.generation = s.generation.wrapping_add(1);
            self.free.push(id.slot);
            if let Some(list) = self.by_origin.get_mut(&w.origin) {
                list.retain(|x| *x != id);
                if list.is_empty() {
                    self.by_origin.remove(&w.origin);
                }
            }
        }
    }

    pub fn get(&self, id: WatchId) -> Option<&Watch> {
        self.slots.get(id.slot as usize).filter(|s| s.generation == id.generation).and_then(|s| s.watch.as_ref())
    }

    pub fn originating_at(&self, event: EventId) -> impl Iterator<Item = &WatchId> {
        self.by_origin.get(&event).into_iter().flatten()
    }

    pub fn open_count(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}
