//! Run handlers that act on a run already there: cancel, resume, fork.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use crewflow_core::RunId;
use crewflow_core::persist::{LoadRun, RunEnd, RunStatus, StoredRun, process_owner};
use serde_json::json;

use crate::error::ApiError;
use crate::routes::{
    App, Reply, Shared, WaitQuery, accepted_or_wait, body_error, drive, object_body, parse_run_id, path_error,
    query_error,
};

impl App {
    async fn stored(&self, id: &str) -> Result<(RunId, StoredRun), ApiError> {
        let run_id = parse_run_id(id)?;
        let stored =
            self.store.load_run(run_id).await.map_err(ApiError::store)?.ok_or_else(|| ApiError::unknown_run(id))?;
        Ok((run_id, stored))
    }

    fn driven_here(&self, run_id: RunId) -> bool {
        self.live.get(run_id).is_some_and(|l| l.ended().is_none())
    }
}

fn busy(run_id: RunId) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "run_busy",
        format!("run {run_id} is being driven (here or by another process); wait for it, or cancel it where it runs"),
    )
}

/// Cancels a run this server drives: in-flight steps are cancelled and the run ends
/// `cancelled`. `202` at once, or the result with `?wait=true`. A paused run, wherever it
/// paused, is cancelled in the store at once (`200`).
pub(crate) async fn cancel_run(
    State(app): Shared,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Reply {
    let Path(id) = id.map_err(path_error)?;
    let run_id = parse_run_id(&id)?;
    let Query(query) = query.map_err(query_error)?;
    if let Some(live) = app.live.get(run_id)
        && live.cancel()
    {
        let flow = live.flow.clone();
        return accepted_or_wait(&live, run_id, &flow, query.wait).await;
    }
    let (_, stored) = app.stored(&id).await?;
    match stored.status {
        RunStatus::Paused => cancel_paused(&app, run_id, &stored).await,
        RunStatus::Running | RunStatus::Queued => Err(ApiError::new(
            StatusCode::CONFLICT,
            "run_busy",
            format!("run {run_id} is driven by another process (or a worker): cancel it there"),
        )),
        status => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_running",
            format!("run {run_id} is {}, not running: there is nothing to cancel", status.as_str()),
        )),
    }
}

/// How long the claim taken to cancel a paused run holds, should the process die between the
/// claim and the end (the run is then an orphan a worker may take).
const CANCEL_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// Cancels a paused run through the store: the pause is claimed at the checkpoint it was read
/// at (the same guard two answers to one pause go through, so an answer and a cancel racing
/// each other never both win), then the run is ended `cancelled`. Its pending feedback is no
/// longer listed or answerable; its completed steps stay, and it can be resumed or forked.
async fn cancel_paused(app: &App, run_id: RunId, stored: &StoredRun) -> Reply {
    let taken = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_paused",
            format!("run {run_id} was answered (or taken over) meanwhile; GET /runs/{run_id} shows where it stands"),
        )
    };
    if app.driven_here(run_id) {
        return Err(taken());
    }
    let owner = process_owner();
    let claim = app
        .store
        .claim_paused(run_id, stored.seq, &owner, CANCEL_LEASE)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(taken)?;
    let end = RunEnd {
        run_id,
        fencing: claim.fencing,
        status: RunStatus::Cancelled,
        checkpoint: None,
        final_activation: None,
        error: None,
    };
    app.store.end_run(&end).await.map_err(ApiError::store)?;
    // A run paused here keeps one stream: it now ends with its cancellation.
    if app.live.get(run_id).is_some()
        && let Some(live) = app.live.begin(run_id, &stored.flow)
    {
        let at = app.store.load_run_with(run_id, LoadRun::new()).await.ok().flatten().map(|r| json!(r.updated_at));
        let frame = json!({"run_id": run_id.to_string(), "at": at, "step": null, "seq": 1});
        live.push(crate::frames::Frame::new("run_cancelled", frame));
        live.end(crate::live::Ended::Err {
            cancelled: true,
            refused: false,
            message: "cancelled while paused".into(),
            status: StatusCode::OK,
            code: "cancelled",
        });
    }
    let body = json!({"run_id": run_id.to_string(), "flow": stored.flow, "status": "cancelled"});
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// Continues a stored run from its last checkpoint: a failed or cancelled run, or one whose
/// process died. Completed steps do not run again.
pub(crate) async fn resume_run(
    State(app): Shared,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Reply {
    let Path(id) = id.map_err(path_error)?;
    let Query(query) = query.map_err(query_error)?;
    let (run_id, stored) = app.stored(&id).await?;
    let hosted = app.flow(&stored.flow)?.clone();
    if app.driven_here(run_id) {
        return Err(busy(run_id));
    }
    match stored.status {
        RunStatus::Finished => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_resumable",
                format!(
                    "run {run_id} is finished: there is nothing to resume; POST /runs/{run_id}/fork starts a new run from its state"
                ),
            ));
        }
        RunStatus::Paused => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_resumable",
                format!("run {run_id} is paused for feedback: answer it with POST /runs/{run_id}/feedback"),
            ));
        }
        _ => {}
    }
    let live = app.live.begin(run_id, &stored.flow).ok_or_else(|| busy(run_id))?;
    let driven = match hosted.resume(run_id) {
        Ok(driven) => driven,
        Err(e) => {
            let api = ApiError::engine(e);
            live.end(crate::live::Ended::Err {
                cancelled: false,
                refused: true,
                message: api.message.clone(),
                status: api.status,
                code: api.code,
            });
            return Err(api);
        }
    };
    drive(&app, live.clone(), driven);
    accepted_or_wait(&live, run_id, &stored.flow, query.wait).await
}

/// Starts a new run of the run's flow from the state the run reached (its last checkpoint),
/// the body's inputs merged over it; the source run is left as it is.
pub(crate) async fn fork_run(
    State(app): Shared,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<WaitQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let body = body.map_err(body_error)?;
    let Path(id) = id.map_err(path_error)?;
    let Query(query) = query.map_err(query_error)?;
    let inputs = object_body(&body, "inputs to merge over the run's state")?;
    let (source, stored) = app.stored(&id).await?;
    let hosted = app.flow(&stored.flow)?.clone();
    let driven = hosted.fork(source, &stored.state, inputs).await.map_err(ApiError::engine)?;
    let run_id = driven.run_id;
    let live = app.live.begin(run_id, &stored.flow).ok_or_else(|| busy(run_id))?;
    drive(&app, live.clone(), driven);
    accepted_or_wait(&live, run_id, &stored.flow, query.wait).await
}
