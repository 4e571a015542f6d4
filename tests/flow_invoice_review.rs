//! The invoice review example's flow (examples/invoice_review): routing by confidence and
//! amount, pauses for people, resumes, and the accuracy report that gradual autonomy relies on.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

#[path = "../examples/invoice_review/flow.rs"]
#[allow(dead_code, missing_docs)]
mod invoice;

use std::sync::Arc;

use crewflow::store::{RunStore, SqliteStore};
use invoice::{Accuracy, Policy};
use serde_json::json;

fn sample(name: &str) -> String {
    std::fs::read_to_string(format!("{}/examples/invoice_review/invoices/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn kickoff_args(name: &str) -> serde_json::Value {
    json!({ "source": name, "text": sample(name) })
}

#[tokio::test]
async fn invoices_are_routed_by_confidence_and_amount_and_resumed_by_people() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(dir.path().join("runs.db")));
    let flow = invoice::build(Policy { threshold: 0.9, limit: 1_000_000 }, store.clone()).unwrap();

    // Confident and small: booked with nobody asked.
    let power = flow.kickoff(kickoff_args("01-power.txt")).await.unwrap();
    assert_eq!(power.output::<String>().unwrap(), "booked Northgrid Power #NG-2026-1187: 470.00 EUR");

    // Large: paused for approval, then approved.
    let freight = flow.kickoff(kickoff_args("02-freight.txt")).await.unwrap();
    let asked = freight.paused().expect("approval");
    assert_eq!(asked.request.step, "approve");
    let done = flow.resume_with_feedback(freight.id, "approved").await.unwrap();
    assert_eq!(done.output::<String>().unwrap(), "booked Baltic Freight Lines #BFL-88812: 15950.00 EUR");

    // Unsure (no invoice number): checked by a person, found wrong.
    let office = flow.kickoff(kickoff_args("03-office.txt")).await.unwrap();
    assert_eq!(office.paused().unwrap().request.step, "check");
    assert_eq!(office.state.confidence, 0.75);
    let done = flow.resume_with_feedback(office.id, "wrong").await.unwrap();
    assert_eq!(done.state.outcome, "manual entry");

    // Unsure (lines do not add up): checked correct, then booked.
    let consulting = flow.kickoff(kickoff_args("04-consulting.txt")).await.unwrap();
    let done = flow.resume_with_feedback(consulting.id, "Correct").await.unwrap();
    assert_eq!(done.state.outcome, "booked");

    let report = invoice::accuracy(&flow, store.as_ref()).await.unwrap();
    assert_eq!(report["utility"], Accuracy { reviewed: 0, correct: 0, automatic: 1 });
    assert_eq!(report["freight"], Accuracy { reviewed: 0, correct: 0, automatic: 0 });
    assert_eq!(report["office"], Accuracy { reviewed: 1, correct: 0, automatic: 0 });
    assert_eq!(report["services"], Accuracy { reviewed: 1, correct: 1, automatic: 0 });
}

/// The threshold is policy, not code: a lower one lets the same unsure invoice through.
#[tokio::test]
async fn a_lower_threshold_gives_the_flow_more_autonomy() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(dir.path().join("runs.db")));
    let trusting = invoice::build(Policy { threshold: 0.7, limit: 1_000_000 }, store).unwrap();
    let office = trusting.kickoff(kickoff_args("03-office.txt")).await.unwrap();
    assert!(office.is_finished());
    assert_eq!(office.state.outcome, "booked");
}

#[test]
fn extraction_reads_fields_and_checks_the_sum() {
    let e = invoice::extract(&sample("04-consulting.txt"));
    assert_eq!((e.total, e.lines_sum), (Some(824_000), 784_000));
    assert_eq!(e.currency.as_deref(), Some("EUR"));
    assert!((invoice::confidence(&e) - 0.6).abs() < 1e-6);
}
