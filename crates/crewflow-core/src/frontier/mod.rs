//! The frontier: a run's pending work as plain data.
//!
//! Given "activation X of step S finished" (and, for a router, "it chose label L"), the
//! frontier returns the step activations that are now ready, updating `and` progress, `or`
//! rounds and step counts on the way. It does no I/O, reads no clock and knows nothing of
//! async: the driver runs the activations it hands out and reports their completions back.
//! Because it is `Serialize + Deserialize`, a checkpoint of it is exact: a resumed run
//! continues with the same joins half-done and the same loops mid-round.
//!
//! ```
//! use crewflow_core::frontier::Frontier;
//! use crewflow_core::graph::{GraphSpec, StartKind, StepSpec};
//! use crewflow_core::trigger::{and, step};
//!
//! let spec = |name: &str, start, trigger| StepSpec {
//!     name: name.into(), start, trigger, router: None, input: None, output: None, source: None,
//! };
//! let graph = GraphSpec {
//!     name: "join".into(),
//!     steps: vec![
//!         spec("a", StartKind::Always, None),
//!         spec("b", StartKind::Always, None),
//!         spec("both", StartKind::Listener, Some(and([step("a"), step("b")]))),
//!     ],
//! }
//! .compile()?;
//!
//! let mut frontier = Frontier::new(&graph, 100);
//! let starts = frontier.start(&graph, |_| true)?;
//! assert_eq!(starts.len(), 2);
//! assert!(frontier.complete(&graph, starts[0].id, None)?.is_empty()); // half the join
//! let ready = frontier.complete(&graph, starts[1].id, None)?;
//! assert_eq!(graph.step_name(ready[0].step), "both");
//! # Ok::<(), crewflow_core::Error>(())
//! ```
//!
//! The semantics are documented in `docs/semantics.md`; in short:
//! - a listener on a single trigger fires on every occurrence;
//! - `and(..)` fires once every member has occurred since it last fired, and forgets progress
//!   when a member comes round a loop after it, so a join never mixes iterations;
//! - `or(..)` fires once per round: again only for a member that comes round a loop after the
//!   event it last fired on;
//! - when a listener fires, its whole condition tree forgets its progress;
//! - every label a router returns is dispatched, to listeners and routers alike;
//! - conditional starts are listeners too (and, in a flow without unconditional starts, also
//!   entry points).

mod lineage;
mod vec_map;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::error::Error;
use crate::graph::{Graph, Shape, Subscription};
use lineage::{Lineage, WatchId, Watches, derive};
use vec_map::VecMap;

/// Identifies an event within a run: the completion of an activation, or the label a router
/// activation returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(u64);

impl EventId {
    fn completion(activation: u64) -> Self {
        EventId(activation << 1)
    }

    fn label(activation: u64) -> Self {
        EventId((activation << 1) | 1)
    }

    /// The activation that produced this event.
    pub fn activation(self) -> u64 {
        self.0 >> 1
    }

    /// True for a route label, false for a step completion.
    pub fn is_label(self) -> bool {
        self.0 & 1 == 1
    }
}

/// A step execution the driver should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    /// Unique within the run, increasing in the order activations are created.
    pub id: u64,
    /// The step to run (its index in declaration order).
    pub step: u32,
    /// The event whose output is this activation's input (none for starts run at kickoff).
    pub payload: Option<EventId>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pending {
    step: u32,
    payload: Option<EventId>,
    lineage: Lineage,
}

/// A member of a condition satisfied since the listener last fired.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    event: EventId,
    lineage: Lineage,
    watch: Option<WatchId>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ListenerState {
    /// Per condition term: the event that satisfied it (general shape only).
    records: Vec<Option<Record>>,
    /// For `or` conditions: the watch opened on the event it last fired on.
    fired: Option<WatchId>,
}

/// A completed activation that has not (yet) triggered anything: a candidate for the run's
/// final output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct LeafInfo {
    step: u32,
    depth: u32,
    key: u64,
}

/// Where a firing's trigger lineage comes from: the event being dispatched, or a recorded one.
enum Source {
    Current(EventId),
    Recorded(EventId, Lineage),
}

struct Fire {
    listener: u32,
    payload: Option<EventId>,
    triggers: SmallVec<[Source; 2]>,
}

/// A run's pending work. See the [module documentation](self).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Frontier {
    next_activation: u64,
    steps_run: u64,
    budget: u64,
    counts: Vec<u32>,
    listeners: Vec<ListenerState>,
    watches: Watches,
    in_flight: VecMap<u64, Pending>,
    /// The best completed activation that no step listens to (by step, depth, key).
    best_sink: Option<(LeafInfo, u64)>,
    /// Completed activations that triggered nothing (yet): the fallback when no sink ran.
    leaves: VecMap<u64, LeafInfo>,
}

impl Frontier {
    /// A fresh frontier for `graph`, allowing at most `budget` step executions in the run.
    pub fn new(graph: &Graph, budget: u64) -> Self {
        // State only for `or` and `and` listeners, in the order of their `state_index`.
        let listeners = graph
            .steps
            .iter()
            .filter_map(|s| s.cond.as_ref())
            .filter(|c| c.shape != Shape::Single)
            .map(|c| match c.shape {
                Shape::General => ListenerState { records: vec![None; c.terms as usize], fired: None },
                _ => ListenerState::default(),
            })
            .collect();
        Frontier {
            next_activation: 0,
            steps_run: 0,
            budget,
            counts: vec![0; graph.len()],
            listeners,
            watches: Watches::default(),
            in_flight: VecMap::with_capacity(graph.entry.len().max(1)),
            best_sink: None,
            leaves: VecMap::default(),
        }
    }

    /// Activates the entry steps (see [`Graph::entry_steps`]) for which `enabled` holds.
    pub fn start(&mut self, graph: &Graph, enabled: impl Fn(u32) -> bool) -> Result<Vec<Activation>, Error> {
        let mut out = Vec::with_capacity(graph.entry.len());
        for &step in &graph.entry {
            if enabled(step) {
                // Starts run at kickoff receive no trigger payload.
                let fire = Fire { listener: step, payload: None, triggers: SmallVec::new() };
                out.push(self.activate(graph, fire, None)?);
            }
        }
        Ok(out)
    }

    /// Records that `activation` finished (with the index of the label it chose, for a router)
    /// and returns the activations that became ready, in a deterministic order: listeners of
    /// the completion in declaration order, then listeners of the label.
    pub fn complete(&mut self, graph: &Graph, activation: u64, route: Option<u32>) -> Result<Vec<Activation>, Error> {
        let done = self
            .in_flight
            .remove(&activation)
            .ok_or_else(|| Error::Internal(format!("activation {activation} is not in flight")))?;
        let node = &graph.steps[done.step as usize];
        match (route, node.router.is_some()) {
            (Some(l), true) if node.routes.contains(&l) => {}
            (None, false) => {}
            _ => {
                return Err(Error::Internal(format!(
                    "completion of `{}` with route {route:?} does not fit its declaration",
                    node.name
                )));
            }
        }
        let info = LeafInfo { step: done.step, depth: done.lineage.depth, key: done.lineage.key };
        let listened = !graph.by_step[done.step as usize].is_empty()
            || route.is_some_and(|l| !graph.by_label[l as usize].is_empty());
        if listened {
            self.leaves.insert(activation, info);
        } else if self.best_sink.is_none_or(|(best, _)| info > best) {
            self.best_sink = Some((info, activation));
        }
        let mut fires = Vec::new();
        let completion = EventId::completion(activation);
        self.offer_all(graph, &graph.by_step[done.step as usize], completion, &done.lineage, &mut fires);
        if let Some(l) = route {
            self.offer_all(graph, &graph.by_label[l as usize], EventId::label(activation), &done.lineage, &mut fires);
        }
        let mut out = Vec::with_capacity(fires.len());
        for fire in fires {
            out.push(self.activate(graph, fire, Some(&done.lineage))?);
        }
        Ok(out)
    }

    /// Forgets an activation that will not complete (used when a run is abandoned).
    pub fn abandon(&mut self, activation: u64) {
        self.in_flight.remove(&activation);
    }

    /// True when nothing is in flight: the run is over.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Activations handed out and not yet completed, in creation order. After a resume these
    /// are the ones to run again.
    pub fn in_flight(&self) -> impl Iterator<Item = Activation> + '_ {
        self.in_flight.iter().map(|(id, p)| Activation { id: *id, step: p.step, payload: p.payload })
    }

    /// How many step executions the run has started.
    pub fn steps_run(&self) -> u64 {
        self.steps_run
    }

    /// The run's step budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// How many times step `step` has been activated.
    pub fn count(&self, step: u32) -> u32 {
        self.counts.get(step as usize).copied().unwrap_or(0)
    }

    /// The activation whose output is the run's output.
    ///
    /// The candidates are the completed executions that no step listens to (a step nothing
    /// listens to, or a router whose chosen route is terminal). Among them wins the step
    /// declared last; if that step ran several times, the execution with the longest causal
    /// chain from a start (then a hash of the causal structure). Candidacy depends on the
    /// graph, not on timing, so the output of a run never depends on which branch finished
    /// first. If no such execution exists, the same rule picks among executions that
    /// triggered nothing.
    pub fn final_activation(&self) -> Option<u64> {
        self.best_sink.map(|(_, id)| id).or_else(|| self.leaves.iter().max_by_key(|(_, l)| **l).map(|(id, _)| *id))
    }

    /// Whether this frontier was made for a graph with the same shape (a cheap sanity check; the
    /// store also compares [`Graph::fingerprint`]).
    pub fn fits(&self, graph: &Graph) -> bool {
        let stateful: Vec<_> =
            graph.steps.iter().filter_map(|s| s.cond.as_ref()).filter(|c| c.shape != Shape::Single).collect();
        self.counts.len() == graph.len()
            && self.listeners.len() == stateful.len()
            && self.listeners.iter().zip(stateful).all(|(l, c)| match c.shape {
                Shape::General => l.records.len() == c.terms as usize,
                _ => l.records.is_empty(),
            })
    }

    /// The number of open watches (for tests of boundedness).
    #[doc(hidden)]
    pub fn open_watches(&self) -> usize {
        self.watches.open_count()
    }

    fn offer_all(
        &mut self,
        graph: &Graph,
        subs: &[Subscription],
        event: EventId,
        lineage: &Lineage,
        fires: &mut Vec<Fire>,
    ) {
        for sub in subs {
            self.offer(graph, sub, event, lineage, fires);
        }
    }

    fn offer(&mut self, graph: &Graph, sub: &Subscription, event: EventId, lineage: &Lineage, fires: &mut Vec<Fire>) {
        let listener = sub.listener;
        let Some(cond) = graph.steps[listener as usize].cond.as_ref() else {
            return;
        };
        let fire = |triggers| Fire { listener, payload: Some(event), triggers };
        match cond.shape {
            Shape::Single => fires.push(fire(smallvec::smallvec![Source::Current(event)])),
            Shape::FlatOr => {
                let state_ix = cond.state_index as usize;
                if self.same_round_as_last_firing(state_ix, lineage) {
                    return;
                }
                self.mark_fired(state_ix, listener, event, lineage);
                fires.push(fire(smallvec::smallvec![Source::Current(event)]));
            }
            Shape::General => self.offer_general(graph, sub, event, lineage, fires),
        }
    }

    /// For `or` conditions: whether the last firing is open and `lineage` did not come round
    /// a loop since.
    fn same_round_as_last_firing(&self, state_ix: usize, lineage: &Lineage) -> bool {
        self.listeners[state_ix].fired.is_some_and(|w| self.watches.get(w).is_some() && !lineage.came_round(w))
    }

    fn mark_fired(&mut self, state_ix: usize, listener: u32, event: EventId, lineage: &Lineage) {
        if let Some(old) = self.listeners[state_ix].fired.take() {
            self.watches.close(old);
        }
        let w = self.watches.open(event, listener, &lineage.past);
        self.listeners[state_ix].fired = Some(w);
    }

    fn offer_general(
        &mut self,
        graph: &Graph,
        sub: &Subscription,
        event: EventId,
        lineage: &Lineage,
        fires: &mut Vec<Fire>,
    ) {
        let listener = sub.listener;
        let Some(cond) = graph.steps[listener as usize].cond.as_ref() else {
            return;
        };
        let ix = cond.state_index as usize;

        // Progress from an earlier round is discarded: a join never mixes iterations.
        let stale = self.listeners[ix].records.iter().flatten().any(|r| r.watch.is_some_and(|w| lineage.came_round(w)));
        if stale {
            self.forget_progress(ix);
        }
        for &term in &sub.terms {
            let r = &mut self.listeners[ix].records[term as usize];
            if r.is_none() {
                *r = Some(Record { event, lineage: lineage.clone(), watch: None });
            }
        }

        let records = &self.listeners[ix].records;
        let done = |term: u16| records[term as usize].is_some();
        if !cond.satisfied(&done) {
            // Keep the progress, and watch it so that a later round can discard it.
            let fresh: SmallVec<[u16; 2]> = sub
                .terms
                .iter()
                .copied()
                .filter(|s| records[*s as usize].as_ref().is_some_and(|r| r.event == event && r.watch.is_none()))
                .collect();
            if !fresh.is_empty() {
                let w = self.watches.open(event, listener, &lineage.past);
                for s in fresh {
                    if let Some(r) = self.listeners[ix].records[s as usize].as_mut() {
                        r.watch = Some(w);
                    }
                }
            }
            return;
        }

        let mut terms = SmallVec::<[u16; 4]>::new();
        cond.satisfying_terms(&done, &mut terms);
        let mut triggers: SmallVec<[Source; 2]> = SmallVec::new();
        let mut seen: SmallVec<[EventId; 4]> = SmallVec::new();
        for s in terms {
            let Some(r) = &records[s as usize] else {
                continue;
            };
            if seen.contains(&r.event) {
                continue;
            }
            seen.push(r.event);
            triggers.push(if r.event == event {
                Source::Current(event)
            } else {
                Source::Recorded(r.event, r.lineage.clone())
            });
        }
        let suppressed = cond.once_per_round && self.same_round_as_last_firing(ix, lineage);
        self.forget_progress(ix);
        if suppressed {
            return;
        }
        if cond.once_per_round {
            self.mark_fired(ix, listener, event, lineage);
        }
        fires.push(Fire { listener, payload: Some(event), triggers });
    }

    fn forget_progress(&mut self, state_ix: usize) {
        for r in self.listeners[state_ix].records.iter_mut() {
            if let Some(w) = r.take().and_then(|r| r.watch) {
                self.watches.close(w);
            }
        }
    }

    fn activate(&mut self, graph: &Graph, fire: Fire, current: Option<&Lineage>) -> Result<Activation, Error> {
        let step = fire.listener;
        if self.steps_run >= self.budget {
            return Err(Error::StepBudgetExceeded { step: graph.step_name(step).to_string(), budget: self.budget });
        }
        self.steps_run += 1;
        self.counts[step as usize] += 1;
        let id = self.next_activation;
        self.next_activation += 1;

        let empty = Lineage::default();
        let sources = fire.triggers.iter().map(|t| match t {
            Source::Current(e) => (*e, current.unwrap_or(&empty)),
            Source::Recorded(e, l) => (*e, l),
        });
        let lineage = derive(step, sources, &self.watches);
        for t in &fire.triggers {
            let (Source::Current(e) | Source::Recorded(e, _)) = t;
            self.leaves.remove(&e.activation());
        }
        let payload = fire.payload;
        self.in_flight.insert(id, Pending { step, payload, lineage });
        Ok(Activation { id, step, payload })
    }
}

#[cfg(test)]
mod tests;
