//! The text forms: Mermaid and Graphviz DOT.

use std::fmt::Write;

use crate::picture::{NodeKind, Picture};

/// Mermaid `flowchart LR`: starts are stadiums, routers rhombi, listeners boxes, free labels
/// flags; label and join edges carry their text; loop edges are dotted.
pub(crate) fn mermaid(p: &Picture) -> String {
    let mut s = String::with_capacity(64 + p.nodes.len() * 48 + p.edges.len() * 32);
    let _ = writeln!(s, "---\ntitle: {}\n---\nflowchart LR", mermaid_text(&p.name));
    for (i, n) in p.nodes.iter().enumerate() {
        let name = mermaid_text(&n.name);
        let (open, close) = match n.kind {
            NodeKind::Start => ("([", "])"),
            NodeKind::Listen => ("[", "]"),
            NodeKind::Router => ("{", "}"),
            NodeKind::Label => (">", "]"),
        };
        let mut class = n.kind.as_str().to_string();
        if let Some(run) = &p.run {
            if run.failed.contains(&i) {
                class = "failed".into();
            } else if run.paused.contains(&i) {
                class = "paused".into();
            } else if run.counts[i] > 0 {
                class = "taken".into();
            }
        }
        let count = p.run.as_ref().map(|r| r.counts[i]).filter(|c| *c > 0);
        match count {
            Some(c) => {
                let _ = writeln!(s, "  n{i}{open}\"{name} ×{c}\"{close}:::{class}");
            }
            None => {
                let _ = writeln!(s, "  n{i}{open}\"{name}\"{close}:::{class}");
            }
        }
    }
    for e in &p.edges {
        let arrow = match (e.back, e.text()) {
            (false, None) => "-->".to_string(),
            (true, None) => "-.->".to_string(),
            (false, Some(t)) => format!("-- \"{}\" -->", mermaid_text(&t)),
            (true, Some(t)) => format!("-. \"{}\" .->", mermaid_text(&t)),
        };
        let _ = writeln!(s, "  n{} {arrow} n{}", e.from, e.to);
    }
    s.push_str(concat!(
        "  classDef start fill:#dcfce7,stroke:#15803d,color:#14532d\n",
        "  classDef listen fill:#e0f2fe,stroke:#0369a1,color:#0c4a6e\n",
        "  classDef router fill:#fef3c7,stroke:#b45309,color:#78350f\n",
        "  classDef label fill:#f3f4f6,stroke:#6b7280,color:#374151\n",
    ));
    if p.run.is_some() {
        s.push_str(concat!(
            "  classDef taken stroke-width:3px,stroke:#1d4ed8\n",
            "  classDef paused fill:#fde68a,stroke:#d97706,stroke-width:3px\n",
            "  classDef failed fill:#fecaca,stroke:#b91c1c,stroke-width:3px\n",
        ));
    }
    s
}

/// Text inside Mermaid quotes: `"` and the characters Mermaid reads as markup become entities.
fn mermaid_text(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    for c in t.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Graphviz DOT, left to right: starts are ovals, routers diamonds, listeners boxes; loop
/// edges are dashed and do not constrain the ranking.
pub(crate) fn dot(p: &Picture) -> String {
    let mut s = String::with_capacity(128 + p.nodes.len() * 80 + p.edges.len() * 48);
    let _ = writeln!(s, "digraph {} {{", dot_id(&p.name));
    s.push_str("  rankdir=LR;\n  node [fontname=\"Helvetica\", style=filled];\n  edge [fontname=\"Helvetica\", fontsize=10];\n");
    for (i, n) in p.nodes.iter().enumerate() {
        let (shape, fill, stroke) = match n.kind {
            NodeKind::Start => ("oval", "#dcfce7", "#15803d"),
            NodeKind::Listen => ("box", "#e0f2fe", "#0369a1"),
            NodeKind::Router => ("diamond", "#fef3c7", "#b45309"),
            NodeKind::Label => ("cds", "#f3f4f6", "#6b7280"),
        };
        let mut attrs = format!("shape={shape}, fillcolor=\"{fill}\", color=\"{stroke}\"");
        if n.also_start {
            attrs.push_str(", peripheries=2");
        }
        if let Some(source) = &n.source {
            // shown on hover in Graphviz's SVG output
            let _ = write!(attrs, ", tooltip={}", dot_id(source));
        }
        let mut label = n.name.clone();
        if let Some(run) = &p.run {
            if run.counts[i] > 0 {
                label = format!("{} ×{}", n.name, run.counts[i]);
                attrs.push_str(", penwidth=3");
            }
            if run.failed.contains(&i) {
                attrs.push_str(", fillcolor=\"#fecaca\", color=\"#b91c1c\", penwidth=3");
            } else if run.paused.contains(&i) {
                attrs.push_str(", fillcolor=\"#fde68a\", color=\"#d97706\", penwidth=3");
            }
        }
        let _ = writeln!(s, "  n{i} [label={}, {attrs}];", dot_id(&label));
    }
    for e in &p.edges {
        let mut attrs = Vec::new();
        if let Some(t) = e.text() {
            attrs.push(format!("label={}", dot_id(&t)));
        }
        if e.back {
            attrs.push("style=dashed, constraint=false".to_string());
        }
        if attrs.is_empty() {
            let _ = writeln!(s, "  n{} -> n{};", e.from, e.to);
        } else {
            let _ = writeln!(s, "  n{} -> n{} [{}];", e.from, e.to, attrs.join(", "));
        }
    }
    s.push_str("}\n");
    s
}

/// A quoted DOT identifier.
fn dot_id(t: &str) -> String {
    let mut out = String::with_capacity(t.len() + 2);
    out.push('"');
    for c in t.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
