//! The invoice review flow: extraction, routing by confidence and amount, durable pauses for a
//! person, and the record of review outcomes that gradual autonomy needs.
//!
//! ```text
//! extract ──► route ─┬─ Lane::Auto ─────────────────────────────┬─► book
//!                    ├─ Lane::Review ──► check (feedback) ─┬ correct ──► reroute ─┤
//!                    │                                     └ wrong ──► manual      │
//!                    └─ Lane::Approval ─► approve (feedback) ─┬ approved ──────────┘
//!                                                            └ rejected ──► refuse
//! ```
//!
//! Both feedback steps use [`DeferredFeedback`]: the run pauses, is kept in the store, and is
//! resumed later (`invoice_review review <run-id> <answer>`), by any process.

use std::sync::Arc;

use crewflow::prelude::*;
use crewflow::store::RunStore;
use crewflow::{DeferredFeedback, FeedbackResult};
use serde::{Deserialize, Serialize};

/// The variable holding the confidence below which a person checks the extraction.
pub const THRESHOLD_VAR: &str = "INVOICE_REVIEW_THRESHOLD";
/// The variable holding the amount above which a person approves the payment.
pub const LIMIT_VAR: &str = "INVOICE_APPROVAL_LIMIT";

/// What was read off an invoice.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Extracted {
    pub vendor: Option<String>,
    pub number: Option<String>,
    pub currency: Option<String>,
    /// In cents.
    pub total: Option<u64>,
    /// The sum of the line items, in cents.
    pub lines_sum: u64,
}

/// A run's state: the invoice and what became of it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Invoice {
    /// The file it came from.
    pub source: String,
    /// The invoice's text.
    pub text: String,
    /// The kind of document (`utility`, `freight`, ...), from its `Type:` line.
    pub doc_type: String,
    pub extracted: Extracted,
    /// 0..1: how sure the extraction is.
    pub confidence: f32,
    /// `booked`, `refused` or `manual entry`.
    pub outcome: String,
}

/// Where an invoice goes after extraction.
#[derive(Route, Clone, Copy, Debug, PartialEq)]
pub enum Lane {
    /// Confident and under the limit: booked without a person.
    Auto,
    /// Not confident enough: a person checks the extraction.
    Review,
    /// Over the limit: a person approves the payment.
    Approval,
}

/// The thresholds, read from the environment so they change without a code change.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub threshold: f32,
    /// In cents.
    pub limit: u64,
}

impl Policy {
    /// `$INVOICE_REVIEW_THRESHOLD` (default 0.9) and `$INVOICE_APPROVAL_LIMIT` (in currency
    /// units, default 10000); a value that does not parse is an error naming the variable.
    pub fn from_env() -> Result<Policy, String> {
        let read = |var: &str, default: f64| -> Result<f64, String> {
            match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => {
                    v.trim().parse::<f64>().map_err(|_| format!("{var}={v:?} is not a number (e.g. {var}={default})"))
                }
                _ => Ok(default),
            }
        };
        Ok(Policy { threshold: read(THRESHOLD_VAR, 0.9)? as f32, limit: (read(LIMIT_VAR, 10_000.0)? * 100.0) as u64 })
    }
}

/// The flow; `policy` decides the lanes.
pub struct InvoiceReview {
    pub policy: Policy,
}

#[flow(state = Invoice, name = "invoice_review")]
impl InvoiceReview {
    #[start]
    async fn extract(&self, cx: &Cx<Invoice>) -> Result<f32> {
        let text = cx.state(|i| i.text.clone());
        let (doc_type, extracted) = (field(&text, "type").unwrap_or_else(|| "unknown".into()), extract(&text));
        let confidence = confidence(&extracted);
        cx.update(|i| {
            i.doc_type = doc_type.to_lowercase();
            i.extracted = extracted;
            i.confidence = confidence;
        });
        Ok(confidence)
    }

    #[router(extract)]
    async fn route(&self, cx: &Cx<Invoice>) -> Result<Lane> {
        let (confidence, total) = cx.state(|i| (i.confidence, i.extracted.total.unwrap_or(0)));
        Ok(if confidence < self.policy.threshold {
            Lane::Review
        } else if total > self.policy.limit {
            Lane::Approval
        } else {
            Lane::Auto
        })
    }

    /// A person checks what was extracted.
    #[listen(Lane::Review)]
    #[human_feedback(
        message = "Is this extraction right? (correct / wrong)",
        emit = ["correct", "wrong"],
        provider = DeferredFeedback
    )]
    async fn check(&self, cx: &Cx<Invoice>) -> Result<Extracted> {
        Ok(cx.state(|i| i.extracted.clone()))
    }

    /// A checked invoice goes on like a confident one.
    #[router("correct")]
    async fn reroute(&self, cx: &Cx<Invoice>) -> Result<Lane> {
        let total = cx.state(|i| i.extracted.total.unwrap_or(0));
        Ok(if total > self.policy.limit { Lane::Approval } else { Lane::Auto })
    }

    /// A person approves a large payment.
    #[listen(Lane::Approval)]
    #[human_feedback(
        message = "Approve this payment? (approved / rejected)",
        emit = ["approved", "rejected"],
        provider = DeferredFeedback
    )]
    async fn approve(&self, cx: &Cx<Invoice>) -> Result<String> {
        Ok(cx.state(|i| summary(&i.extracted)))
    }

    #[listen(or(Lane::Auto, "approved"))]
    async fn book(&self, cx: &Cx<Invoice>) -> Result<String> {
        cx.update(|i| i.outcome = "booked".into());
        Ok(cx.state(|i| format!("booked {}", summary(&i.extracted))))
    }

    #[listen("rejected")]
    async fn refuse(&self, cx: &Cx<Invoice>, review: FeedbackResult) -> Result<String> {
        cx.update(|i| i.outcome = "refused".into());
        Ok(format!("refused: {}", review.feedback))
    }

    #[listen("wrong")]
    async fn manual(&self, cx: &Cx<Invoice>) -> Result<String> {
        cx.update(|i| i.outcome = "manual entry".into());
        Ok("sent to manual entry".to_string())
    }
}

/// The flow with its runs in `store`.
pub fn build(policy: Policy, store: Arc<dyn RunStore>) -> Result<Flow<Invoice>, crewflow::Error> {
    InvoiceReview { policy }.into_builder().store(store).build()
}

/// One line of `Key: value`, case-insensitive on the key.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim().eq_ignore_ascii_case(key) && !v.trim().is_empty()).then(|| v.trim().to_string())
    })
}

/// `1,234.50` → 123450 cents.
fn cents(amount: &str) -> Option<u64> {
    let clean: String = amount.chars().filter(|c| c.is_ascii_digit() || *c == '.').collect();
    let (units, frac) = clean.split_once('.').unwrap_or((&clean, "0"));
    let frac = format!("{frac:0<2}");
    Some(units.parse::<u64>().ok()? * 100 + frac.get(..2)?.parse::<u64>().ok()?)
}

/// Reads the fields and sums the `- item: amount` lines.
pub fn extract(text: &str) -> Extracted {
    let total = field(text, "total");
    Extracted {
        vendor: field(text, "vendor"),
        number: field(text, "invoice").or_else(|| field(text, "number")),
        currency: total.as_deref().and_then(|t| {
            t.split_whitespace().find(|w| w.len() == 3 && w.chars().all(|c| c.is_ascii_uppercase())).map(str::to_string)
        }),
        total: total.as_deref().and_then(cents),
        lines_sum: text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- "))
            .filter_map(|item| item.rsplit_once(':').and_then(|(_, amount)| cents(amount)))
            .sum(),
    }
}

/// The share of the fields found, lowered when the line items do not add up to the total.
pub fn confidence(e: &Extracted) -> f32 {
    let found = [e.vendor.is_some(), e.number.is_some(), e.currency.is_some(), e.total.is_some()];
    let share = found.iter().filter(|f| **f).count() as f32 / found.len() as f32;
    let adds_up = e.total == Some(e.lines_sum);
    if adds_up { share } else { share * 0.6 }
}

/// `ACME Ltd #A-17: 1234.50 EUR`.
pub fn summary(e: &Extracted) -> String {
    let amount = e.total.map(|c| format!("{}.{:02}", c / 100, c % 100)).unwrap_or_else(|| "?".into());
    format!(
        "{} #{}: {amount} {}",
        e.vendor.as_deref().unwrap_or("unknown vendor"),
        e.number.as_deref().unwrap_or("?"),
        e.currency.as_deref().unwrap_or("")
    )
}

/// How well extraction does per document type, from the people's checks: the numbers that tell
/// when a type can skip review (lower its threshold once its accuracy is proven).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Accuracy {
    pub reviewed: u32,
    pub correct: u32,
    pub automatic: u32,
}

/// Tallies the checks of every finished or paused run of the flow in the store.
pub async fn accuracy(
    flow: &Flow<Invoice>,
    store: &dyn RunStore,
) -> Result<std::collections::BTreeMap<String, Accuracy>, crewflow::Error> {
    let filter = crewflow::store::RunFilter {
        flow: Some(flow.name().to_string()),
        status: None,
        limit: 100_000,
        ..Default::default()
    };
    let runs =
        store.list_runs(&filter).await.map_err(|e| crewflow::Error::from_store(store, "list the invoice runs", e))?;
    let mut by_type = std::collections::BTreeMap::<String, Accuracy>::new();
    for summary in runs {
        // Read only: nothing runs, nothing is claimed.
        let run = flow.inspect(summary.run_id).await?;
        let tally = by_type.entry(run.state.doc_type.clone()).or_default();
        let checks: Vec<_> = run.feedback_history().iter().filter(|f| f.step == "check").collect();
        if checks.is_empty() && run.state.outcome == "booked" && run.count("approve") == 0 {
            tally.automatic += 1;
        }
        for c in checks {
            tally.reviewed += 1;
            tally.correct += u32::from(c.outcome.as_deref() == Some("correct"));
        }
    }
    Ok(by_type)
}
