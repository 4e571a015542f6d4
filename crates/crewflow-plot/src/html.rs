//! The HTML page: one file, inline SVG laid out in Rust, inline CSS and a small script for
//! hover, click, pan and zoom. Nothing is fetched from the network.

use std::fmt::Write;

use serde_json::{Value, json};

use crate::layout::{Layout, NODE_H, layout};
use crate::picture::{Join, NodeKind, Picture};

const CSS: &str = include_str!("page.css");
const JS: &str = include_str!("page.js");

/// The text of the page's `<style>` element, exactly (a Content-Security-Policy hashes it).
pub(crate) fn inline_style() -> String {
    format!("\n{CSS}")
}

/// The text of the page's script element, exactly (the flow's data beside it is JSON, not run).
pub(crate) fn inline_script() -> String {
    format!("\n{JS}")
}

pub(crate) fn html(p: &Picture) -> String {
    let l = layout(p);
    let mut s = String::with_capacity(16_000 + p.nodes.len() * 400 + p.edges.len() * 200);
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ = writeln!(s, "<title>{} · crewflow</title>", esc(&p.name));
    let _ = writeln!(s, "<style>{}</style>\n</head>\n<body>", inline_style());
    header(&mut s, p);
    let _ = writeln!(
        s,
        "<svg id=\"graph\" xmlns=\"http://www.w3.org/2000/svg\" data-flow=\"{}\" data-steps=\"{}\">",
        esc(&p.name),
        p.nodes.iter().filter(|n| n.kind != NodeKind::Label).count()
    );
    s.push_str(concat!(
        "<defs>",
        "<marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#6b7280\"/></marker>",
        "<marker id=\"arrow-back\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#9333ea\"/></marker>",
        "</defs>\n<g id=\"vp\">\n"
    ));
    edges(&mut s, p, &l);
    nodes(&mut s, p, &l);
    s.push_str("</g>\n</svg>\n<div id=\"info\" hidden></div>\n");
    let data = data(p, &l).to_string().replace('<', "\\u003c");
    let _ = writeln!(s, "<script type=\"application/json\" id=\"flow-data\">{data}</script>");
    let _ = writeln!(s, "<script>{}</script>\n</body>\n</html>", inline_script());
    s
}

fn header(s: &mut String, p: &Picture) {
    let _ = write!(s, "<header><h1>{}</h1>", esc(&p.name));
    s.push_str(concat!(
        "<span class=\"legend\">",
        "<span><i class=\"start\"></i>start</span>",
        "<span><i class=\"listen\"></i>listen</span>",
        "<span><i class=\"router\"></i>router</span>",
        "<span class=\"loop\">- - loop</span>",
        "</span>"
    ));
    if let Some(run) = &p.run {
        let _ = write!(s, "<span class=\"run\">run {} · {}</span>", esc(&run.run_id), esc(&run.status));
        if let Some(e) = &run.error {
            let _ = write!(s, "<span class=\"error\">{}</span>", esc(e));
        }
    }
    s.push_str("<span class=\"hint\">hover: paths · click: triggers and source · drag: pan · wheel: zoom · double-click: fit</span></header>\n");
}

fn edges(s: &mut String, p: &Picture, l: &Layout) {
    for e in &p.edges {
        let (fx, fy, fw) = (l.x[e.from], l.y[e.from], l.w[e.from]);
        let (tx, ty, tw) = (l.x[e.to], l.y[e.to], l.w[e.to]);
        let (d, mid) = if e.from == e.to {
            let (a, b) = (fx + fw * 0.7, fx + fw * 0.3);
            (
                format!(
                    "M{a:.1},{fy:.1} C{:.1},{:.1} {:.1},{:.1} {b:.1},{fy:.1}",
                    a + 10.0,
                    fy - 42.0,
                    b - 10.0,
                    fy - 42.0
                ),
                ((a + b) / 2.0, fy - 32.0),
            )
        } else if !e.back && tx > fx {
            let (x1, y1, x2, y2) = (fx + fw, fy + NODE_H / 2.0, tx, ty + NODE_H / 2.0);
            let c = ((x2 - x1) / 2.0).max(30.0);
            (
                format!("M{x1:.1},{y1:.1} C{:.1},{y1:.1} {:.1},{y2:.1} {x2:.1},{y2:.1}", x1 + c, x2 - c),
                bezier_mid(x1, y1, x1 + c, y1, x2 - c, y2, x2, y2),
            )
        } else {
            // A loop edge arcs below the nodes it joins, from the bottom of one to the other.
            let (x1, y1, x2, y2) = (fx + fw / 2.0, fy + NODE_H, tx + tw / 2.0, ty + NODE_H);
            let depth = 36.0 + ((x1 - x2).abs() * 0.08).min(50.0);
            let cy = y1.max(y2) + depth;
            (
                format!("M{x1:.1},{y1:.1} C{x1:.1},{cy:.1} {x2:.1},{cy:.1} {x2:.1},{y2:.1}"),
                bezier_mid(x1, y1, x1, cy, x2, cy, x2, y2),
            )
        };
        let mut class = String::from("edge");
        if e.back {
            class.push_str(" back");
        }
        if e.join == Join::And {
            class.push_str(" and");
        }
        let marker = if e.back { "arrow-back" } else { "arrow" };
        let _ = write!(s, "<g class=\"{class}\"><path d=\"{d}\" marker-end=\"url(#{marker})\"/>");
        if let Some(t) = e.text() {
            let _ = write!(s, "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>", mid.0, mid.1, esc(&t));
        }
        s.push_str("</g>\n");
    }
}

#[allow(clippy::too_many_arguments)] // the four control points of a cubic Bézier
fn bezier_mid(x0: f64, y0: f64, x1: f64, y1: f64, x2: f64, y2: f64, x3: f64, y3: f64) -> (f64, f64) {
    ((x0 + 3.0 * x1 + 3.0 * x2 + x3) / 8.0, (y0 + 3.0 * y1 + 3.0 * y2 + y3) / 8.0)
}

fn nodes(s: &mut String, p: &Picture, l: &Layout) {
    let h = NODE_H;
    for (i, n) in p.nodes.iter().enumerate() {
        let (x, y, w) = (l.x[i], l.y[i], l.w[i]);
        let mut class = format!("node {}", n.kind.as_str());
        if n.also_start {
            class.push_str(" also-start");
        }
        let count = p.run.as_ref().map(|r| r.counts[i]);
        if let Some(run) = &p.run {
            if run.failed.contains(&i) {
                class.push_str(" failed");
            } else if run.paused.contains(&i) {
                class.push_str(" paused");
            }
            class.push_str(if run.counts[i] > 0 { " taken" } else { " untaken" });
        }
        let _ = write!(s, "<g class=\"{class}\" data-step=\"{}\">", esc(&n.name));
        match n.kind {
            NodeKind::Start => {
                let _ = write!(
                    s,
                    "<rect class=\"shape\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h}\" rx=\"18\"/>"
                );
            }
            NodeKind::Listen => {
                let _ = write!(
                    s,
                    "<rect class=\"shape\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h}\" rx=\"4\"/>"
                );
            }
            NodeKind::Router => {
                let m = y + h / 2.0;
                let _ = write!(
                    s,
                    "<polygon class=\"shape\" points=\"{:.1},{y:.1} {:.1},{y:.1} {:.1},{m:.1} {:.1},{:.1} {:.1},{:.1} {x:.1},{m:.1}\"/>",
                    x + 12.0,
                    x + w - 12.0,
                    x + w,
                    x + w - 12.0,
                    y + h,
                    x + 12.0,
                    y + h
                );
            }
            NodeKind::Label => {
                let m = y + h / 2.0;
                let _ = write!(
                    s,
                    "<polygon class=\"shape\" points=\"{x:.1},{y:.1} {:.1},{y:.1} {:.1},{m:.1} {:.1},{:.1} {x:.1},{:.1}\"/>",
                    x + w - 12.0,
                    x + w,
                    x + w - 12.0,
                    y + h,
                    y + h
                );
            }
        }
        let _ = write!(s, "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>", x + w / 2.0, y + h / 2.0, esc(&n.name));
        if let Some(c) = count.filter(|c| *c > 0) {
            let label = format!("×{c}");
            let bw = 10.0 + label.chars().count() as f64 * 6.0;
            let _ = write!(
                s,
                "<rect class=\"badge-bg\" x=\"{:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"16\" rx=\"8\"/><text class=\"badge\" x=\"{:.1}\" y=\"{:.1}\">{label}</text>",
                x + w - bw + 6.0,
                y - 8.0,
                x + w - bw / 2.0 + 6.0,
                y
            );
        }
        s.push_str("</g>\n");
    }
}

fn data(p: &Picture, l: &Layout) -> Value {
    let nodes: Vec<Value> = p
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            json!({
                "name": n.name,
                "kind": n.kind.as_str(),
                "start": n.also_start,
                "trigger": n.trigger,
                "routes": n.routes,
                "source": n.source,
                "count": p.run.as_ref().map_or(0, |r| r.counts[i]),
            })
        })
        .collect();
    let edges: Vec<Value> = p.edges.iter().map(|e| json!([e.from, e.to, e.text()])).collect();
    json!({
        "name": p.name,
        "nodes": nodes,
        "edges": edges,
        "width": l.width,
        "height": l.height,
        "run": p.run.as_ref().map(|r| json!({"id": r.run_id, "status": r.status})),
    })
}

/// Escapes text for HTML content and attribute values.
fn esc(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    for c in t.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
