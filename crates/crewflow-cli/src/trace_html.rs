//! `crewflow trace RUN --html PATH` and `crewflow trace --session FLOW/ID --html PATH`: a
//! run's timeline, or a session's traces, as one self-contained page (inline style, no script,
//! nothing fetched from the network), for sharing with someone without access to the store.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use chrono::{DateTime, Utc};
use crewflow_chat::SpanRecord;
use crewflow_core::persist::RunTree;

use crate::commands::{Ctx, load_tree};
use crate::trace::{Timeline, extent, ms, timeline, unfinished_executions};
use crate::{CliError, Exit};

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#111827;background:#f9fafb}\
h1{font-size:18px;margin:0 0 4px}p.meta{color:#4b5563;margin:0 0 16px}\
ul.tree{list-style:none;padding:0;margin:0;max-width:1100px}\
ul.tree li{display:grid;grid-template-columns:64px 220px 110px 110px 1fr;gap:8px;align-items:center;padding:3px 0;border-bottom:1px solid #e5e7eb}\
ul.tree li.note{display:block;color:#374151}ul.tree li.error{color:#b91c1c;font-weight:600}\
.bar{position:relative;height:12px;background:#eef2ff;border-radius:3px}\
.bar span{position:absolute;top:0;bottom:0;background:#4f46e5;border-radius:3px;min-width:2px}\
.num{text-align:right;font-variant-numeric:tabular-nums;color:#374151}\
ul.tree li.nested{display:block;padding-left:24px;border-left:2px solid #c7d2fe}\
ul.tree li.nested summary{cursor:pointer;color:#3730a3;padding:3px 0}\
ul.tree li.call{padding-left:72px;color:#6b7280;font-size:13px}\
ul.tree li.span.error b{color:#b91c1c}h2{font-size:15px;margin:20px 0 4px}";

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub(crate) async fn run(ctx: &Ctx, run_id: &str, path: &Path) -> Result<Exit, CliError> {
    let tree = load_tree(ctx, run_id).await?;
    let r = &tree.run;
    let t = timeline(r);
    let title = format!("run {} · flow `{}` · {}", r.run_id, r.flow, r.status.as_str());
    let mut s = String::with_capacity(4096);
    page_head(&mut s, &title);
    let _ = writeln!(
        s,
        "<p class=\"meta\">started {} · {:.1} ms · {} step executions</p>",
        r.created_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
        t.total,
        t.rows.len()
    );
    s.push_str("<ul class=\"tree\">\n");
    let total = extent(&tree, r.created_at);
    items(&mut s, &tree, r.created_at, if total.is_finite() && total > 0.0 { total } else { 1.0 });
    s.push_str("</ul>\n<p class=\"meta\">Times are completions since the run started; in brackets, since the previous completion.</p>\n</body></html>\n");
    write_page(path, &s)?;
    if ctx.json {
        outln!(
            "{}",
            json!({"written": path.display().to_string(), "run_id": r.run_id.to_string(), "steps": t.rows.len()})
        );
    } else {
        eprintln!("wrote {} (run {}, {} steps)", path.display(), r.run_id, t.rows.len());
    }
    Ok(Exit::Ok)
}

fn write_page(path: &Path, page: &str) -> Result<(), CliError> {
    std::fs::write(path, page)
        .map_err(|e| CliError::new(Exit::Usage, format!("cannot write {}: {e}; check the directory", path.display())))
}

fn page_head(s: &mut String, title: &str) {
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n",
        esc(title)
    );
    let _ = writeln!(s, "<h1>{}</h1>", esc(title));
}

/// `crewflow trace --session FLOW/ID --html PATH`: the session's stored traces as one page,
/// each a tree of spans (session > turn > step > model call / tool call) with durations, bars
/// on the trace's timeline, tokens, finish reasons, routes and errors.
pub(crate) async fn session(ctx: &Ctx, arg: &str, path: &Path) -> Result<Exit, CliError> {
    let traces = crate::trace::session_traces(ctx, arg).await?;
    let title = format!("session {arg}");
    let mut s = String::with_capacity(4096);
    page_head(&mut s, &title);
    let mut spans_written = 0;
    for (t, spans) in &traces {
        let start = spans.iter().map(|s| s.started_at).min().unwrap_or(t.started_at);
        let end = spans.iter().filter_map(|s| s.ended_at).max().unwrap_or(t.updated_at);
        let total = ms(start, end.max(start));
        let _ = writeln!(
            s,
            "<h2>trace {} · {} turns</h2>\n<p class=\"meta\">started {} · {:.1} ms</p>\n<ul class=\"tree\">",
            esc(&t.trace_id),
            t.turns,
            start.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
            total
        );
        for root in crate::trace::roots(spans) {
            span_item(&mut s, spans, root, start, if total > 0.0 { total } else { 1.0 });
        }
        s.push_str("</ul>\n");
        spans_written += spans.len();
    }
    s.push_str("<p class=\"meta\">Each span from its start to its end on its trace's timeline; an open span (a session not yet finalized) reaches the trace's end.</p>\n</body></html>\n");
    write_page(path, &s)?;
    if ctx.json {
        outln!("{}", json!({"written": path.display().to_string(), "traces": traces.len(), "spans": spans_written}));
    } else {
        eprintln!("wrote {} (session {arg}, {} traces, {spans_written} spans)", path.display(), traces.len());
    }
    Ok(Exit::Ok)
}

/// A span's row (kind, name, duration, bar, notes), then its children in a list of their own.
fn span_item(s: &mut String, spans: &[SpanRecord], span: &SpanRecord, start: DateTime<Utc>, total: f64) {
    let from = ms(start, span.started_at);
    let to = span.ended_at.map_or(total, |e| ms(start, e));
    let left = (from / total * 100.0).clamp(0.0, 100.0);
    let width = ((to - from) / total * 100.0).clamp(0.0, 100.0 - left);
    let duration = span.ended_at.map_or_else(|| "open".to_string(), |_| format!("{:.1} ms", to - from));
    let notes = crate::trace::span_notes(span);
    let error = if notes.iter().any(|n| n.starts_with("ERROR ")) { " error" } else { "" };
    let _ = writeln!(
        s,
        "<li class=\"span{error}\" data-kind=\"{}\"><span>{}</span><span><b>{}</b><br><small>{}</small></span><span class=\"num\">{duration}</span><span></span><div class=\"bar\"><span style=\"left:{left:.2}%;width:{width:.2}%\"></span></div></li>",
        esc(&span.kind),
        esc(&span.kind),
        esc(&span.name),
        esc(&notes.join(", "))
    );
    let children: Vec<&SpanRecord> = spans.iter().filter(|c| c.parent_id.as_deref() == Some(&span.span_id)).collect();
    if !children.is_empty() {
        s.push_str("<li class=\"nested\"><ul class=\"tree\">\n");
        for child in children {
            span_item(s, spans, child, start, total);
        }
        s.push_str("</ul></li>\n");
    }
}

/// What is listed under a run: its step executions, each followed by the calls its journal
/// recorded and the runs started from it (nested lists), executions that stored no output
/// but left calls or runs, its feedback and error.
/// Bars are on the outer run's timeline (`origin`, `total` ms).
fn items(s: &mut String, tree: &RunTree, origin: DateTime<Utc>, total: f64) {
    let r = &tree.run;
    let t = timeline(r);
    let offset = ms(origin, r.created_at);
    let parent_of = |n: &RunTree| n.run.parent.map(|p| p.activation);
    let execution = |s: &mut String, activation: u64| {
        for e in tree.journal.iter().filter(|e| e.activation == activation) {
            let when = e.recorded_at.map(|t| format!(" · +{:.1} ms", ms(origin, t))).unwrap_or_default();
            let _ = writeln!(s, "<li class=\"note call\">{}{when}</li>", esc(&crate::calls::label(e)));
        }
        for n in tree.nested.iter().filter(|n| parent_of(n) == Some(activation)) {
            nested(s, n, origin, total);
        }
    };
    for row in &t.rows {
        step_row(s, row, offset, total);
        execution(s, row.0);
    }
    for a in unfinished_executions(tree, &t.rows) {
        let _ = writeln!(s, "<li class=\"note\">#{a} stored no output: the execution failed or still runs</li>");
        execution(s, a);
    }
    notes(s, &t);
    if let Some(e) = &r.error {
        let _ = writeln!(s, "<li class=\"note error\">error: {}</li>", esc(e));
    }
}

/// A nested run: its line, then its own items in a list of their own.
fn nested(s: &mut String, tree: &RunTree, origin: DateTime<Utc>, total: f64) {
    let r = &tree.run;
    let _ = writeln!(
        s,
        "<li class=\"nested\" data-run=\"{}\"><details open><summary>run {} · flow <b>{}</b> · {} · {:.1} ms</summary><ul class=\"tree\">",
        r.run_id,
        r.run_id,
        esc(&r.flow),
        r.status.as_str(),
        timeline(r).total
    );
    items(s, tree, origin, total);
    s.push_str("</ul></details></li>\n");
}

/// A step execution: activation, step, times, and a bar on the outer run's timeline.
fn step_row(s: &mut String, (a, step, start, end): &(u64, String, f64, f64), offset: f64, total: f64) {
    let (start, end) = (start + offset, end + offset);
    let left = (start / total * 100.0).clamp(0.0, 100.0);
    let width = ((end - start) / total * 100.0).clamp(0.0, 100.0 - left);
    let _ = writeln!(
        s,
        "<li class=\"step\" data-step=\"{}\"><span>#{a}</span><b>{}</b><span class=\"num\">+{end:.1} ms</span><span class=\"num\">({:.1} ms)</span><div class=\"bar\"><span style=\"left:{left:.2}%;width:{width:.2}%\"></span></div></li>",
        esc(step),
        esc(step),
        end - start
    );
}

/// The feedback given and pending, under the steps.
fn notes(s: &mut String, t: &Timeline) {
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    for h in &t.history {
        let outcome = h["outcome"].as_str().map(|o| format!(" → {o}")).unwrap_or_default();
        let _ = writeln!(
            s,
            "<li class=\"note\">feedback on <b>{}</b>: “{}”{}</li>",
            esc(&text(h, "step")),
            esc(&text(h, "feedback")),
            esc(&outcome)
        );
    }
    for p in &t.pending {
        let _ = writeln!(
            s,
            "<li class=\"note\">paused on <b>{}</b>: {}</li>",
            esc(&text(p, "step")),
            esc(&text(p, "message"))
        );
    }
}
