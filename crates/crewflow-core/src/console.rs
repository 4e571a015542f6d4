//! The terminal, shared by the console providers ([`ConsoleInput`](crate::ConsoleInput),
//! [`ConsoleFeedback`](crate::ConsoleFeedback)).
//!
//! One thread per process reads standard input line by line into a channel, and questions take
//! lines from it, one question at a time. So a question that times out leaves no reader behind
//! to swallow the next line, and a program can exit while nobody types: the reader is a
//! detached thread, not a runtime task the runtime would wait for. On a terminal, lines typed
//! before a question is shown are dropped (they answered nothing); piped input is kept.
//!
//! Once a console provider has asked, this reader owns standard input: a program that also
//! reads standard input itself should ask through a provider instead.

use std::io::BufRead;
use std::sync::OnceLock;

use tokio::sync::Mutex;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

type Lines = Mutex<UnboundedReceiver<std::io::Result<String>>>;

static LINES: OnceLock<Lines> = OnceLock::new();

fn lines() -> &'static Lines {
    LINES.get_or_init(|| {
        let (tx, rx) = unbounded_channel();
        let spawned = std::thread::Builder::new().name("crewflow-stdin".into()).spawn(move || {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                let failed = line.is_err();
                if tx.send(line).is_err() || failed {
                    break;
                }
            }
            // Dropping `tx` tells the readers the input ended.
        });
        if let Err(e) = spawned {
            // No thread, no input: report it to the first question (the channel then closes).
            let (tx, rx) = unbounded_channel();
            let _ = tx.send(Err(e));
            return Mutex::new(rx);
        }
        Mutex::new(rx)
    })
}

/// Prints `prompt` and waits for the next line of standard input, without blocking the runtime;
/// `Ok(None)` once the input has ended.
pub(crate) async fn ask_line(prompt: &str) -> std::io::Result<Option<String>> {
    use std::io::{IsTerminal, Write};
    // One question at a time owns the terminal: its prompt is printed only once it will get
    // the next line, so parallel questions never swap answers.
    let mut lines = lines().lock().await;
    if std::io::stdin().is_terminal() {
        // Lines a person typed before this question was shown (say, late for a question that
        // timed out) answer no one; piped input is kept, it was written for the questions.
        while lines.try_recv().is_ok() {}
    }
    {
        let mut out = std::io::stdout().lock();
        write!(out, "{prompt}")?;
        out.flush()?;
    }
    match lines.recv().await {
        Some(Ok(line)) => Ok(Some(line.trim_end_matches('\r').to_string())),
        Some(Err(e)) => Err(e),
        None => Ok(None),
    }
}
