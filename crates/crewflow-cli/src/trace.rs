//! `crewflow trace`: a run's story from the store as a tree with a timeline, or a session's
//! trace spans (session > turn > step > model call / tool call); `--otlp URL` sends either to an
//! OpenTelemetry collector (feature `otel`).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use crewflow_chat::{SpanRecord, TraceSummary};
use crewflow_core::persist::{RunTree, StoredRun};
use serde_json::{Value, json};

use crate::commands::{Ctx, load_tree, store_failed};
use crate::{CliError, Exit};

const BAR: usize = 30;

pub(crate) fn ms(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(0) as f64 / 1000.0
}

/// A bar from `start` to `end` on a timeline of `total` ms: at least one cell, never past the
/// timeline's end (a bar that starts at its end is drawn in its last cell).
fn bar(start: f64, end: f64, total: f64) -> String {
    if total.is_nan() || total <= 0.0 {
        return "█".to_string();
    }
    let cell = |t: f64| ((t / total) * BAR as f64).clamp(0.0, BAR as f64);
    let a = (cell(start).floor() as usize).min(BAR - 1);
    let b = (cell(end).ceil() as usize).clamp(a + 1, BAR);
    format!("{}{}", " ".repeat(a), "█".repeat(b - a))
}

/// A run's timeline: one row per step execution, the feedback given and pending.
pub(crate) struct Timeline {
    /// The run's duration so far, in ms.
    pub total: f64,
    /// Activation, step, since (ms from the run's start), finished (ms).
    pub rows: Vec<(u64, String, f64, f64)>,
    pub history: Vec<Value>,
    pub pending: Vec<Value>,
}

pub(crate) fn timeline(r: &StoredRun) -> Timeline {
    let last = r.steps.iter().map(|s| s.finished_at).max().unwrap_or(r.updated_at);
    let total = ms(r.created_at, r.updated_at.max(last));
    let record: Value = r.feedback.as_deref().and_then(|f| serde_json::from_str(f).ok()).unwrap_or(Value::Null);
    let history: Vec<Value> = record.get("history").and_then(Value::as_array).cloned().unwrap_or_default();
    let pending: Vec<Value> = record
        .get("pending")
        .and_then(Value::as_array)
        .map(|p| p.iter().filter_map(|p| p.get("request").cloned()).collect())
        .unwrap_or_default();
    let mut steps = r.steps.clone();
    steps.sort_by_key(|s| (s.finished_at, s.activation));
    // The store keeps when each execution finished; an execution's span is drawn from the
    // previous completion (or the run's start) to its own.
    let mut prev = 0.0f64;
    let rows = steps
        .iter()
        .map(|s| {
            let end = ms(r.created_at, s.finished_at);
            let row = (s.activation, s.step.to_string(), prev.min(end), end);
            prev = end;
            row
        })
        .collect();
    Timeline { total, rows, history, pending }
}

pub(crate) async fn run(ctx: &Ctx, run_id: &str) -> Result<Exit, CliError> {
    let tree = load_tree(ctx, run_id).await?;
    if ctx.json {
        outln!("{}", run_json(&tree));
        return Ok(Exit::Ok);
    }
    let r = &tree.run;
    let origin = r.created_at;
    let total = extent(&tree, origin);
    let width = name_width(&tree, 0).max(4);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {} · flow `{}` · {} · {:.1} ms (started {})",
        r.run_id,
        r.flow,
        r.status.as_str(),
        timeline(r).total,
        r.created_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
    );
    print_nodes(&mut out, &run_nodes(&tree, origin, total, width, 0), "");
    out.push_str("(times are completions since the run started; in brackets, since the previous completion)\n");
    out!("{out}");
    Ok(Exit::Ok)
}

/// A run as JSON for `trace --json`: its steps' times (since its own start), its feedback,
/// the `calls` its journal recorded (model calls with their model, tokens and finish reason;
/// tool calls; other side effects), and the runs started from its steps, each with its
/// `parent` step execution.
fn run_json(tree: &RunTree) -> Value {
    let r = &tree.run;
    let Timeline { total, rows, history, pending } = timeline(r);
    let steps: Vec<Value> = rows
        .iter()
        .map(|(a, s, start, end)| json!({"activation": a, "step": s, "since_ms": start, "finished_ms": end}))
        .collect();
    let mut out = json!({"run_id": r.run_id.to_string(), "flow": r.flow, "status": r.status.as_str(), "started_at": r.created_at.to_rfc3339(),
           "duration_ms": total, "steps": steps, "feedback": history, "pending": pending, "error": r.error});
    if let Some(p) = r.parent {
        out["parent"] = json!({"run_id": p.run_id.to_string(), "activation": p.activation});
    }
    if !tree.journal.is_empty() {
        let since = |t: DateTime<Utc>| ms(r.created_at, t);
        out["calls"] = tree.journal.iter().map(|e| crate::calls::to_json(e, e.recorded_at.map(since))).collect();
    }
    if !tree.nested.is_empty() {
        out["nested"] = tree.nested.iter().map(run_json).collect();
    }
    out
}

/// The end of the latest run of the tree, in ms since `origin`: the timeline every bar is
/// drawn on (a nested run queued for a worker may end after its outer run).
pub(crate) fn extent(tree: &RunTree, origin: DateTime<Utc>) -> f64 {
    let own = ms(origin, tree.run.created_at) + timeline(&tree.run).total;
    tree.nested.iter().map(|n| extent(n, origin)).fold(own, f64::max)
}

/// The width of the step-name column that ends every row's name at the same place: a row
/// `depth` runs deep is indented 6 characters more per level (two tree levels: its run's
/// line, then its own).
fn name_width(tree: &RunTree, depth: usize) -> usize {
    let own = tree.run.steps.iter().map(|s| s.step.chars().count() + 6 * depth).max().unwrap_or(0);
    tree.nested.iter().map(|n| name_width(n, depth + 1)).fold(own, usize::max)
}

/// A line of the printed tree and the lines under it.
struct Node {
    line: String,
    children: Vec<Node>,
}

fn print_nodes(out: &mut String, nodes: &[Node], prefix: &str) {
    for (i, node) in nodes.iter().enumerate() {
        let last = i + 1 == nodes.len();
        let _ = writeln!(out, "{prefix}{} {}", if last { "└─" } else { "├─" }, node.line);
        print_nodes(out, &node.children, &format!("{prefix}{}", if last { "   " } else { "│  " }));
    }
}

/// What is printed under a run: its step executions, each with what it did (the calls its
/// journal recorded and the runs started from it, in time order), then executions that stored
/// no output (failed, or still running) but left calls or nested runs, the feedback given and
/// pending, its error. Times and bars are on the outer run's timeline (`origin`).
fn run_nodes(tree: &RunTree, origin: DateTime<Utc>, total: f64, width: usize, depth: usize) -> Vec<Node> {
    let r = &tree.run;
    let Timeline { rows, history, pending, .. } = timeline(r);
    let offset = ms(origin, r.created_at);
    let under = |activation: u64| execution_nodes(tree, activation, origin, total, width, depth);
    let mut nodes: Vec<Node> = rows
        .iter()
        .map(|(a, step, start, end)| {
            let (start, end) = (start + offset, end + offset);
            let width = width - 6 * depth;
            let line = format!(
                "#{a:<3} {step:<width$}  {:>9}  {:>9}  {}",
                format!("+{end:.1} ms"),
                format!("({:.1} ms)", end - start),
                bar(start, end, total)
            );
            Node { line, children: under(*a) }
        })
        .collect();
    for a in unfinished_executions(tree, &rows) {
        nodes.push(Node {
            line: format!("#{a:<3} (stored no output: the execution failed or still runs)"),
            children: under(a),
        });
    }
    let leaf = |line: String| Node { line, children: Vec::new() };
    for h in &history {
        nodes.push(leaf(format!(
            "feedback on `{}`: {:?}{}",
            h["step"].as_str().unwrap_or("?"),
            h["feedback"].as_str().unwrap_or(""),
            h["outcome"].as_str().map(|o| format!(" → {o}")).unwrap_or_default()
        )));
    }
    for p in &pending {
        nodes.push(leaf(format!(
            "paused on `{}`: {}",
            p["step"].as_str().unwrap_or("?"),
            p["message"].as_str().unwrap_or("")
        )));
    }
    if let Some(e) = &r.error {
        nodes.push(leaf(format!("error: {e}")));
    }
    nodes
}

/// The executions of a run that left calls in its journal or started runs but stored no
/// output, in order.
pub(crate) fn unfinished_executions(tree: &RunTree, rows: &[(u64, String, f64, f64)]) -> Vec<u64> {
    let mut found: Vec<u64> = tree
        .journal
        .iter()
        .map(|e| e.activation)
        .chain(tree.nested.iter().filter_map(|n| n.run.parent.map(|p| p.activation)))
        .filter(|a| !rows.iter().any(|row| row.0 == *a))
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// What one execution did, in time order: its recorded calls and the runs it started.
fn execution_nodes(
    tree: &RunTree,
    activation: u64,
    origin: DateTime<Utc>,
    total: f64,
    width: usize,
    depth: usize,
) -> Vec<Node> {
    let calls = tree.journal.iter().filter(|e| e.activation == activation).map(|e| {
        let at = e.recorded_at.map(|t| ms(origin, t));
        let when = at.map(|t| format!("  +{t:.1} ms")).unwrap_or_default();
        (at.unwrap_or(f64::MAX), Node { line: format!("{}{when}", crate::calls::label(e)), children: Vec::new() })
    });
    let runs = tree
        .nested
        .iter()
        .filter(|n| n.run.parent.map(|p| p.activation) == Some(activation))
        .map(|n| (ms(origin, n.run.created_at), run_node(n, origin, total, width, depth + 1)));
    let mut timed: Vec<(f64, Node)> = calls.chain(runs).collect();
    timed.sort_by(|a, b| a.0.total_cmp(&b.0));
    timed.into_iter().map(|(_, node)| node).collect()
}

/// A nested run's line and what is under it.
fn run_node(tree: &RunTree, origin: DateTime<Utc>, total: f64, width: usize, depth: usize) -> Node {
    let r = &tree.run;
    Node {
        line: format!("run {} · flow `{}` · {} · {:.1} ms", r.run_id, r.flow, r.status.as_str(), timeline(r).total),
        children: run_nodes(tree, origin, total, width, depth),
    }
}

/// A session's stored traces with their spans, from `FLOW/SESSION_ID`.
pub(crate) async fn session_traces(ctx: &Ctx, arg: &str) -> Result<Vec<(TraceSummary, Vec<SpanRecord>)>, CliError> {
    let Some((flow, id)) = arg.split_once('/') else {
        return Err(CliError::new(
            Exit::Usage,
            format!("--session `{arg}` is not FLOW/SESSION_ID (e.g. --session support/alice)"),
        ));
    };
    let url = ctx.store_url();
    let store = ctx.sessions()?;
    let traces = store.list_traces(flow, id).await.map_err(|e| store_failed(&url, "list the traces", e))?;
    if traces.is_empty() {
        return Err(CliError::new(
            Exit::NotFound,
            format!("no trace of session `{id}` of flow `{flow}` in the store `{url}`"),
        ));
    }
    let mut out = Vec::with_capacity(traces.len());
    for t in traces {
        let spans = store.trace_spans(&t.trace_id).await.map_err(|e| store_failed(&url, "read the trace", e))?;
        out.push((t, spans));
    }
    Ok(out)
}

pub(crate) async fn session(ctx: &Ctx, arg: &str) -> Result<Exit, CliError> {
    let mut out = String::new();
    for (t, spans) in session_traces(ctx, arg).await? {
        if ctx.json {
            outln!(
                "{}",
                json!({"trace_id": t.trace_id, "flow": t.flow, "session_id": t.session_id, "turns": t.turns, "spans": spans})
            );
            continue;
        }
        let _ = writeln!(out, "trace {} · session `{}` of `{}` · {} turns", t.trace_id, t.session_id, t.flow, t.turns);
        let start = spans.iter().map(|s| s.started_at).min().unwrap_or(t.started_at);
        let end = spans.iter().filter_map(|s| s.ended_at).max().unwrap_or(t.updated_at);
        let total = ms(start, end.max(start));
        let roots = roots(&spans);
        for (k, root) in roots.iter().enumerate() {
            tree(&mut out, &spans, root, "", k + 1 == roots.len(), start, total);
        }
    }
    out!("{out}");
    Ok(Exit::Ok)
}

/// `crewflow trace … --otlp URL`: sends the run's (or session's) trace to an OTLP/HTTP
/// collector instead of printing it.
#[cfg(feature = "otel")]
pub(crate) async fn otlp(
    ctx: &Ctx,
    run_id: Option<&str>,
    session: Option<&str>,
    endpoint: &str,
) -> Result<Exit, CliError> {
    use crate::otel::{OtlpExporter, run_tree_request, session_request};
    let exporter = OtlpExporter::new(endpoint).map_err(|e| CliError::new(Exit::Usage, e.to_string()))?;
    let (request, what) = match (session, run_id) {
        (Some(arg), _) => {
            let traces = session_traces(ctx, arg).await?;
            let flow = traces.first().map(|(t, _)| t.flow.clone()).unwrap_or_default();
            (session_request(&flow, &traces), format!("session {arg}"))
        }
        (None, Some(id)) => {
            let tree = load_tree(ctx, id).await?;
            let what = match tree.runs().len() - 1 {
                0 => format!("run {}", tree.run.run_id),
                1 => format!("run {} and 1 nested run", tree.run.run_id),
                n => format!("run {} and {n} nested runs", tree.run.run_id),
            };
            (run_tree_request(&tree), what)
        }
        (None, None) => return Err(CliError::new(Exit::Usage, "give a run id, or --session FLOW/ID")),
    };
    let sent = exporter.export(&request).await.map_err(|e| CliError::new(Exit::RunFailed, e.to_string()))?;
    if ctx.json {
        outln!("{}", json!({"sent": sent, "url": exporter.url()}));
    } else {
        eprintln!("sent {sent} spans of {what} to {}", exporter.url());
    }
    Ok(Exit::Ok)
}

#[cfg(not(feature = "otel"))]
pub(crate) async fn otlp(_: &Ctx, _: Option<&str>, _: Option<&str>, _: &str) -> Result<Exit, CliError> {
    Err(CliError::new(
        Exit::Usage,
        "this crewflow was built without OpenTelemetry export; build it with the `otel` feature (cargo install crewflow-cli --features otel)",
    ))
}

/// What a stored span carries, for a reader: tokens, provider, finish reason, route, intent,
/// and its error.
pub(crate) fn span_notes(s: &SpanRecord) -> Vec<String> {
    let a = &s.attributes;
    let mut notes = Vec::new();
    if let Some(u) = a.get("usage") {
        let p = u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0);
        let c = u.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0);
        notes.push(format!("tokens {p}+{c}"));
    }
    for key in ["provider", "finish_reason", "route", "intent"] {
        if let Some(v) = a.get(key).and_then(Value::as_str) {
            notes.push(format!("{key} {v}"));
        }
    }
    if let Some(e) = a.get("error").filter(|e| !e.is_null()) {
        notes.push(format!("ERROR {}", e.as_str().map(String::from).unwrap_or_else(|| e.to_string())));
    }
    notes
}

/// The spans with no parent among `spans` (a trace's roots).
pub(crate) fn roots(spans: &[SpanRecord]) -> Vec<&SpanRecord> {
    spans.iter().filter(|s| s.parent_id.as_ref().is_none_or(|p| !spans.iter().any(|o| &o.span_id == p))).collect()
}

fn tree(
    out: &mut String,
    spans: &[SpanRecord],
    s: &SpanRecord,
    prefix: &str,
    last: bool,
    t0: DateTime<Utc>,
    total: f64,
) {
    let from = ms(t0, s.started_at);
    let to = s.ended_at.map(|e| ms(t0, e));
    let dur = to.map(|t| format!("{:.1} ms", t - from)).unwrap_or_else(|| "open".into());
    let notes = span_notes(s);
    let _ = writeln!(
        out,
        "{prefix}{} {} {}  {dur}  {}{}",
        if last { "└─" } else { "├─" },
        s.kind,
        s.name,
        bar(from, to.unwrap_or(total), total),
        if notes.is_empty() { String::new() } else { format!("  [{}]", notes.join(", ")) }
    );
    let children: Vec<&SpanRecord> = spans.iter().filter(|c| c.parent_id.as_deref() == Some(&s.span_id)).collect();
    let prefix = format!("{prefix}{}", if last { "   " } else { "│  " });
    for (k, c) in children.iter().enumerate() {
        tree(out, spans, c, &prefix, k + 1 == children.len(), t0, total);
    }
}

#[cfg(test)]
mod tests {
    use super::{BAR, bar};

    #[test]
    fn bars_stay_on_the_timeline_whatever_the_times() {
        for (start, end, total) in [
            (0.0, 0.0, 0.0),
            (10.0, 10.0, 10.0),
            (0.0, 10.0, 10.0),
            (12.0, 15.0, 10.0),
            (-1.0, 3.0, 10.0),
            (5.0, 2.0, 10.0),
            (0.0, 1.0, f64::NAN),
        ] {
            let b = bar(start, end, total);
            let cells = b.chars().count();
            assert!((1..=BAR).contains(&cells), "{start} {end} {total}: {b:?}");
            assert!(b.ends_with('█'), "{b:?}");
        }
        assert_eq!(bar(0.0, 10.0, 10.0), "█".repeat(BAR));
        assert_eq!(bar(5.0, 10.0, 10.0), format!("{}{}", " ".repeat(BAR / 2), "█".repeat(BAR / 2)));
    }
}
