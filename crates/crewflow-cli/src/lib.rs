//! The `crewflow` command: the operator's side of crewflow, thin over the library.
//!
//! - `crewflow run flow.yaml --input topic=rust` runs a declarative (YAML) flow, with progress
//!   lines on stderr (or `--json` event lines on stdout) and the output on stdout;
//! - `crewflow plot flow.yaml` writes the flow's picture (HTML, Mermaid or DOT);
//! - `crewflow runs list|show|resume|fork|cancel`, `crewflow feedback list|answer`,
//!   `crewflow sessions list|show|delete` and `crewflow trace [--html]` read and drive what a
//!   store keeps (`--store sqlite://runs.db` or `postgres://…`, else `$CREWFLOW_DB`, else
//!   `crewflow.db`);
//! - `crewflow run --queue` queues a run, `crewflow worker` runs queued and orphaned runs;
//! - `crewflow serve --flows flow.yaml` serves flows with `crewflow-server`'s router;
//! - `chat NAME` holds a conversation with a conversational flow a binary mounted
//!   ([`App::chat`]);
//! - `crewflow trace RUN --otlp URL` sends a stored trace to an OpenTelemetry collector
//!   (feature `otel`, module `otel`);
//! - `crewflow new NAME [--yaml]` scaffolds a Rust flow project or a YAML flow.
//!
//! Exit codes are stable ([`Exit`]); every command and its examples are in `docs/cli.md`.
//!
//! The binary is `src/main.rs`, one line over [`main`]:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     crewflow_cli::main()
//! }
//! ```
//!
//! A binary of one's own mounts the same commands for its compiled flows with [`App`]:
//! `crewflow_cli::App::new().flow(&flow).run()`.

/// Writes a line to stdout; a closed pipe (`crewflow runs list | head -1`) is not an error.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Writes to stdout, like [`outln!`] without the newline.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod app;
mod calls;
mod chat;
mod commands;
mod compact;
mod drive;
mod keys;
mod new;
#[cfg(feature = "otel")]
pub mod otel;
mod serve;
mod target;
mod trace;
mod trace_html;
mod worker;

pub use app::App;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// What the command's exit status means; scripts can rely on these numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done: the run finished, the listing was printed.
    Ok = 0,
    /// The run failed or was cancelled (its error is on stderr).
    RunFailed = 1,
    /// Bad usage: unknown arguments, a flow file that cannot be read or built, inputs that do
    /// not fit the flow's state.
    Usage = 2,
    /// The run is paused, waiting for human feedback (`crewflow feedback answer`).
    Paused = 3,
    /// The store cannot be opened or reached.
    Store = 4,
    /// What was asked for is not in the store (a run, a session, a pending request).
    NotFound = 5,
}

/// A command's failure: the message for stderr and the exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// What went wrong and how to fix it.
    pub message: String,
    /// The exit status.
    pub exit: Exit,
}

impl CliError {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> CliError {
        CliError { message: message.into(), exit }
    }
}

const EXAMPLES: &str = "\
Examples:
  crewflow run review.yaml --input topic=rust --store sqlite://runs.db
  crewflow run review.yaml --inputs '{\"topic\": \"rust\"}' --json
  crewflow plot review.yaml -o review.html
  crewflow plot review.yaml --format mermaid
  crewflow runs list --status paused --store sqlite://runs.db
  crewflow feedback answer 0193f… approved --flow review.yaml --store sqlite://runs.db
  crewflow trace 0193f… --store postgres://app@db/flows
  crewflow runs fork 0193f… --flow review.yaml --input topic=go
  crewflow run review.yaml --queue --store sqlite://runs.db && crewflow worker --flows review.yaml --store sqlite://runs.db
  crewflow new my-flow --yaml

Exit codes: 0 done, 1 run failed or cancelled, 2 bad usage / flow file / inputs,
            3 run paused for feedback, 4 store unreachable, 5 not found";

/// The `crewflow` command line.
#[derive(Debug, Parser)]
#[command(name = "crewflow", version, about = "Run, plot and inspect crewflow flows and their stored runs.", after_help = EXAMPLES)]
pub struct Cli {
    /// The store: `sqlite://PATH` (or a path), `postgres://USER@HOST:PORT/DB`. Default:
    /// $CREWFLOW_DB, else `crewflow.db`.
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,
    /// Print JSON lines instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a YAML (or JSON) flow, or a compiled one by name, to its end or its first pause.
    #[command(
        after_help = "Examples:\n  crewflow run flow.yaml --input topic=rust --input count=3\n  crewflow run flow.yaml --inputs-file inputs.json --json"
    )]
    Run(RunArgs),
    /// Draw a flow: one self-contained HTML page, Mermaid or DOT.
    #[command(
        after_help = "Examples:\n  crewflow plot flow.yaml                  # writes <flow name>.html\n  crewflow plot flow.yaml --format dot | dot -Tsvg > flow.svg\n  crewflow plot flow.yaml --run 0193f… -o run.html   # a stored run drawn over it"
    )]
    Plot(PlotArgs),
    /// Stored runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Runs paused for human feedback.
    #[command(subcommand)]
    Feedback(FeedbackCommand),
    /// Conversation sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// A run's timeline from the store (or a session's trace with `--session FLOW/ID`).
    #[command(
        after_help = "Examples:\n  crewflow trace 0193f…\n  crewflow trace --session support/alice --json\n  crewflow trace 0193f… --otlp http://127.0.0.1:4318   # to an OpenTelemetry collector"
    )]
    Trace(TraceArgs),
    /// Remove ended runs past their time, and journals finished runs no longer need. Never
    /// touches a running, queued or paused run.
    #[command(
        after_help = "Examples:\n  crewflow compact --older-than 30d\n  crewflow compact --older-than 90d --flow-ttl nightly=7d --journal-older-than 1d --vacuum"
    )]
    Compact(CompactArgs),
    /// Run queued runs (`crewflow run --queue`) and orphaned ones of the given flows, until
    /// Ctrl-C.
    #[command(
        after_help = "Example:\n  crewflow worker --flows review.yaml nightly.yaml --store postgres://app@db/flows"
    )]
    Worker(WorkerArgs),
    /// Serve flows over HTTP (crewflow-server's routes) until Ctrl-C or SIGTERM (then runs in
    /// flight get `--grace` to finish); prints `listening on http://ADDR` first.
    #[command(
        after_help = "Examples:\n  crewflow serve --flows review.yaml nightly.yaml --store sqlite://runs.db\n  crewflow serve --flows review.yaml --addr 0.0.0.0:8080 --store postgres://app@db/flows --grace 25s"
    )]
    Serve(ServeArgs),
    /// API keys for `crewflow serve --api-keys`, kept hashed in the store.
    #[command(
        subcommand,
        after_help = "Examples:\n  crewflow keys create --label ci --expires-in 90d   # prints the key, once\n  crewflow keys list\n  crewflow keys revoke key_3GxW0c…"
    )]
    Keys(KeysCommand),
    /// Hold a conversation with a conversational flow compiled into this binary: each line is
    /// a turn, `/quit` ends it.
    #[command(
        after_help = "Examples:\n  my-binary chat support                 # a new session\n  my-binary chat support --session alice # go on with one"
    )]
    Chat(ChatArgs),
    /// Scaffold a new flow: a Rust project (default) or a YAML flow.
    #[command(
        after_help = "Examples:\n  crewflow new triage            # a Rust project in ./triage\n  crewflow new triage --yaml     # triage.yaml, ready for `crewflow run triage.yaml`"
    )]
    New(NewArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  crewflow completions bash > ~/.local/share/bash-completion/completions/crewflow"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `crewflow run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The flow definition (YAML or JSON), or the name of a flow compiled into this binary.
    pub flow: PathBuf,
    /// The run's inputs.
    #[command(flatten)]
    pub inputs: InputArgs,
    /// Record the run as queued for a `crewflow worker` instead of running it; prints its id.
    #[arg(long)]
    pub queue: bool,
}

/// A run's inputs, from flags, JSON or a file.
#[derive(Debug, Args)]
pub struct InputArgs {
    /// One input, `KEY=VALUE`; VALUE is read as JSON when it parses (`3`, `true`, `[1,2]`),
    /// else as text. Repeatable; applied over `--inputs`/`--inputs-file`.
    #[arg(long = "input", short = 'i', value_name = "KEY=VALUE")]
    pub input: Vec<String>,
    /// All inputs as a JSON object.
    #[arg(long, value_name = "JSON", conflicts_with = "inputs_file")]
    pub inputs: Option<String>,
    /// All inputs from a JSON file.
    #[arg(long, value_name = "PATH")]
    pub inputs_file: Option<PathBuf>,
}

/// `crewflow compact`.
#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Delete finished, failed and cancelled runs that ended longer ago (`30d`, `12h`, `90min`).
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    pub older_than: Option<std::time::Duration>,
    /// A time to live for one flow's ended runs, `FLOW=AGE`; wins over `--older-than`. Repeatable.
    #[arg(long, value_name = "FLOW=AGE", value_parser = flow_ttl)]
    pub flow_ttl: Vec<(String, std::time::Duration)>,
    /// Drop the journal of finished and cancelled runs that ended longer ago.
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    pub journal_older_than: Option<std::time::Duration>,
    /// Delete conversation traces finalized longer ago (sessions and turns stay).
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    pub traces_older_than: Option<std::time::Duration>,
    /// Give freed space back to the file system (SQLite: rewrites the file; blocks writers meanwhile).
    #[arg(long)]
    pub vacuum: bool,
}

fn flow_ttl(text: &str) -> Result<(String, std::time::Duration), String> {
    let (flow, age) = text.split_once('=').ok_or_else(|| format!("`{text}` is not FLOW=AGE, e.g. nightly=7d"))?;
    let age = humantime::parse_duration(age).map_err(|e| format!("`{age}` is not an age ({e}); e.g. 7d, 12h"))?;
    Ok((flow.to_string(), age))
}

/// The picture formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One self-contained interactive HTML page.
    Html,
    /// A Mermaid flowchart.
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

/// `crewflow plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// The flow definition (YAML or JSON), or the name of a flow compiled into this binary.
    pub flow: PathBuf,
    /// Where to write; default `<flow name>.html` for HTML, stdout for the text forms.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// The picture's format.
    #[arg(long, value_enum, default_value_t = Format::Html)]
    pub format: Format,
    /// Draw this stored run over the flow (steps taken, counts, where it paused or failed).
    #[arg(long, value_name = "RUN_ID")]
    pub run: Option<String>,
}

/// `crewflow runs …`.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    List {
        /// Only runs of this flow.
        #[arg(long)]
        flow: Option<String>,
        /// Only runs with this status (queued, running, paused, finished, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only the runs started from this run's steps (its nested runs).
        #[arg(long, value_name = "RUN_ID")]
        parent: Option<String>,
    },
    /// Show one run: status, inputs, steps, error, pending feedback, state.
    Show {
        /// The run's id.
        run_id: String,
    },
    /// Resume a failed, cancelled or orphaned run from its last checkpoint.
    Resume {
        /// The run's id.
        run_id: String,
        /// The flow definition the run belongs to (or, in a binary of one's own, a compiled
        /// flow's name).
        #[arg(long, value_name = "FLOW_FILE")]
        flow: PathBuf,
    },
    /// Cancel a run no process is driving (paused, queued, failed, or orphaned).
    Cancel {
        /// The run's id.
        run_id: String,
    },
    /// Start a new run from the state another run reached, with inputs over it; the source
    /// run is left as it is.
    #[command(
        after_help = "Example:\n  crewflow runs fork 0193f… --flow review.yaml --input topic=go --store sqlite://runs.db"
    )]
    Fork {
        /// The source run's id.
        run_id: String,
        /// The flow definition the run belongs to (or, in a binary of one's own, a compiled
        /// flow's name).
        #[arg(long, value_name = "FLOW_FILE")]
        flow: PathBuf,
        /// Inputs merged over the source run's state.
        #[command(flatten)]
        inputs: InputArgs,
    },
}

/// `crewflow worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The flow definitions whose queued and orphaned runs this worker runs (a binary's own
    /// compiled flows are always included).
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub flows: Vec<PathBuf>,
    /// How often to look for runs, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub poll_ms: u64,
    /// POST a signed event to this URL when a run this worker drives finishes, fails, pauses
    /// or is cancelled (as `serve --webhook` does); the signing secret is read from
    /// $CREWFLOW_WEBHOOK_SECRET.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
}

/// `crewflow serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Flow definitions to serve (a binary's own compiled and conversational flows are always
    /// served).
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub flows: Vec<PathBuf>,
    /// The address to listen on; port 0 takes any free port (the first stdout line says which).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// POST a signed event to this URL when a run finishes, fails, pauses or is cancelled; the
    /// signing secret is read from $CREWFLOW_WEBHOOK_SECRET.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// On SIGTERM or Ctrl-C, how long runs and turns in flight get to finish (no new ones are
    /// taken meanwhile); runs still going then are left checkpointed in the store, for
    /// `crewflow runs resume`, a worker or another instance. Keep it below your supervisor's
    /// kill timeout.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = humantime::parse_duration)]
    pub grace: std::time::Duration,
    /// A cron schedule's missed tick older than this when the server finds it (after an
    /// outage) is recorded as skipped, not fired; `none` fires it however old.
    #[arg(long, value_name = "DURATION|none", default_value = "1h", value_parser = parse_lateness)]
    pub max_lateness: Lateness,
    /// Every request needs an API key from the store (`crewflow keys create`), sent as
    /// `Authorization: Bearer KEY`; without one it answers 401 (the web page at `/` asks for it).
    #[arg(long)]
    pub api_keys: bool,
    /// With --api-keys: the tenant served, whose keys are let in (its schedules are the ones
    /// fired).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_TENANT, requires = "api_keys")]
    pub tenant: String,
    /// With --api-keys: how often the keys are read again from the store, so the longest a
    /// revoked key still works here (a new key works within a second).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration, requires = "api_keys")]
    pub key_refresh: std::time::Duration,
    /// With --api-keys: how many requests each key may send, `REQUESTS/PERIOD` (`600/1m`),
    /// in bursts of up to REQUESTS; past it, 429 with Retry-After. No limit without it.
    #[arg(long, value_name = "REQUESTS/PERIOD", value_parser = parse_rate, requires = "api_keys")]
    pub rate_limit: Option<(u32, std::time::Duration)>,
    /// The largest request body (and WebSocket message) taken, in bytes; larger ones get 413.
    #[arg(long, value_name = "BYTES", default_value_t = 2 << 20)]
    pub max_body_bytes: usize,
    /// A request not answered within this time gets 504 (the work goes on).
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = humantime::parse_duration)]
    pub request_timeout: std::time::Duration,
    /// Browser origins allowed to call the server (`https://app.example.com`; `*` for any);
    /// repeat for several. CORS is off without it.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
}

/// `serve --rate-limit`: `REQUESTS/PERIOD`.
fn parse_rate(text: &str) -> Result<(u32, std::time::Duration), String> {
    let bad = || format!("`{text}` is not REQUESTS/PERIOD; give e.g. `600/1m` or `10/1s`");
    let (requests, per) = text.split_once('/').ok_or_else(bad)?;
    let requests: u32 = requests.trim().parse().map_err(|_| bad())?;
    let per = humantime::parse_duration(per.trim()).map_err(|e| format!("{}: {e}", bad()))?;
    if requests == 0 || per.is_zero() {
        return Err(format!("`{text}` lets nothing through; give at least 1 request per a non-zero time"));
    }
    Ok((requests, per))
}

/// `serve --max-lateness`: a duration, or `None` for no limit.
#[derive(Clone, Copy, Debug)]
pub struct Lateness(pub Option<std::time::Duration>);

fn parse_lateness(text: &str) -> Result<Lateness, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(Lateness(None));
    }
    humantime::parse_duration(text.trim())
        .map(|d| Lateness(Some(d)))
        .map_err(|e| format!("{e}; give a duration (`30m`, `2h`, `1day`) or `none` (no limit)"))
}

/// `crewflow chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The conversational flow's name (mounted with `App::chat`).
    pub flow: String,
    /// Go on with this session (new if it is not stored yet); default: a new generated id.
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
}

/// `crewflow new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The project's name (a new directory of that name), or with `--yaml` the flow's name
    /// (writes `<name>.yaml`).
    pub name: String,
    /// Write a YAML flow `crewflow run` runs as is, instead of a Rust project.
    #[arg(long)]
    pub yaml: bool,
    /// Depend on a local crewflow checkout at this path instead of the crates.io release.
    #[arg(long, value_name = "CHECKOUT", conflicts_with = "yaml")]
    pub path: Option<PathBuf>,
}

/// `crewflow feedback …`.
#[derive(Debug, Subcommand)]
pub enum FeedbackCommand {
    /// List pending feedback requests of paused runs.
    List {
        /// Only runs of this flow.
        #[arg(long)]
        flow: Option<String>,
    },
    /// Answer a paused run and continue it.
    Answer {
        /// The run's id.
        run_id: String,
        /// The answer (free text, or one of the request's outcomes).
        answer: String,
        /// The flow definition the run belongs to (or, in a binary of one's own, a compiled
        /// flow's name).
        #[arg(long, value_name = "FLOW_FILE")]
        flow: PathBuf,
        /// Which pending request (for runs with several; see `feedback list`).
        #[arg(long)]
        request: Option<u64>,
    },
}

/// `crewflow sessions …`.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List sessions, newest first.
    List {
        /// Only sessions of this flow.
        #[arg(long)]
        flow: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show a session and its turns.
    Show {
        /// The flow's name.
        flow: String,
        /// The session's id.
        id: String,
    },
    /// Delete a session, its turns and traces.
    Delete {
        /// The flow's name.
        flow: String,
        /// The session's id.
        id: String,
    },
}

/// `crewflow keys`: the API keys `crewflow serve --api-keys` lets in.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new key and print it (only now: the store keeps its SHA-256, not the key).
    Create {
        /// The tenant it reaches (`serve --api-keys --tenant NAME` serves one tenant).
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        /// What it is for (`ci`, `alice's laptop`).
        #[arg(long, default_value = "")]
        label: String,
        /// It stops working this long after now (`90d`, `12h`); never, without it.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// List the keys (their ids, never the keys), revoked ones included, oldest first.
    List {
        /// Only keys of this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by its id: every server on the store refuses it within its refresh time
    /// (`serve --key-refresh`, 5 s by default).
    Revoke {
        /// The key's id (`key_…`, from `crewflow keys list`).
        id: String,
    },
}

/// The tenant of `crewflow keys create` and `crewflow serve --api-keys` when none is given.
pub const DEFAULT_TENANT: &str = "default";

/// `crewflow trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The run's id.
    #[arg(required_unless_present = "session", conflicts_with = "session")]
    pub run_id: Option<String>,
    /// A session's traces instead: `FLOW/SESSION_ID`.
    #[arg(long, value_name = "FLOW/ID")]
    pub session: Option<String>,
    /// Write the trace (a run's, or a session's) as one self-contained HTML page to this
    /// file instead.
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,
    /// Send the trace to an OpenTelemetry collector over OTLP/HTTP instead (its base URL,
    /// e.g. http://127.0.0.1:4318; needs the `otel` feature).
    #[arg(long, value_name = "URL", conflicts_with = "html")]
    pub otlp: Option<String>,
}

/// Runs the command line of this process and returns its exit status.
pub fn main() -> ExitCode {
    App::new().run()
}

/// Runs the given command line (the first item is the program's name).
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    App::new().run_from(args)
}

/// Parses and runs a command line with the flows an [`App`] mounted.
pub(crate) fn run_cli<I, T>(app: App, args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { Exit::Usage as u8 } else { Exit::Ok as u8 });
        }
    };
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "crewflow", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(Exit::RunFailed as u8);
        }
    };
    match runtime.block_on(commands::dispatch(cli, app)) {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.exit as u8)
        }
    }
}
