//! `crewflow trace RUN --html PATH`: the run's timeline as one self-contained page (inline
//! style, no script, nothing fetched from the network), for sharing with someone without
//! access to the store.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use chrono::{DateTime, Utc};
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
ul.tree li.call{padding-left:72px;color:#6b7280;font-size:13px}";

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
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n",
        esc(&title)
    );
    let _ = writeln!(s, "<h1>{}</h1>", esc(&title));
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
    std::fs::write(path, &s).map_err(|e| {
        CliError::new(Exit::Usage, format!("cannot write {}: {e}; check the directory", path.display()))
    })?;
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
