//! The architecture's rule for core's top-level modules: no circle of three or more imports
//! (docs/architecture.md, "Module graph"). Two modules may import each other; a longer circle
//! is a knot a reader cannot enter anywhere, which is what this test keeps out.
//!
//! Imports are read from the source: every `crate::<module>` path outside comments and outside
//! `#[cfg(test)] mod tests`, and the names inside `use crate::{..}`. Imports of `error` are left
//! out (every module reports errors).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("core's source folder is readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The code of a file without comments and without its unit-test module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

fn ident_at(text: &str) -> String {
    text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// The top-level modules a piece of code imports.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            found.extend(inner.split(',').map(|item| ident_at(item.trim())).filter(|m| !m.is_empty()));
        } else {
            found.insert(ident_at(rest));
        }
    }
    found
}

fn module_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = Graph::new();
    for path in rust_files(&src) {
        let relative = path.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a path").as_os_str().to_string_lossy().to_string();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" {
            continue;
        }
        let text = fs::read_to_string(&path).expect("a readable source file");
        graph.entry(module).or_default().extend(imports(&code_of(&text)));
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for (module, deps) in graph.iter_mut() {
        deps.retain(|d| d != module && d != "error" && modules.contains(d));
    }
    graph
}

/// Strongly connected components (Tarjan), each with more than one module.
fn circles(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct Walk<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        for d in &w.graph[v] {
            let d = d.as_str();
            if !w.index.contains_key(d) {
                visit(w, d);
                let low = w.low[v].min(w.low[d]);
                w.low.insert(v, low);
            } else if w.stack.contains(&d) {
                let low = w.low[v].min(w.index[d]);
                w.low.insert(v, low);
            }
        }
        if w.low[v] == w.index[v] {
            let mut component = BTreeSet::new();
            while let Some(m) = w.stack.pop() {
                component.insert(m.to_string());
                if m == v {
                    break;
                }
            }
            if component.len() > 1 {
                w.found.push(component);
            }
        }
    }
    let mut walk = Walk { graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), found: Vec::new() };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            visit(&mut walk, v);
        }
    }
    walk.found
}

#[test]
fn no_circle_of_three_or_more_among_core_modules() {
    let graph = module_graph();
    assert!(graph.len() > 20, "the walk found core's modules: {:?}", graph.keys());
    assert!(graph["driver"].contains("flow"), "the import reader sees `use crate::flow::..`");
    let knots: Vec<_> = circles(&graph).into_iter().filter(|c| c.len() >= 3).collect();
    assert!(
        knots.is_empty(),
        "core's modules import each other in a circle of three or more: {knots:?}; move the shared types \
         into a module both can import (as `handler` holds the step body the builder makes and the driver runs)"
    );
}

#[test]
fn the_reader_finds_circles() {
    let mut graph = Graph::new();
    for (m, deps) in [("a", &["b"][..]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])] {
        graph.insert(m.into(), deps.iter().map(|d| d.to_string()).collect());
    }
    assert_eq!(circles(&graph), vec![BTreeSet::from(["a".to_string(), "b".into(), "c".into()])]);
    assert_eq!(
        imports("use crate::{cx::Cx, feedback::Paused};\nlet x = crate::host::run();"),
        BTreeSet::from(["cx".to_string(), "feedback".into(), "host".into()])
    );
}
