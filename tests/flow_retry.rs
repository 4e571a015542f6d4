//! Step retries: a failed step runs again on the state without its failed attempt's changes,
//! with its journal intact, so what it completed through `cx.once` (model calls included) is
//! not done again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::http::{TestServer, openai_completion, openai_llm};
use crewflow::prelude::*;
use crewflow::store::SqliteStore;
use crewflow::{Error, EventKind, FlowBuilder, Retry};
use serde::{Deserialize, Serialize};

#[derive(Default, Clone, Debug, Serialize, Deserialize)]
struct Ledger {
    total: i64,
    notes: Vec<String>,
}

fn counter() -> Arc<AtomicU32> {
    Arc::new(AtomicU32::new(0))
}

/// `pay` adds to the total, charges once through the journal, then fails its first
/// `failures` attempts.
fn paying(failures: u32, retry: Retry, attempts: Arc<AtomicU32>, charges: Arc<AtomicU32>) -> FlowBuilder<Ledger> {
    FlowBuilder::<Ledger>::new("retrying")
        .start("pay", move |cx: Cx<Ledger>, (): ()| {
            let (attempts, charges) = (attempts.clone(), charges.clone());
            async move {
                let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
                cx.update(|l| {
                    l.total += 100;
                    l.notes.push(format!("attempt {attempt}"));
                });
                let receipt: String = cx
                    .once("charge", |key| async move {
                        charges.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, std::io::Error>(format!("receipt {key}"))
                    })
                    .await?;
                if attempt <= failures {
                    return Err(StepError::msg(format!("gateway timeout on attempt {attempt}")));
                }
                Ok(receipt)
            }
        })
        .retry(retry)
}

#[tokio::test]
async fn a_retried_step_keeps_only_its_last_attempts_changes_and_charges_once() {
    let (attempts, charges) = (counter(), counter());
    let flow = paying(2, Retry::attempts(3).backoff(Duration::from_millis(1)), attempts.clone(), charges.clone())
        .store(SqliteStore::in_memory())
        .build()
        .unwrap();
    let (handle, mut events) = flow.stream(()).unwrap();
    let run = handle.await.unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(charges.load(Ordering::SeqCst), 1, "the journal kept the charge across attempts");
    assert_eq!(run.state.total, 100, "the failed attempts' changes were taken out");
    assert_eq!(run.state.notes, ["attempt 3"]);
    assert!(run.output::<String>().unwrap().starts_with("receipt "));
    let mut retries = Vec::new();
    while let Some(e) = events.next().await {
        if let EventKind::StepRetrying { attempt, error, .. } = &e.kind {
            retries.push((*attempt, error.to_string()));
        }
    }
    assert_eq!(retries.len(), 2, "{retries:?}");
    assert_eq!(retries[0].0, 1);
    assert!(retries[1].1.contains("gateway timeout on attempt 2"), "{retries:?}");
}

#[tokio::test]
async fn without_a_store_retries_still_take_out_a_failed_attempts_changes() {
    let (attempts, charges) = (counter(), counter());
    let flow =
        paying(1, Retry::attempts(2).backoff(Duration::ZERO), attempts.clone(), charges.clone()).build().unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!((run.state.total, run.state.notes.len()), (100, 1));
    assert_eq!(charges.load(Ordering::SeqCst), 2, "no store, no journal: the operation ran in each attempt");
}

#[tokio::test]
async fn when_attempts_run_out_the_run_fails_with_the_last_error() {
    let (attempts, charges) = (counter(), counter());
    let flow = paying(5, Retry::attempts(3).backoff(Duration::ZERO), attempts.clone(), charges)
        .store(SqliteStore::in_memory())
        .build()
        .unwrap();
    let Err(err) = flow.kickoff(()).await else { panic!("three failures fail the run") };
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert!(err.to_string().contains("gateway timeout on attempt 3"), "{err}");
}

#[tokio::test]
async fn only_failures_the_policy_accepts_are_retried() {
    let (attempts, charges) = (counter(), counter());
    let only_timeouts =
        Retry::attempts(5).backoff(Duration::ZERO).when(|e: &Error| e.to_string().contains("rate limited"));
    let flow = paying(1, only_timeouts, attempts.clone(), charges).build().unwrap();
    assert!(flow.kickoff(()).await.is_err());
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "a gateway timeout is not retried by this policy");
}

/// A sibling's changes made while the retried step ran stay; only the failed attempt's go.
#[tokio::test]
async fn a_retry_keeps_a_parallel_siblings_changes() {
    let tries = counter();
    let t = tries.clone();
    let flow = FlowBuilder::<Ledger>::new("parallel_retry")
        .start("flaky", move |cx: Cx<Ledger>, (): ()| {
            let t = t.clone();
            async move {
                let n = t.fetch_add(1, Ordering::SeqCst);
                cx.update(|l| l.total += 1);
                tokio::time::sleep(Duration::from_millis(20)).await;
                if n == 0 {
                    return Err(StepError::msg("first attempt fails"));
                }
                Ok(())
            }
        })
        .retry(Retry::attempts(2).backoff(Duration::from_millis(1)))
        .start("steady", |cx: Cx<Ledger>, (): ()| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            cx.update(|l| l.total += 1000);
            Ok::<_, StepError>(())
        })
        .store(SqliteStore::in_memory())
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.state.total, 1001);
}

/// A model call made before the failure is recorded: the retry gets the reply back without a
/// second request (and without paying for it again).
#[tokio::test]
async fn a_retried_step_does_not_call_the_model_again() {
    let server = TestServer::start(vec![openai_completion("a summary")]).await;
    let llm = openai_llm(&server);
    let tries = counter();
    let t = tries.clone();
    let flow = FlowBuilder::<Ledger>::new("model_retry")
        .start("summarize", move |_cx: Cx<Ledger>, (): ()| {
            let (llm, t) = (llm.clone(), t.clone());
            async move {
                let text = llm.complete("Summarize the ledger").await?;
                if t.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(StepError::msg("the summary could not be saved"));
                }
                Ok(text)
            }
        })
        .retry(Retry::attempts(2).backoff(Duration::ZERO))
        .store(SqliteStore::in_memory())
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "a summary");
    assert_eq!(tries.load(Ordering::SeqCst), 2);
    assert_eq!(server.requests().len(), 1, "the reply came from the journal on the retry");
}

#[test]
fn backoff_doubles_up_to_its_limit() {
    let retry = Retry::attempts(10).backoff(Duration::from_millis(100)).max_backoff(Duration::from_millis(500));
    let delays: Vec<u128> = (1..=6).map(|a| retry.delay_before(a).as_millis()).collect();
    assert_eq!(delays, [0, 100, 200, 400, 500, 500]);
    assert_eq!(Retry::attempts(0).max_attempts(), 1, "at least one attempt");
}

/// `#[retry(..)]` in a `#[flow]` impl is the builder's `.retry(..)`: a step that fails twice
/// succeeds on its third attempt; `when` limits which failures are retried.
#[tokio::test]
async fn the_macro_spells_retries_on_the_step() {
    struct Flaky(Arc<AtomicU32>);
    #[flow]
    impl Flaky {
        #[start]
        #[retry(attempts = 3, backoff = Duration::from_millis(1), max_backoff = Duration::from_millis(2))]
        async fn fetch(&self) -> Result<u32> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            if n < 3 { Err(format!("attempt {n} timed out").into()) } else { Ok(n) }
        }
    }
    let calls = Arc::new(AtomicU32::new(0));
    let run = Flaky(calls.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!((run.output::<u32>().unwrap(), calls.load(Ordering::SeqCst)), (3, 3));

    struct Declined(Arc<AtomicU32>);
    #[flow]
    impl Declined {
        #[start]
        #[retry(attempts = 5, backoff = Duration::from_millis(1), when = Self::transient)]
        async fn charge(&self) -> Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err("card declined".into())
        }
    }
    impl Declined {
        fn transient(error: &Error) -> bool {
            error.to_string().contains("timed out")
        }
    }
    let calls = Arc::new(AtomicU32::new(0));
    let err = Declined(calls.clone()).into_flow().unwrap().kickoff(()).await.unwrap_err();
    assert!(err.to_string().contains("card declined"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a failure `when` refuses is not retried");
}
