//! The flow handlers: list, describe, draw.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use crewflow_core::graph::Graph;
use crewflow_plot::{Picture, Plot};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::hosted::describe;
use crate::routes::{App, Reply, Shared, path_error, query_error};

impl App {
    /// A served flow's graph, its inputs, and whether it is conversational.
    fn graph_of(&self, name: &str) -> Result<(&Graph, Value, bool), ApiError> {
        if let Some(flow) = self.flows.get(name) {
            return Ok((flow.graph(), flow.inputs(), false));
        }
        if let Some((chat, _)) = self.chats.get(name) {
            return Ok((chat.graph(), chat.inputs(), true));
        }
        Err(self.unknown_flow(name))
    }

    pub(crate) fn unknown_flow(&self, name: &str) -> ApiError {
        let known: Vec<String> = self.flows.keys().chain(self.chats.keys()).cloned().collect();
        ApiError::unknown_flow(name, &known)
    }
}

pub(crate) async fn list_flows(State(app): Shared) -> Json<Value> {
    let mut flows: Vec<Value> = app
        .flows
        .values()
        .map(|f| json!({"name": f.name(), "steps": f.graph().len(), "conversational": false}))
        .chain(app.chats.values().map(|(c, strategy)| {
            json!({"name": c.name(), "steps": c.graph().len(), "conversational": true, "double_texting": strategy.as_str()})
        }))
        .collect();
    flows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Json(json!({ "flows": flows }))
}

pub(crate) async fn describe_flow(State(app): Shared, flow: Result<Path<String>, PathRejection>) -> Reply {
    let Path(flow) = flow.map_err(path_error)?;
    let (graph, inputs, conversational) = app.graph_of(&flow)?;
    let mut body = describe(graph, inputs, conversational);
    if let Some((_, strategy)) = app.chats.get(&flow) {
        body["double_texting"] = json!(strategy.as_str());
    }
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
pub(crate) struct PlotQuery {
    format: Option<String>,
}

/// The flow's picture: the self-contained HTML page of `crewflow-plot`, or its Mermaid or DOT
/// text with `?format=mermaid` / `?format=dot`.
pub(crate) async fn plot_flow(
    State(app): Shared,
    flow: Result<Path<String>, PathRejection>,
    query: Result<Query<PlotQuery>, QueryRejection>,
) -> Reply {
    let Path(flow) = flow.map_err(path_error)?;
    let Query(query) = query.map_err(query_error)?;
    let (graph, _, _) = app.graph_of(&flow)?;
    let picture: Picture = graph.picture();
    let (mime, text) = match query.format.as_deref().unwrap_or("html") {
        "html" => ("text/html; charset=utf-8", picture.to_html()),
        "mermaid" => ("text/plain; charset=utf-8", picture.to_mermaid()),
        "dot" => ("text/vnd.graphviz; charset=utf-8", picture.to_dot()),
        other => {
            return Err(ApiError::bad_request(format!(
                "`format` is `{other}`; it must be html (the default), mermaid or dot"
            )));
        }
    };
    // The page's policy, which allows the picture's own inline code by hash.
    let policy = if mime.starts_with("text/html") { crate::page::policy() } else { "default-src 'none'" };
    Ok(([(header::CONTENT_TYPE, mime), (header::CONTENT_SECURITY_POLICY, policy)], text).into_response())
}
