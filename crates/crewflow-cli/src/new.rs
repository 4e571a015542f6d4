//! `crewflow new`: a Rust flow project with the command line built in, or a YAML flow that
//! `crewflow run` runs as is.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::commands::Ctx;
use crate::{CliError, Exit, NewArgs};

/// The crewflow release a new project depends on.
const VERSION: &str = env!("CARGO_PKG_VERSION");

pub(crate) fn new(ctx: &Ctx, args: &NewArgs) -> Result<Exit, CliError> {
    check_name(&args.name)?;
    let written = if args.yaml { yaml(&args.name)? } else { rust(&args.name, args.path.as_deref())? };
    if ctx.json {
        let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        outln!("{}", json!({"name": args.name, "files": files}));
        return Ok(Exit::Ok);
    }
    for p in &written {
        eprintln!("wrote {}", p.display());
    }
    if args.yaml {
        eprintln!("run it with: crewflow run {}.yaml --input text=\"I forgot my password\"", args.name);
    } else {
        eprintln!(
            "run it with: cd {0} && cargo run -- run {0} --input text=\"I forgot my password\"  (also: plot, runs, trace…)",
            args.name
        );
    }
    Ok(Exit::Ok)
}

/// A name both a flow and a Cargo package can have.
fn check_name(name: &str) -> Result<(), CliError> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(CliError::new(
            Exit::Usage,
            format!(
                "`{name}` is not a usable name: start with a letter, then letters, digits, `_` or `-` (e.g. ticket-triage)"
            ),
        ))
    }
}

/// Writes a file that must not exist yet.
fn create(path: &Path, text: &str) -> Result<PathBuf, CliError> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
            "it exists already; pick another name or move it away".to_string()
        } else {
            e.to_string()
        };
        CliError::new(Exit::Usage, format!("cannot create {}: {why}", path.display()))
    })?;
    file.write_all(text.as_bytes())
        .map_err(|e| CliError::new(Exit::Usage, format!("cannot write {}: {e}", path.display())))?;
    Ok(path.to_path_buf())
}

fn yaml(name: &str) -> Result<Vec<PathBuf>, CliError> {
    let text = YAML.replace("{name}", name);
    Ok(vec![create(Path::new(&format!("{name}.yaml")), &text)?])
}

fn rust(name: &str, checkout: Option<&Path>) -> Result<Vec<PathBuf>, CliError> {
    let dir = Path::new(name);
    if dir.exists() {
        return Err(CliError::new(
            Exit::Usage,
            format!("cannot create the project {name}/: it exists already; pick another name or move it away"),
        ));
    }
    let src = dir.join("src");
    std::fs::create_dir_all(&src)
        .map_err(|e| CliError::new(Exit::Usage, format!("cannot create {}: {e}", src.display())))?;
    let deps = match checkout {
        None => format!(
            "# The crewflow release; to build against a local checkout instead:\n\
             #   crewflow = {{ path = \"/path/to/crewflow\" }}\n\
             #   crewflow-cli = {{ path = \"/path/to/crewflow/crates/crewflow-cli\" }}\n\
             crewflow = \"{VERSION}\"\ncrewflow-cli = \"{VERSION}\""
        ),
        Some(path) => {
            let path = path.canonicalize().map_err(|e| {
                CliError::new(
                    Exit::Usage,
                    format!("--path {}: {e}; give the crewflow checkout's directory", path.display()),
                )
            })?;
            if !path.join("crates/crewflow-cli/Cargo.toml").exists() {
                return Err(CliError::new(
                    Exit::Usage,
                    format!("--path {} is not a crewflow checkout (no crates/crewflow-cli in it)", path.display()),
                ));
            }
            format!(
                "# A local crewflow checkout; the release instead: crewflow = \"{VERSION}\", crewflow-cli = \"{VERSION}\"\n\
                 crewflow = {{ path = {:?} }}\ncrewflow-cli = {{ path = {:?} }}",
                path.display().to_string(),
                path.join("crates/crewflow-cli").display().to_string()
            )
        }
    };
    let manifest = CARGO_TOML.replace("{name}", name).replace("{deps}", &deps);
    Ok(vec![
        create(&dir.join("Cargo.toml"), &manifest)?,
        create(&src.join("main.rs"), &MAIN_RS.replace("{name}", name))?,
        create(&dir.join(".gitignore"), "/target\n*.db\n")?,
    ])
}

const YAML: &str = r#"# A crewflow flow: `crewflow run {name}.yaml --input text="I forgot my password"`,
# `crewflow plot {name}.yaml` draws it. The format is in docs/declarative.md.
name: {name}
state:
  default: {text: "", reply: ""}
methods:
  intake:
    start: true
    do: {call: expression, expr: 'state.text'}
  classify:
    listen: intake
    router: true
    emit: [security, standard]
    do: {call: expression, expr: 'input.contains("password") ? "security" : "standard"'}
  escalate:
    listen: security
    do: {call: expression, expr: '"escalated to the security team: " + outputs.intake'}
  answer:
    listen: standard
    do: {call: expression, expr: '"thanks, we are on it: " + outputs.intake'}
"#;

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
{deps}
serde = { version = "1", features = ["derive"] }

# A project of its own, also when created inside another workspace.
[workspace]
"#;

const MAIN_RS: &str = r#"//! {name}: a crewflow flow, with the crewflow command line built in:
//!
//! ```text
//! cargo run -- run {name} --input text="I forgot my password"
//! cargo run -- plot {name}            # writes {name}.html
//! cargo run -- --help                 # runs, feedback, worker, trace, …
//! ```

use std::process::ExitCode;

use crewflow::prelude::*;
use serde::{Deserialize, Serialize};

/// The run's state: what came in, what goes out.
#[derive(Default, Serialize, Deserialize)]
struct Ticket {
    text: String,
    reply: Option<String>,
}

/// Where a ticket goes.
#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Lane {
    Security,
    Standard,
}

struct Triage;

#[flow(state = Ticket, name = "{name}")]
impl Triage {
    #[start]
    async fn intake(&self, cx: &Cx<Ticket>) -> Result<String> {
        Ok(cx.state(|t| t.text.to_lowercase()))
    }

    #[router(intake)]
    async fn classify(&self, text: String) -> Result<Lane> {
        Ok(if text.contains("password") { Lane::Security } else { Lane::Standard })
    }

    #[listen(Lane::Security)]
    async fn escalate(&self) -> Result<&'static str> {
        Ok("escalated to the security team")
    }

    #[listen(or(escalate, Lane::Standard))]
    async fn reply(&self, cx: &Cx<Ticket>) -> Result<String> {
        let reply = "Thanks, we are on it.".to_string();
        cx.update(|t| t.reply = Some(reply.clone()));
        Ok(reply)
    }
}

fn main() -> ExitCode {
    match Triage.into_flow() {
        Ok(flow) => crewflow_cli::App::new().flow(&flow).run(),
        Err(e) => {
            eprintln!("error: the flow does not build: {e}");
            ExitCode::from(2)
        }
    }
}
"#;
