//! Invoice review with gradual autonomy: each invoice is extracted, then routed by how sure the
//! extraction is and how large the amount is. Confident, small invoices are booked straight
//! away; unsure ones pause for a person to check the extraction; large ones pause for a person
//! to approve the payment. A paused run is kept in SQLite (`crewflow.db`, or `$CREWFLOW_DB`)
//! and resumed from the command line, by any process, any time later.
//!
//! ```text
//! cargo run --example invoice_review                       # process the sample invoices
//! cargo run --example invoice_review -- pending            # what waits for a person
//! cargo run --example invoice_review -- review <run-id> correct
//! cargo run --example invoice_review -- review <run-id> approved
//! cargo run --example invoice_review -- report             # accuracy per document type
//! INVOICE_REVIEW_THRESHOLD=0.5 cargo run --example invoice_review   # trust extraction more
//! ```
//!
//! The thresholds come from `$INVOICE_REVIEW_THRESHOLD` (default 0.9) and
//! `$INVOICE_APPROVAL_LIMIT` (default 10000): raise the autonomy of the flow without touching
//! its code once `report` shows a document type is extracted reliably.

mod flow;

use std::path::{Path, PathBuf};

use crewflow::RunId;
use crewflow::store::{RunFilter, RunStatus};
use flow::{Invoice, Policy};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Vec<String>) -> Result<(), Error> {
    let store = crewflow::store::default_store();
    let flow = flow::build(Policy::from_env()?, store.clone())?;
    match args.first().map(String::as_str) {
        None | Some("process") => process(&flow, args.get(1).map(PathBuf::from)).await,
        Some("pending") => pending(&flow, store.as_ref()).await,
        Some("review") => match (args.get(1), args.get(2)) {
            (Some(id), Some(_)) => review(&flow, id.parse()?, &args[2..].join(" ")).await,
            _ => Err("usage: invoice_review review <run-id> <answer>".into()),
        },
        Some("report") => report(&flow, store.as_ref()).await,
        Some(other) => {
            Err(format!("unknown command `{other}`; use process [DIR], pending, review <run-id> <answer> or report")
                .into())
        }
    }
}

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/invoice_review/invoices")
}

async fn process(flow: &crewflow::Flow<Invoice>, dir: Option<PathBuf>) -> Result<(), Error> {
    let dir = dir.unwrap_or_else(sample_dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot read the invoices in {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path)?;
        let source = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let run = flow.kickoff(serde_json::json!({ "source": source, "text": text })).await?;
        let s = &run.state;
        print!("{source:<22} {:<9} confidence {:.2}  ", s.doc_type, s.confidence);
        match run.paused() {
            Some(p) => println!("PAUSED {}: {}", p.run_id, p.request.message),
            None => println!("{}", run.output::<String>()?),
        }
    }
    println!("\nAnswer paused runs with: cargo run --example invoice_review -- review <run-id> <answer>");
    Ok(())
}

async fn pending(flow: &crewflow::Flow<Invoice>, store: &dyn crewflow::store::RunStore) -> Result<(), Error> {
    let filter = RunFilter {
        flow: Some(flow.name().to_string()),
        status: Some(RunStatus::Paused),
        limit: 1000,
        ..Default::default()
    };
    let paused = store.list_runs(&filter).await?;
    if paused.is_empty() {
        println!("nothing waits for a person");
    }
    for run in paused {
        if let Some(p) = flow.pending_feedback(run.run_id).await? {
            println!("{}  {}\n    {}\n    {}", p.run_id, p.request.step, p.request.output, p.request.message);
        }
    }
    Ok(())
}

async fn review(flow: &crewflow::Flow<Invoice>, id: RunId, answer: &str) -> Result<(), Error> {
    let run = flow.resume_with_feedback(id, answer).await?;
    match run.paused() {
        Some(p) => println!("{id}: next, {} asks: {}\n    {}", p.request.step, p.request.message, p.request.output),
        None => println!("{id}: {}", run.output::<String>()?),
    }
    Ok(())
}

async fn report(flow: &crewflow::Flow<Invoice>, store: &dyn crewflow::store::RunStore) -> Result<(), Error> {
    let by_type = flow::accuracy(flow, store).await?;
    println!("{:<10} {:>9} {:>8} {:>9} {:>10}", "type", "automatic", "checked", "correct", "accuracy");
    for (doc_type, a) in by_type {
        let accuracy = if a.reviewed == 0 {
            "-".to_string()
        } else {
            format!("{:.0}%", 100.0 * a.correct as f64 / a.reviewed as f64)
        };
        println!("{doc_type:<10} {:>9} {:>8} {:>9} {accuracy:>10}", a.automatic, a.reviewed, a.correct);
    }
    Ok(())
}
