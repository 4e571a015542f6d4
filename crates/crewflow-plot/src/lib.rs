//! Pictures of crewflow flows.
//!
//! Every picture is drawn from a flow's compiled [`Graph`]: steps are nodes (starts, listeners
//! and routers each in their own shape and colour), triggers are edges (a router's edges carry
//! the labels it returns, members of an `and` or `or` say so), and edges that close a loop are
//! drawn apart (dotted, dashed, or arcing below in purple).
//!
//! - [`Plot::to_mermaid`]: a Mermaid `flowchart LR`, for Markdown on GitHub and in docs;
//! - [`Plot::to_dot`]: Graphviz DOT (`dot -Tsvg`);
//! - [`Plot::to_html`] / [`Plot::plot`]: one self-contained HTML page (inline SVG laid out left
//!   to right here in Rust, a few lines of inline script, nothing fetched from the network):
//!   hover a step to highlight its paths, click it for its triggers and where it is defined,
//!   drag to pan, wheel to zoom.
//!
//! [`Plot`] is implemented for [`Flow`] and [`Graph`]; a [`Picture`] with
//! [`Picture::with_run`] draws a stored run over its flow (steps taken and how often, where it
//! paused or failed).
//!
//! ```
//! use crewflow_core::FlowBuilder;
//! use crewflow_core::trigger::{label, step};
//! use crewflow_plot::Plot;
//!
//! type State = serde_json::Map<String, serde_json::Value>;
//!
//! let flow = FlowBuilder::<State>::new("review")
//!     .start("draft", |_cx, (): ()| async { Ok("text".to_string()) })
//!     .router("check", step("draft").or(label("revise")), |_cx, (): ()| async move {
//!         Ok("done".to_string())
//!     })
//!     .routes(["done", "revise"])
//!     .listen("publish", label("done"), |_cx, (): ()| async { Ok(()) })
//!     .build()
//!     .unwrap();
//! let mermaid = flow.to_mermaid();
//! assert!(mermaid.contains("n1 -- \"done\" --> n2"));
//! assert!(mermaid.contains("n1 -. \"or: revise\" .-> n1")); // the loop, dotted
//! let dir = std::env::temp_dir();
//! let page = flow.plot(dir.join("review.html")).unwrap();
//! assert!(std::fs::read_to_string(page).unwrap().contains("<svg"));
//! ```
//!
//! The page and the text forms are described in `docs/plot.md`.

mod html;
mod layout;
mod picture;
mod text;

use std::path::{Path, PathBuf};

use crewflow_core::graph::Graph;
use crewflow_core::{Flow, FlowState};

pub use picture::{Edge, Join, Node, NodeKind, Picture, RunOverlay};

/// Why a picture could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The file could not be written.
    #[error("cannot write the flow picture to {path}: {source}; check that the directory exists and is writable")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Pictures of a flow: Mermaid, DOT and an interactive HTML page.
pub trait Plot {
    /// The flow's picture (nodes and edges), to draw or to inspect.
    fn picture(&self) -> Picture;

    /// A Mermaid `flowchart LR`.
    fn to_mermaid(&self) -> String {
        self.picture().to_mermaid()
    }

    /// Graphviz DOT.
    fn to_dot(&self) -> String {
        self.picture().to_dot()
    }

    /// One self-contained HTML page.
    fn to_html(&self) -> String {
        self.picture().to_html()
    }

    /// Writes [`to_html`](Plot::to_html) to `path` (`.html` is not added); returns the path.
    fn plot(&self, path: impl AsRef<Path>) -> Result<PathBuf, PlotError> {
        self.picture().write_html(path)
    }
}

impl Plot for Graph {
    fn picture(&self) -> Picture {
        Picture::of(self)
    }
}

impl<S: FlowState> Plot for Flow<S> {
    fn picture(&self) -> Picture {
        Picture::of(self.graph())
    }
}

/// The inline code of the HTML page ([`Picture::html_inline_code`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InlineCode {
    /// The text of the `<style>` element.
    pub style: String,
    /// The text of the script element that runs (the flow's data is a JSON script element,
    /// which does not run).
    pub script: String,
}

impl Picture {
    /// A Mermaid `flowchart LR`: starts are stadiums, routers rhombi, listeners boxes; loop
    /// edges are dotted. With a run drawn over it, steps taken carry their count.
    pub fn to_mermaid(&self) -> String {
        text::mermaid(self)
    }

    /// Graphviz DOT (`rankdir=LR`): starts are ovals, routers diamonds, listeners boxes; loop
    /// edges are dashed and leave the ranking alone.
    pub fn to_dot(&self) -> String {
        text::dot(self)
    }

    /// One self-contained HTML page with the interactive picture.
    pub fn to_html(&self) -> String {
        html::html(self)
    }

    /// What every [`to_html`](Picture::to_html) page holds inline, whatever the flow: the
    /// text of its `<style>` element and of its script element, exactly as written. A server
    /// that shows the page under a Content-Security-Policy allows these two by hash
    /// (`crewflow-server` does); the page has no inline `style` attribute nor event handler.
    pub fn html_inline_code() -> InlineCode {
        InlineCode { style: html::inline_style(), script: html::inline_script() }
    }

    /// Writes [`to_html`](Picture::to_html) to `path`; returns the path.
    pub fn write_html(&self, path: impl AsRef<Path>) -> Result<PathBuf, PlotError> {
        let path = path.as_ref().to_path_buf();
        match std::fs::write(&path, self.to_html()) {
            Ok(()) => Ok(path),
            Err(source) => Err(PlotError::Write { path, source }),
        }
    }
}
