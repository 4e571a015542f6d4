//! The commands that drive runs: `run` (or queue), `runs resume`, `runs fork`,
//! `feedback answer`, and how a run's end is reported.

use crewflow_core::{DurableError, FeedbackError};
use std::path::Path;
use std::sync::Arc;

use crewflow_core::persist::{LoadRun, RunStatus, RunStore};
use crewflow_core::{Error, EventKind, FeedbackRequest, RunId};
use serde_json::{Map, Value, json};

use crate::commands::{Ctx, not_found_run, parse_run_id, store_failed};
use crate::target::{Outcome, Target};
use crate::{CliError, Exit, InputArgs, RunArgs};

/// The store `run`-like commands keep runs in: the named one, else the definition's own.
pub(crate) fn named_store(ctx: &Ctx) -> Result<Option<Arc<dyn RunStore>>, CliError> {
    if !ctx.store_named() {
        return Ok(None);
    }
    let url = ctx.store_url();
    crewflow_store::open(&url)
        .map(Some)
        .map_err(|e| CliError::new(Exit::Store, format!("cannot open the store `{url}`: {e}")))
}

pub(crate) fn inputs_of(args: &InputArgs) -> Result<Map<String, Value>, CliError> {
    let bad = |m: String| CliError::new(Exit::Usage, m);
    let mut inputs = match (&args.inputs, &args.inputs_file) {
        (Some(text), _) => object(text, "--inputs").map_err(bad)?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad(format!("cannot read the inputs file {}: {e}", path.display())))?;
            object(&text, &format!("the inputs file {}", path.display())).map_err(bad)?
        }
        (None, None) => Map::new(),
    };
    for pair in &args.input {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(bad(format!("--input `{pair}` is not KEY=VALUE (e.g. --input topic=rust)")));
        };
        if key.is_empty() {
            return Err(bad(format!("--input `{pair}` has no key before `=`")));
        }
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
        inputs.insert(key.to_string(), value);
    }
    Ok(inputs)
}

fn object(text: &str, origin: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("{origin} must be a JSON object of state values, not {other}")),
        Err(e) => Err(format!("{origin} is not valid JSON: {e}")),
    }
}

pub(crate) async fn run(ctx: &Ctx, args: RunArgs) -> Result<Exit, CliError> {
    let flow = Target::resolve(ctx, &args.flow, named_store(ctx)?)?;
    if flow.is_compiled() && ctx.store_named() && flow.flow.store().is_none() && !ctx.json {
        // A compiled flow's store is chosen in code; say so rather than lose the run silently.
        eprintln!(
            "note: flow `{}` was built without a store, so this run is kept nowhere; give it one with FlowBuilder::store",
            flow.name()
        );
    }
    let kickoff = flow.kickoff(inputs_of(&args.inputs)?)?;
    if args.queue {
        return crate::worker::enqueue(ctx, &flow, kickoff).await;
    }
    let started = std::time::Instant::now();
    let (run_id, mut events, handle) =
        flow.flow.stream(kickoff).map_err(|e| CliError::new(Exit::Usage, format!("flow `{}`: {e}", flow.name())))?;
    while let Some(event) = events.next().await {
        if ctx.json {
            if let Ok(line) = serde_json::to_string(&event) {
                outln!("{line}");
            }
            continue;
        }
        let step = event.step.as_deref().unwrap_or("?");
        match &event.kind {
            EventKind::RunStarted { flow, .. } => eprintln!("run {run_id} of flow `{flow}` started"),
            EventKind::RunResumed { flow, steps_done, .. } => {
                eprintln!("run {run_id} of flow `{flow}` resumed after {steps_done} steps")
            }
            EventKind::StepStarted { activation, .. } => eprintln!("  start  {step} #{activation}"),
            EventKind::StepFinished { activation, elapsed_us, .. } => {
                eprintln!("  done   {step} #{activation} in {}", millis(*elapsed_us))
            }
            EventKind::StepFailed { activation, error } => eprintln!("  FAILED {step} #{activation}: {error}"),
            EventKind::StepRetrying { activation, attempt, error, delay_ms } => {
                eprintln!("  retry  {step} #{activation}: attempt {attempt} failed ({error}); again in {delay_ms} ms")
            }
            EventKind::RouteTaken { label, .. } => eprintln!("  route  {step} -> {label}"),
            _ => {}
        }
    }
    let result = handle.await;
    finish(ctx, &flow, run_id, result, started, &args.flow)
}

fn millis(us: u64) -> String {
    if us >= 10_000 { format!("{} ms", us / 1000) } else { format!("{:.1} ms", us as f64 / 1000.0) }
}

/// Reports how a run ended (finished, paused, failed) and picks the exit status.
pub(crate) fn finish(
    ctx: &Ctx,
    flow: &Target,
    run_id: RunId,
    result: Result<Outcome, Error>,
    started: std::time::Instant,
    flow_file: &Path,
) -> Result<Exit, CliError> {
    let elapsed = started.elapsed().as_micros() as u64;
    match result {
        Ok(run) => {
            if let Some(request) = &run.paused {
                let store = if ctx.store_named() { format!(" --store {}", ctx.store_url()) } else { String::new() };
                if ctx.json {
                    outln!(
                        "{}",
                        json!({"type": "result", "run_id": run_id.to_string(), "status": "paused", "request": request_json(request)})
                    );
                } else {
                    eprintln!(
                        "paused: run {run_id} waits for feedback on step `{}`: {}\n  answer with: crewflow feedback answer {run_id} <answer> --flow {}{store}",
                        request.step,
                        request.message,
                        flow_file.display()
                    );
                }
                return Ok(Exit::Paused);
            }
            let output = run.output;
            if ctx.json {
                outln!(
                    "{}",
                    json!({"type": "result", "run_id": run_id.to_string(), "status": "finished", "steps": run.steps, "output": output, "elapsed_ms": elapsed / 1000})
                );
            } else {
                eprintln!(
                    "finished: run {run_id} of flow `{}`, {} steps in {}",
                    flow.name(),
                    run.steps,
                    millis(elapsed)
                );
                outln!("{}", output.map(|o| pretty(&o)).unwrap_or_else(|| "null".into()));
            }
            Ok(Exit::Ok)
        }
        Err(e) => {
            // Refusals leave the run as it was: said as they are, not as a failed run.
            let refused = match &e {
                Error::Durable(DurableError::UnknownRun { .. })
                | Error::Feedback(FeedbackError::UnknownFeedbackRequest { .. })
                | Error::Feedback(FeedbackError::NotPaused { .. }) => Some(Exit::NotFound),
                Error::Feedback(FeedbackError::UnmatchedFeedback { .. })
                | Error::Durable(DurableError::RunOfAnotherFlow { .. })
                | Error::Durable(DurableError::DefinitionChanged { .. })
                | Error::Durable(DurableError::RunOwned(_))
                | Error::Durable(DurableError::AlreadyDriven { .. }) => Some(Exit::Usage),
                Error::Durable(DurableError::Store { .. }) | Error::Durable(DurableError::NoStore { .. }) => {
                    Some(Exit::Store)
                }
                _ => None,
            };
            let status = if matches!(e, Error::Cancelled { .. }) { "cancelled" } else { "failed" };
            if ctx.json {
                let status = if refused.is_some() { "refused" } else { status };
                outln!(
                    "{}",
                    json!({"type": "result", "run_id": run_id.to_string(), "status": status, "error": e.to_string()})
                );
            }
            Err(match refused {
                Some(Exit::Store) => {
                    CliError::new(Exit::Store, format!("run {run_id} of flow `{}` {status}: {e}", flow.name()))
                }
                Some(exit) => CliError::new(exit, e.to_string()),
                None => CliError::new(
                    Exit::RunFailed,
                    format!("run {run_id} of flow `{}` {status}: {}", flow.name(), without_run_id(&e)),
                ),
            })
        }
    }
}

/// The error without the run id the line already names.
fn without_run_id(e: &Error) -> String {
    match e {
        Error::StepFailed { step, source, .. } => format!("step `{step}` failed: {source}"),
        other => other.to_string(),
    }
}

fn pretty(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string()),
    }
}

fn request_json(r: &FeedbackRequest) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

pub(crate) async fn runs_resume(ctx: &Ctx, run_id: &str, flow_file: &Path) -> Result<Exit, CliError> {
    let id = parse_run_id(run_id)?;
    let flow = Target::resolve(ctx, flow_file, named_store(ctx)?)?;
    let started = std::time::Instant::now();
    let result = flow.flow.resume(id).await;
    finish(ctx, &flow, id, result, started, flow_file)
}

pub(crate) async fn feedback_answer(
    ctx: &Ctx,
    run_id: &str,
    answer: &str,
    flow_file: &Path,
    request: Option<u64>,
) -> Result<Exit, CliError> {
    let id = parse_run_id(run_id)?;
    let flow = Target::resolve(ctx, flow_file, named_store(ctx)?)?;
    // Say plainly when the run waits for nothing, rather than the engine's resume error.
    if let Some(store) = flow.flow.store() {
        let url = store.describe();
        match store.load_run_with(id, LoadRun::new()).await.map_err(|e| store_failed(&url, "load the run", e))? {
            None => return Err(not_found_run(id, &url)),
            Some(r) if r.status != RunStatus::Paused => {
                return Err(CliError::new(
                    Exit::NotFound,
                    format!("run {id} is {}, not paused: it waits for no feedback", r.status.as_str()),
                ));
            }
            Some(_) => {}
        }
    }
    let started = std::time::Instant::now();
    let result = flow.flow.answer(id, request, answer).await;
    finish(ctx, &flow, id, result, started, flow_file)
}

/// `crewflow runs fork`: a new run from the state the source run reached, inputs over it.
pub(crate) async fn runs_fork(ctx: &Ctx, run_id: &str, flow_file: &Path, inputs: &InputArgs) -> Result<Exit, CliError> {
    let source = parse_run_id(run_id)?;
    let flow = Target::resolve(ctx, flow_file, named_store(ctx)?)?;
    let kickoff = flow.fork_kickoff(inputs_of(inputs)?)?;
    // The fork's id is chosen here, so that every report (also of a failure) names it.
    let id = RunId::new();
    if !ctx.json {
        eprintln!("forking run {source} of flow `{}` as run {id}", flow.name());
    }
    let started = std::time::Instant::now();
    let result = flow.flow.fork(source, kickoff.run_id(id)).await;
    finish(ctx, &flow, id, result, started, flow_file)
}
