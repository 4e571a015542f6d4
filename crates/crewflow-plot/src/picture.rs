//! A flow's graph as nodes and edges: what every picture draws.

use std::collections::BTreeMap;

use crewflow_core::graph::{Graph, StartKind};
use crewflow_core::persist::{RunStatus, StoredRun};
use crewflow_core::trigger::Trigger;

/// What kind of step a node is; each kind is drawn in its own shape and colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A start step (runs at kickoff, or a conditional start).
    Start,
    /// A listener.
    Listen,
    /// A router (its outgoing edges carry the labels it returns).
    Router,
    /// A route label no router of the flow declares (drawn as a small tag, so the listener
    /// still shows what triggers it).
    Label,
}

impl NodeKind {
    /// The kind's name in pictures and CSS classes: `start`, `listen`, `router`, `label`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Start => "start",
            NodeKind::Listen => "listen",
            NodeKind::Router => "router",
            NodeKind::Label => "label",
        }
    }
}

/// One step of the flow (or a free-standing route label).
#[derive(Clone, Debug)]
pub struct Node {
    /// The step's name (or the label's text).
    pub name: String,
    /// Its kind.
    pub kind: NodeKind,
    /// A router that also starts the flow (drawn as a router, marked as a start).
    pub also_start: bool,
    /// The step's trigger as written (`or(draft, 'revise')`), if it has one.
    pub trigger: Option<String>,
    /// The labels a router declares.
    pub routes: Vec<String>,
    /// Where the step is defined (`src/main.rs:12:5`, `flows/triage.yaml:7:3`), if known; see
    /// [`SourceLocation`](crewflow_core::graph::SourceLocation).
    pub source: Option<String>,
}

/// How an edge joins its listener's trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Join {
    /// The trigger is this one event alone.
    Single,
    /// One member of an `or`.
    Or,
    /// One member of an `and`: the listener waits for the others too.
    And,
}

/// A trigger edge: the completion of `from` (or a label it returns) can run `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// The index of the node the event comes from.
    pub from: usize,
    /// The index of the listening node.
    pub to: usize,
    /// The route label carried, for router edges.
    pub label: Option<String>,
    /// The innermost `and`/`or` the event is a member of.
    pub join: Join,
    /// The edge closes a loop (it goes back to a step that led to `from`).
    pub back: bool,
}

impl Edge {
    /// The text drawn on the edge: the label, the join (`and`, `or`), or both (`or: revise`).
    pub fn text(&self) -> Option<String> {
        let join = match self.join {
            Join::Single => None,
            Join::Or => Some("or"),
            Join::And => Some("and"),
        };
        match (join, &self.label) {
            (None, None) => None,
            (Some(j), None) => Some(j.to_string()),
            (None, Some(l)) => Some(l.clone()),
            (Some(j), Some(l)) => Some(format!("{j}: {l}")),
        }
    }
}

/// What a stored run did, drawn over its flow.
#[derive(Clone, Debug, Default)]
pub struct RunOverlay {
    /// The run's id.
    pub run_id: String,
    /// Where it stands (`finished`, `paused`, `failed`, ...).
    pub status: String,
    /// How many times each step completed, by node index (0 for steps not taken).
    pub counts: Vec<u32>,
    /// The nodes where the run is paused, waiting for feedback.
    pub paused: Vec<usize>,
    /// The error of a failed run.
    pub error: Option<String>,
    /// The nodes a failed run was at (steps named in its error, else none).
    pub failed: Vec<usize>,
}

/// A flow's graph as nodes and edges, ready to draw as Mermaid, DOT or HTML.
///
/// Nodes are the steps in declaration order (then any free-standing labels); edges come from
/// each step's trigger: a step leaf gives an edge from that step, a label leaf an edge from
/// every router declaring the label. Edges that close a loop are marked [`Edge::back`] (found
/// by a depth-first walk from the entry steps in declaration order, so the marking is stable).
#[derive(Clone, Debug)]
pub struct Picture {
    /// The flow's name.
    pub name: String,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The edges, sorted by target, then source.
    pub edges: Vec<Edge>,
    /// The entry steps (those started at kickoff), by node index.
    pub entry: Vec<usize>,
    /// A run drawn over the flow, if any ([`Picture::with_run`]).
    pub run: Option<RunOverlay>,
}

impl Picture {
    /// The picture of a compiled graph.
    pub fn of(graph: &Graph) -> Picture {
        let n = graph.len();
        let mut nodes: Vec<Node> = (0..n as u32)
            .map(|ix| {
                let router = graph.is_router(ix);
                let start = !matches!(graph.start_kind(ix), StartKind::Listener);
                Node {
                    name: graph.step_name(ix).to_string(),
                    kind: if router {
                        NodeKind::Router
                    } else if start {
                        NodeKind::Start
                    } else {
                        NodeKind::Listen
                    },
                    also_start: router && start,
                    trigger: graph.trigger(ix).map(|t| t.to_string()),
                    routes: graph.routes_of(ix).map(str::to_string).collect(),
                    source: graph.source(ix).map(ToString::to_string),
                }
            })
            .collect();
        let mut owners: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for ix in 0..n {
            for l in graph.routes_of(ix as u32) {
                owners.entry(l).or_default().push(ix);
            }
        }
        let mut free_labels: BTreeMap<String, usize> = BTreeMap::new();
        let mut edges: Vec<Edge> = Vec::new();
        for to in 0..n {
            let Some(trigger) = graph.trigger(to as u32) else { continue };
            let mut leaves = Vec::new();
            collect_leaves(trigger, Join::Single, &mut leaves);
            for (leaf, join) in leaves {
                match leaf {
                    Trigger::Step(s) => {
                        if let Some(from) = graph.step_index(s) {
                            edges.push(Edge { from: from as usize, to, label: None, join, back: false });
                        }
                    }
                    Trigger::Label(l) => {
                        let label = l.label.to_string();
                        match owners.get(&*l.label) {
                            Some(routers) => {
                                for &from in routers {
                                    edges.push(Edge { from, to, label: Some(label.clone()), join, back: false });
                                }
                            }
                            None => {
                                let from = *free_labels.entry(label.clone()).or_insert_with(|| {
                                    nodes.push(Node {
                                        name: label.clone(),
                                        kind: NodeKind::Label,
                                        also_start: false,
                                        trigger: None,
                                        routes: Vec::new(),
                                        source: None,
                                    });
                                    nodes.len() - 1
                                });
                                edges.push(Edge { from, to, label: None, join, back: false });
                            }
                        }
                    }
                    Trigger::Or(_) | Trigger::And(_) => {}
                }
            }
        }
        edges.sort_by(|a, b| (a.to, a.from, &a.label, a.join).cmp(&(b.to, b.from, &b.label, b.join)));
        edges.dedup();
        let entry: Vec<usize> = graph.entry_steps().iter().map(|&i| i as usize).collect();
        mark_back_edges(nodes.len(), &entry, &mut edges);
        Picture { name: graph.name().to_string(), nodes, edges, entry, run: None }
    }

    /// Draws a stored run over the picture: how often each step completed, where the run is
    /// paused, and, for a failed run, its error (and the steps the error names).
    pub fn with_run(mut self, run: &StoredRun) -> Picture {
        let index: BTreeMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.kind != NodeKind::Label)
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut counts = vec![0u32; self.nodes.len()];
        for row in &run.steps {
            if let Some(&i) = index.get(&*row.step) {
                counts[i] += 1;
            }
        }
        let mut paused = Vec::new();
        if let Some(feedback) = run.feedback.as_deref().and_then(|f| serde_json::from_str::<serde_json::Value>(f).ok())
        {
            for p in feedback.get("pending").and_then(|p| p.as_array()).into_iter().flatten() {
                if let Some(&i) = p.pointer("/request/step").and_then(|s| s.as_str()).and_then(|s| index.get(s)) {
                    paused.push(i);
                }
            }
        }
        let failed = match (&run.status, &run.error) {
            (RunStatus::Failed, Some(e)) => index
                .iter()
                .filter(|(name, _)| e.contains(&format!("`{name}`")) || e.contains(&format!("step {name}")))
                .map(|(_, &i)| i)
                .collect(),
            _ => Vec::new(),
        };
        self.run = Some(RunOverlay {
            run_id: run.run_id.to_string(),
            status: run.status.as_str().to_string(),
            counts,
            paused,
            error: run.error.clone(),
            failed,
        });
        self
    }
}

fn collect_leaves<'a>(t: &'a Trigger, parent: Join, out: &mut Vec<(&'a Trigger, Join)>) {
    match t {
        Trigger::Step(_) | Trigger::Label(_) => out.push((t, parent)),
        Trigger::Or(m) | Trigger::And(m) => {
            let join = match (t, m.len()) {
                (_, 0 | 1) => parent,
                (Trigger::Or(_), _) => Join::Or,
                _ => Join::And,
            };
            for member in m {
                collect_leaves(member, join, out);
            }
        }
    }
}

/// Marks the edges that close a loop: a depth-first walk from the entry nodes (then from any
/// node not reached, in order) marks every edge into a node still on the walk's path.
fn mark_back_edges(n: usize, entry: &[usize], edges: &mut [Edge]) {
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, e) in edges.iter().enumerate() {
        out[e.from].push(i);
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; n];
    let roots: Vec<usize> = entry.iter().copied().chain(0..n).collect();
    for root in roots {
        if mark[root] != Mark::New {
            continue;
        }
        // (node, next outgoing edge to look at)
        let mut stack = vec![(root, 0usize)];
        mark[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&ei) = out[node].get(*next) {
                *next += 1;
                let to = edges[ei].to;
                match mark[to] {
                    Mark::OnPath => edges[ei].back = true,
                    Mark::New => {
                        mark[to] = Mark::OnPath;
                        stack.push((to, 0));
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
}
