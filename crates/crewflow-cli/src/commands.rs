//! What each subcommand does.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use crewflow_chat::{SessionFilter, SessionStore};
use crewflow_core::persist::{RunEnd, RunFilter, RunStatus, RunStore, RunTree, StoredRun};
use crewflow_core::{ConsoleFeedback, DeferredFeedback, RunId};
use crewflow_declarative::{DeclarativeFlow, FlowDefinition, Registry};
use crewflow_plot::Picture;
use serde_json::{Value, json};

use crate::drive::{feedback_answer, run, runs_fork, runs_resume};
use crate::target::{AnyFlow, Target};
use crate::{App, Cli, CliError, Command, Exit, FeedbackCommand, Format, PlotArgs, RunsCommand, SessionsCommand};

pub(crate) async fn dispatch(cli: Cli, app: App) -> Result<Exit, CliError> {
    let ctx = Ctx { store: cli.store.or(app.default_store), json: cli.json, mounted: app.flows, chats: app.chats };
    match cli.command {
        Command::Run(args) => run(&ctx, args).await,
        Command::Plot(args) => plot(&ctx, args).await,
        Command::Runs(RunsCommand::List { flow, status, limit, parent }) => {
            runs_list(&ctx, flow, status, limit, parent).await
        }
        Command::Runs(RunsCommand::Show { run_id }) => runs_show(&ctx, &run_id).await,
        Command::Runs(RunsCommand::Resume { run_id, flow }) => runs_resume(&ctx, &run_id, &flow).await,
        Command::Runs(RunsCommand::Cancel { run_id }) => runs_cancel(&ctx, &run_id).await,
        Command::Runs(RunsCommand::Fork { run_id, flow, inputs }) => runs_fork(&ctx, &run_id, &flow, &inputs).await,
        Command::Feedback(FeedbackCommand::List { flow }) => feedback_list(&ctx, flow).await,
        Command::Feedback(FeedbackCommand::Answer { run_id, answer, flow, request }) => {
            feedback_answer(&ctx, &run_id, &answer, &flow, request).await
        }
        Command::Sessions(SessionsCommand::List { flow, limit }) => sessions_list(&ctx, flow, limit).await,
        Command::Sessions(SessionsCommand::Show { flow, id }) => sessions_show(&ctx, &flow, &id).await,
        Command::Sessions(SessionsCommand::Delete { flow, id }) => sessions_delete(&ctx, &flow, &id).await,
        Command::Trace(args) if args.otlp.is_some() => {
            let endpoint = args.otlp.unwrap_or_default();
            crate::trace::otlp(&ctx, args.run_id.as_deref(), args.session.as_deref(), &endpoint).await
        }
        Command::Trace(args) => match (args.run_id, args.session, args.html) {
            (_, Some(session), Some(path)) => crate::trace_html::session(&ctx, &session, &path).await,
            (_, Some(session), None) => crate::trace::session(&ctx, &session).await,
            (Some(run_id), None, Some(path)) => crate::trace_html::run(&ctx, &run_id, &path).await,
            (Some(run_id), None, None) => crate::trace::run(&ctx, &run_id).await,
            (None, None, _) => Err(CliError::new(Exit::Usage, "give a run id, or --session FLOW/ID")),
        },
        Command::Compact(args) => crate::compact::compact(&ctx, args).await,
        Command::Keys(command) => crate::keys::keys(&ctx, command).await,
        Command::Worker(args) => crate::worker::worker(&ctx, args).await,
        Command::Serve(args) => crate::serve::serve(&ctx, args).await,
        Command::Chat(args) => crate::chat::chat(&ctx, args).await,
        Command::New(args) => crate::new::new(&ctx, &args),
        Command::Completions { .. } => Ok(Exit::Ok),
    }
}

/// The global options every command sees, and the flows compiled into the binary.
pub(crate) struct Ctx {
    store: Option<String>,
    pub json: bool,
    mounted: Vec<Arc<dyn AnyFlow>>,
    chats: Vec<Arc<dyn crate::chat::AnyChat>>,
}

impl Ctx {
    /// The compiled flow named `arg`, if the binary mounted one.
    pub fn mounted(&self, arg: &Path) -> Option<Arc<dyn AnyFlow>> {
        let name = arg.to_str()?;
        self.mounted.iter().find(|f| f.name() == name).cloned()
    }

    /// The names of the compiled flows.
    pub fn mounted_names(&self) -> Vec<String> {
        self.mounted.iter().map(|f| f.name().to_string()).collect()
    }

    /// Every compiled flow the binary mounted.
    pub fn all_mounted(&self) -> Vec<Arc<dyn AnyFlow>> {
        self.mounted.clone()
    }

    /// Every conversational flow the binary mounted.
    pub fn chats(&self) -> Vec<Arc<dyn crate::chat::AnyChat>> {
        self.chats.clone()
    }

    /// The store's URL: `--store`, else `$CREWFLOW_DB`, else `crewflow.db`.
    pub fn store_url(&self) -> String {
        self.store
            .clone()
            .or_else(|| std::env::var(crewflow_store::DEFAULT_STORE_VAR).ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "crewflow.db".to_string())
    }

    /// Whether a store was named (flag or environment): then `run` keeps runs there.
    pub fn store_named(&self) -> bool {
        self.store.is_some() || std::env::var(crewflow_store::DEFAULT_STORE_VAR).is_ok_and(|v| !v.is_empty())
    }

    /// The store, for commands that read what is in it: a SQLite file must exist already.
    pub fn runs(&self) -> Result<Arc<dyn RunStore>, CliError> {
        let url = self.store_url();
        require_sqlite_file(&url)?;
        crewflow_store::open(&url)
            .map_err(|e| CliError::new(Exit::Store, format!("cannot open the store `{url}`: {e}")))
    }

    /// The store of sessions.
    pub fn sessions(&self) -> Result<Arc<dyn SessionStore>, CliError> {
        let url = self.store_url();
        require_sqlite_file(&url)?;
        crewflow_store::open_sessions(&url)
            .map_err(|e| CliError::new(Exit::Store, format!("cannot open the store `{url}`: {e}")))
    }
}

/// A failed store call: exit 4, with the store named and what to check.
pub(crate) fn store_failed(url: &str, action: &str, e: impl std::fmt::Display) -> CliError {
    CliError::new(
        Exit::Store,
        format!(
            "could not {action} in the store `{url}`: {e}; check the URL (--store or $CREWFLOW_DB) and that the database is up"
        ),
    )
}

/// Reading commands never create an empty SQLite file where a store was expected.
fn require_sqlite_file(url: &str) -> Result<(), CliError> {
    if url.contains("://") && !url.starts_with("sqlite:") {
        return Ok(());
    }
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"));
    let path = match rest {
        Some(r) if r.starts_with(":memory:") => return Ok(()),
        Some(r) => r.split('?').next().unwrap_or(r),
        None => url,
    };
    if Path::new(path).exists() {
        Ok(())
    } else {
        Err(CliError::new(
            Exit::Store,
            format!("no SQLite store at `{path}`; name the store runs were kept in with --store or $CREWFLOW_DB"),
        ))
    }
}

pub(crate) fn parse_run_id(text: &str) -> Result<RunId, CliError> {
    text.parse().map_err(|_| {
        CliError::new(
            Exit::Usage,
            format!("`{text}` is not a run id (a UUID such as 0193f7a2-…); `crewflow runs list` shows them"),
        )
    })
}

/// Builds a YAML/JSON flow with what the command line can offer: pausing (`deferred`, the
/// default) and `console` feedback providers, and the named store, if any.
pub(crate) fn load_flow(path: &Path, store: Option<Arc<dyn RunStore>>) -> Result<DeclarativeFlow, CliError> {
    let definition = FlowDefinition::from_path(path).map_err(|e| match e {
        crewflow_declarative::DeclarativeError::Read { .. } => {
            CliError::new(Exit::Usage, format!("{e}; check the path of the flow file"))
        }
        e => CliError::new(Exit::Usage, e.to_string()),
    })?;
    let mut registry = Registry::new()
        .default_feedback_provider(DeferredFeedback)
        .feedback_provider("deferred", DeferredFeedback)
        .feedback_provider("console", ConsoleFeedback);
    if let Some(store) = store {
        registry = registry.store(store);
    }
    definition.build(&registry).map_err(|e| {
        let mut message = e.to_string();
        if message.contains("register it with Registry::function") {
            message.push_str(
                "; the crewflow command registers no Rust functions: run this flow from your own binary, whose Registry has them",
            );
        }
        CliError::new(Exit::Usage, message)
    })
}

async fn plot(ctx: &Ctx, args: PlotArgs) -> Result<Exit, CliError> {
    // A picture never opens the definition's store: build against an in-memory one.
    let memory = crewflow_store::open("sqlite::memory:").map_err(|e| CliError::new(Exit::Store, e.to_string()))?;
    let flow = Target::resolve(ctx, &args.flow, Some(memory))?;
    let mut picture = Picture::of(flow.flow.graph());
    if let Some(id) = &args.run {
        let run_id = parse_run_id(id)?;
        let url = ctx.store_url();
        let stored = ctx.runs()?.load_run(run_id).await.map_err(|e| store_failed(&url, "load the run", e))?;
        let stored = stored.ok_or_else(|| not_found_run(run_id, &url))?;
        if stored.flow != flow.name() {
            return Err(CliError::new(
                Exit::Usage,
                format!(
                    "run {run_id} belongs to flow `{}`, not `{}`; plot it with that flow's file",
                    stored.flow,
                    flow.name()
                ),
            ));
        }
        picture = picture.with_run(&stored);
    }
    let text = match args.format {
        Format::Html => None,
        Format::Mermaid => Some(picture.to_mermaid()),
        Format::Dot => Some(picture.to_dot()),
    };
    match (text, &args.output) {
        (Some(text), None) => out!("{text}"),
        (Some(text), Some(path)) => std::fs::write(path, text)
            .map_err(|e| CliError::new(Exit::Usage, format!("cannot write {}: {e}", path.display())))?,
        (None, path) => {
            let path = path.clone().unwrap_or_else(|| format!("{}.html", flow.name()).into());
            let written = picture.write_html(&path).map_err(|e| CliError::new(Exit::Usage, e.to_string()))?;
            if ctx.json {
                outln!("{}", json!({"written": written.display().to_string(), "steps": flow.flow.graph().len()}));
            } else {
                eprintln!("wrote {} ({} steps)", written.display(), flow.flow.graph().len());
            }
        }
    }
    Ok(Exit::Ok)
}

pub(crate) fn not_found_run(run_id: RunId, url: &str) -> CliError {
    CliError::new(
        Exit::NotFound,
        format!("no run {run_id} in the store `{url}`; `crewflow runs list` shows the stored runs"),
    )
}

async fn runs_list(
    ctx: &Ctx,
    flow: Option<String>,
    status: Option<String>,
    limit: usize,
    parent: Option<String>,
) -> Result<Exit, CliError> {
    let status = match status.as_deref() {
        None => None,
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            CliError::new(
                Exit::Usage,
                format!("unknown status `{s}`; use queued, running, paused, finished, failed or cancelled"),
            )
        })?),
    };
    let url = ctx.store_url();
    let store = ctx.runs()?;
    let parent = parent.as_deref().map(parse_run_id).transpose()?;
    let filter = RunFilter { flow, status, limit, parent };
    let runs = store.list_runs(&filter).await.map_err(|e| store_failed(&url, "list runs", e))?;
    if ctx.json {
        for r in &runs {
            outln!(
                "{}",
                json!({"run_id": r.run_id.to_string(), "flow": r.flow, "status": r.status.as_str(), "steps": r.steps_done,
                       "created_at": r.created_at.to_rfc3339(), "updated_at": r.updated_at.to_rfc3339(), "error": r.error,
                       "parent": r.parent.map(|p| json!({"run_id": p.run_id.to_string(), "activation": p.activation}))})
            );
        }
        return Ok(Exit::Ok);
    }
    if runs.is_empty() {
        eprintln!("no runs in {url}");
        return Ok(Exit::Ok);
    }
    let mut out = format!("{:<36}  {:<20}  {:<9}  {:>5}  {:<19}\n", "RUN", "FLOW", "STATUS", "STEPS", "UPDATED (UTC)");
    for r in &runs {
        let _ = writeln!(
            out,
            "{:<36}  {:<20}  {:<9}  {:>5}  {}",
            r.run_id,
            r.flow,
            r.status.as_str(),
            r.steps_done,
            r.updated_at.format("%Y-%m-%d %H:%M:%S")
        );
    }
    out!("{out}");
    Ok(Exit::Ok)
}

pub(crate) async fn load(ctx: &Ctx, run_id: &str) -> Result<(StoredRun, String), CliError> {
    let run_id = parse_run_id(run_id)?;
    let url = ctx.store_url();
    let store = ctx.runs()?;
    let stored = store.load_run(run_id).await.map_err(|e| store_failed(&url, "load the run", e))?;
    Ok((stored.ok_or_else(|| not_found_run(run_id, &url))?, url))
}

/// A run and the runs started from its steps (recursively), for its trace.
pub(crate) async fn load_tree(ctx: &Ctx, run_id: &str) -> Result<RunTree, CliError> {
    let run_id = parse_run_id(run_id)?;
    let url = ctx.store_url();
    let store = ctx.runs()?;
    let tree = RunTree::load(store.as_ref(), run_id).await.map_err(|e| store_failed(&url, "load the run", e))?;
    tree.ok_or_else(|| not_found_run(run_id, &url))
}

fn pending_of(stored: &StoredRun) -> Vec<Value> {
    if stored.status != RunStatus::Paused {
        return Vec::new();
    }
    let record: Value = stored.feedback.as_deref().and_then(|f| serde_json::from_str(f).ok()).unwrap_or(Value::Null);
    record
        .get("pending")
        .and_then(Value::as_array)
        .map(|p| p.iter().filter_map(|p| p.get("request").cloned()).collect())
        .unwrap_or_default()
}

pub(crate) fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

async fn runs_show(ctx: &Ctx, run_id: &str) -> Result<Exit, CliError> {
    let (r, _) = load(ctx, run_id).await?;
    let pending = pending_of(&r);
    if ctx.json {
        let steps: Vec<Value> = r
            .steps
            .iter()
            .map(|s| json!({"activation": s.activation, "step": &*s.step, "output": parse_json(&s.output), "finished_at": s.finished_at.to_rfc3339()}))
            .collect();
        outln!(
            "{}",
            json!({"run_id": r.run_id.to_string(), "flow": r.flow, "status": r.status.as_str(), "inputs": r.inputs.as_deref().map(parse_json),
                   "state": parse_json(&r.state), "steps": steps, "final_activation": r.final_activation, "error": r.error,
                   "pending": pending, "owner": r.owner, "created_at": r.created_at.to_rfc3339(), "updated_at": r.updated_at.to_rfc3339(),
                   "parent": r.parent.map(|p| json!({"run_id": p.run_id.to_string(), "activation": p.activation}))})
        );
        return Ok(Exit::Ok);
    }
    let mut out = String::new();
    let _ = writeln!(out, "run      {}", r.run_id);
    let _ = writeln!(out, "flow     {}", r.flow);
    let _ = writeln!(out, "status   {}", r.status.as_str());
    if let Some(p) = r.parent {
        let _ = writeln!(out, "parent   run {} (step execution #{})", p.run_id, p.activation);
    }
    let _ = writeln!(out, "created  {}", r.created_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"));
    let _ = writeln!(out, "updated  {}", r.updated_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"));
    if let Some(inputs) = &r.inputs {
        let _ = writeln!(out, "inputs   {inputs}");
    }
    if let Some(e) = &r.error {
        let _ = writeln!(out, "error    {e}");
    }
    let _ = writeln!(out, "steps    {}", r.steps.len());
    for s in &r.steps {
        let mark = if Some(s.activation) == r.final_activation { " (output)" } else { "" };
        let _ = writeln!(out, "  #{:<4} {:<24} {}{mark}", s.activation, s.step, clip(&s.output, 80));
    }
    for p in &pending {
        let _ = writeln!(
            out,
            "pending  request {} on step `{}`: {}",
            p["id"],
            p["step"].as_str().unwrap_or("?"),
            p["message"].as_str().unwrap_or("")
        );
    }
    let _ = writeln!(out, "state    {}", clip(&r.state, 200));
    out!("{out}");
    Ok(Exit::Ok)
}

pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max { s.to_string() } else { format!("{}…", s.chars().take(max).collect::<String>()) }
}

async fn runs_cancel(ctx: &Ctx, run_id: &str) -> Result<Exit, CliError> {
    let (r, url) = load(ctx, run_id).await?;
    if matches!(r.status, RunStatus::Finished | RunStatus::Cancelled) {
        return Err(CliError::new(
            Exit::Usage,
            format!("run {} has {} already; there is nothing to cancel", r.run_id, r.status.as_str()),
        ));
    }
    let store = ctx.runs()?;
    let owner = crewflow_core::persist::process_owner();
    let lease = std::time::Duration::from_secs(10);
    let claim = if r.status == RunStatus::Paused {
        store
            .claim_paused(r.run_id, r.seq, &owner, lease)
            .await
            .map_err(|e| store_failed(&url, "take over the run", e))?
            .ok_or_else(|| {
                CliError::new(
                    Exit::RunFailed,
                    format!("run {} was answered or resumed meanwhile; show it again", r.run_id),
                )
            })?
    } else {
        store.claim_run(r.run_id, &owner, lease, None).await.map_err(|e| {
            if e.downcast_ref::<crewflow_core::persist::RunOwned>().is_some() {
                CliError::new(Exit::RunFailed, format!("cannot cancel: {e}"))
            } else {
                store_failed(&url, "take over the run", e)
            }
        })?
    };
    let end = RunEnd {
        run_id: r.run_id,
        fencing: claim.fencing,
        status: RunStatus::Cancelled,
        checkpoint: None,
        final_activation: None,
        error: Some("cancelled with `crewflow runs cancel`".into()),
    };
    store.end_run(&end).await.map_err(|e| store_failed(&url, "record the cancellation", e))?;
    if ctx.json {
        outln!("{}", json!({"run_id": r.run_id.to_string(), "status": "cancelled", "was": r.status.as_str()}));
    } else {
        eprintln!("cancelled run {} (it was {})", r.run_id, r.status.as_str());
    }
    Ok(Exit::Ok)
}

async fn feedback_list(ctx: &Ctx, flow: Option<String>) -> Result<Exit, CliError> {
    let url = ctx.store_url();
    let store = ctx.runs()?;
    let filter = RunFilter { flow, status: Some(RunStatus::Paused), limit: 1000, ..Default::default() };
    let runs = store.list_runs(&filter).await.map_err(|e| store_failed(&url, "list paused runs", e))?;
    let mut n = 0;
    for summary in runs {
        let Some(stored) = store.load_run(summary.run_id).await.map_err(|e| store_failed(&url, "load the run", e))?
        else {
            continue;
        };
        for p in pending_of(&stored) {
            n += 1;
            if ctx.json {
                outln!("{}", json!({"run_id": stored.run_id.to_string(), "flow": stored.flow, "request": p}));
            } else {
                let emit =
                    p["emit"].as_array().map(|e| e.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("|"));
                outln!(
                    "{}  {}  request {}  step `{}`: {}{}\n    output: {}",
                    stored.run_id,
                    stored.flow,
                    p["id"],
                    p["step"].as_str().unwrap_or("?"),
                    p["message"].as_str().unwrap_or(""),
                    emit.filter(|e| !e.is_empty()).map(|e| format!(" [{e}]")).unwrap_or_default(),
                    clip(&p["output"].to_string(), 120)
                );
            }
        }
    }
    if n == 0 && !ctx.json {
        eprintln!("no run waits for feedback in {url}");
    }
    Ok(Exit::Ok)
}

async fn sessions_list(ctx: &Ctx, flow: Option<String>, limit: usize) -> Result<Exit, CliError> {
    let url = ctx.store_url();
    let store = ctx.sessions()?;
    let sessions = store
        .list_sessions(&SessionFilter { flow, limit })
        .await
        .map_err(|e| store_failed(&url, "list sessions", e))?;
    if ctx.json {
        for s in &sessions {
            outln!(
                "{}",
                json!({"flow": s.flow, "id": s.id, "turns": s.turns, "created_at": s.created_at.to_rfc3339(), "updated_at": s.updated_at.to_rfc3339()})
            );
        }
    } else if sessions.is_empty() {
        eprintln!("no sessions in {url}");
    } else {
        outln!("{:<20}  {:<36}  {:>5}  UPDATED (UTC)", "FLOW", "SESSION", "TURNS");
        for s in &sessions {
            outln!("{:<20}  {:<36}  {:>5}  {}", s.flow, s.id, s.turns, s.updated_at.format("%Y-%m-%d %H:%M:%S"));
        }
    }
    Ok(Exit::Ok)
}

async fn sessions_show(ctx: &Ctx, flow: &str, id: &str) -> Result<Exit, CliError> {
    let url = ctx.store_url();
    let store = ctx.sessions()?;
    let session = store.load_session(flow, id).await.map_err(|e| store_failed(&url, "load the session", e))?;
    let Some(session) = session else {
        return Err(CliError::new(
            Exit::NotFound,
            format!("no session `{id}` of flow `{flow}` in the store `{url}`; `crewflow sessions list` shows them"),
        ));
    };
    let turns = store.list_turns(flow, id).await.map_err(|e| store_failed(&url, "list the turns", e))?;
    if ctx.json {
        outln!(
            "{}",
            json!({"flow": session.flow, "id": session.id, "turns": turns, "state": parse_json(&session.state),
                   "messages": session.messages,
                   "created_at": session.created_at.to_rfc3339(), "updated_at": session.updated_at.to_rfc3339()})
        );
        return Ok(Exit::Ok);
    }
    outln!("session {} of flow `{}`: {} turns", session.id, session.flow, session.turns);
    for t in &turns {
        let intent = t.intent.as_deref().map(|i| format!(" [{i}]")).unwrap_or_default();
        outln!("  #{} {}{intent} (run {})", t.index, t.started_at.format("%Y-%m-%d %H:%M:%S"), t.run_id);
        outln!("    user: {}", clip(&t.user_message, 200));
        outln!("    reply: {}", clip(&t.reply, 200));
    }
    Ok(Exit::Ok)
}

async fn sessions_delete(ctx: &Ctx, flow: &str, id: &str) -> Result<Exit, CliError> {
    let url = ctx.store_url();
    let store = ctx.sessions()?;
    let deleted = store.delete_session(flow, id).await.map_err(|e| store_failed(&url, "delete the session", e))?;
    if !deleted {
        return Err(CliError::new(Exit::NotFound, format!("no session `{id}` of flow `{flow}` in the store `{url}`")));
    }
    if ctx.json {
        outln!("{}", json!({"flow": flow, "id": id, "deleted": true}));
    } else {
        eprintln!("deleted session `{id}` of flow `{flow}`");
    }
    Ok(Exit::Ok)
}
