//! How the SQLite store runs its calls: short calls on the runtime's own workers, stepping aside
//! where SQLite waits (another connection's write lock, a checkpoint's disk flushes); reads on
//! connections of their own that still see every write made before them; the write-ahead log
//! checkpointed in the background by default or by the commits on request.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crewflow::prelude::*;
use crewflow::store::{RunStatus, RunStore, SqliteStore};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize, Debug, Clone)]
struct Note {
    text: String,
    count: u32,
}

/// A persisted flow of `steps` steps, each adding to the state.
fn chain(store: &SqliteStore, name: &str, steps: usize, text: usize) -> Flow<Note> {
    let mut b = FlowBuilder::<Note>::new(name).start("s0", move |cx: Cx<Note>, (): ()| async move {
        cx.update(|n| n.text = "x".repeat(text));
        Ok(())
    });
    for i in 1..steps {
        b = b.listen(&format!("s{i}"), step(format!("s{}", i - 1)), |cx: Cx<Note>, (): ()| async move {
            cx.update(|n| n.count += 1);
            Ok(())
        });
    }
    b.store(store.clone()).build().unwrap()
}

/// A write that must wait for another connection's write lock waits without holding the
/// runtime: on a runtime of one worker, a ticking task keeps ticking through the wait, and the
/// write goes through once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_write_waiting_for_another_connections_lock_lets_the_runtime_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let store = SqliteStore::open(&path);
    store.connect().await.unwrap();
    let flow = chain(&store, "busy", 1, 10);
    flow.kickoff(()).await.unwrap(); // the store's connection is open and warm

    // Another connection (another process would do the same) holds the write lock for 600 ms.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn({
        let path = path.clone();
        move || {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch("BEGIN IMMEDIATE").unwrap();
            locked_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(600));
            c.execute_batch("COMMIT").unwrap();
        }
    });
    locked_rx.recv().unwrap();

    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    // On the worker (the test's own body runs on another thread). A ticker every 10 ms ticks
    // some 60 times in the wait when the write steps aside, and at most once when it does not:
    // at least 5 leaves room for a machine busy with other tests.
    let (run, waited, ticked) = tokio::spawn({
        let (flow, ticks) = (flow.clone(), ticks.clone());
        async move {
            let started = Instant::now();
            let before = ticks.load(Ordering::Relaxed);
            let run = flow.kickoff(()).await.unwrap();
            (run, started.elapsed(), ticks.load(Ordering::Relaxed) - before)
        }
    })
    .await
    .unwrap();
    ticker.abort();
    holder.join().unwrap();

    assert!(waited >= Duration::from_millis(300), "the write did not wait for the lock ({waited:?})");
    assert!(ticked >= 5, "the runtime stood still while the write waited {waited:?}: {ticked} ticks");
    let stored = store.load_run(run.id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Finished);
}

/// Reads run on connections of their own while the writing connection is busy, and each sees
/// every write that finished before it began: sixteen tasks at once, each reading back the run
/// it has just finished, on every backend path (reader, writer, blocking pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_sees_every_write_made_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("runs.db"));
    let flow = chain(&store, "reads", 3, 2_000);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (flow, store) = (flow.clone(), store.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let run = flow.kickoff(()).await.unwrap();
                let stored = store.load_run(run.id).await.unwrap().expect("a finished run reads back");
                assert_eq!(stored.status, RunStatus::Finished, "read an older snapshot of {}", run.id);
                let state: Note = serde_json::from_str(&stored.state).unwrap();
                assert_eq!(state.count, 2, "read an older state of {}", run.id);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// With `background_checkpoints(false)` the store's own connection checkpoints the log when a
/// commit takes it past 1,000 pages, as SQLite does on its own: after some 2,500 pages of writes
/// the rows are in the database file and the log never grew much past the threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_background_checkpoints_the_commits_checkpoint_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let store = SqliteStore::open(&path).background_checkpoints(false);
    let flow = chain(&store, "commits", 10, 200);
    for _ in 0..60 {
        flow.kickoff(()).await.unwrap();
    }
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
    let (file, log) = (size(&path), size(&wal));
    assert!(file >= 64 * 1024, "the rows never reached the database file ({file} bytes; log {log} bytes)");
    assert!(log < 1_100 * 4_120, "the log grew to {log} bytes: the commits did not checkpoint it at 1,000 pages");
}
