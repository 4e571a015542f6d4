//! A TCP proxy in front of the test PostgreSQL server that cuts connections: all at once (the
//! server goes away: [`Proxy::cut`]), or at a chosen statement, at a chosen moment of its
//! transaction ([`Proxy::cut_at`], [`Cut`]). While it is cut it refuses new connections;
//! [`Proxy::restore`] brings it back.
//!
//! To cut at a statement it reads the client's side of the PostgreSQL protocol: `Parse`
//! names a statement's text, `Bind` runs a named statement, `Query` runs a simple query (how
//! `COMMIT` is sent), and `Sync` ends an exchange, committing its implicit transaction when no
//! `BEGIN` is open. Withholding that `Sync` (sending `Flush` instead, so the server still
//! answers) leaves a statement run but not committed: the server rolls it back when the
//! connection drops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// When, in a statement's life, a [`Proxy::cut_at`] cuts the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The statement never reaches the server.
    Before,
    /// The server runs the statement, but its transaction is not committed when the
    /// connection drops, so it is rolled back. (For a simple query such as `COMMIT`: the
    /// query is not sent, so the open transaction is rolled back.)
    Uncommitted,
    /// The server runs the statement and commits it (unless a `BEGIN` is open); the connection
    /// drops before the client hears back.
    Committed,
}

struct Rule {
    sql: String,
    nth: usize,
    cut: Cut,
    seen: usize,
}

struct Shared {
    upstream: String,
    down: watch::Sender<bool>,
    rule: Mutex<Option<Rule>>,
    fired: Mutex<Option<String>>,
    /// A statement to hold back until released (see [`Proxy::hold_at`]).
    hold: Mutex<Option<String>>,
    /// Whether a statement is held now.
    holding: watch::Sender<bool>,
    release: tokio::sync::Notify,
}

impl Shared {
    /// Whether `sql` is the statement the rule waits for; if so the rule fires (once).
    fn fires(&self, sql: &str) -> Option<Cut> {
        let mut rule = self.rule.lock().unwrap();
        let r = rule.as_mut()?;
        if !sql.contains(&r.sql) {
            return None;
        }
        r.seen += 1;
        if r.seen < r.nth {
            return None;
        }
        let cut = r.cut;
        *rule = None;
        *self.fired.lock().unwrap() =
            Some(format!("{cut:?} at `{}`", sql.split_whitespace().collect::<Vec<_>>().join(" ")));
        Some(cut)
    }

    fn go_down(&self) {
        self.down.send_replace(true);
    }

    /// Whether `sql` is the statement to hold; if so the hold is taken (once).
    fn holds(&self, sql: &str) -> bool {
        let mut hold = self.hold.lock().unwrap();
        if hold.as_ref().is_some_and(|h| sql.contains(h.as_str())) {
            *hold = None;
            return true;
        }
        false
    }
}

/// The proxy; dropping it stops it (connections through it are closed).
pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.go_down();
    }
}

impl Proxy {
    /// A proxy on a free port of 127.0.0.1, in front of the server of `CREWFLOW_TEST_POSTGRES`.
    pub async fn start() -> Proxy {
        let config: tokio_postgres::Config = super::postgres::base_url().parse().unwrap();
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "127.0.0.1".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let local_port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream: format!("{host}:{port}"),
            down: watch::channel(false).0,
            rule: Mutex::new(None),
            fired: Mutex::new(None),
            hold: Mutex::new(None),
            holding: watch::channel(false).0,
            release: tokio::sync::Notify::new(),
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *s.down.borrow() {
                    continue; // refused: dropped at once
                }
                tokio::spawn(serve(inbound, s.clone()));
            }
        });
        Proxy { port: local_port, shared, accept }
    }

    /// The URL of `direct` (a URL of the test server, as `fresh_schema` returns) through the
    /// proxy.
    pub fn url(&self, direct: &str) -> String {
        let config: tokio_postgres::Config = direct.parse().unwrap();
        let user = config.get_user().unwrap_or("postgres");
        let password = config.get_password().map(|p| format!(":{}", String::from_utf8_lossy(p))).unwrap_or_default();
        let db = config.get_dbname().unwrap_or(user);
        let mut url = format!("postgres://{user}{password}@127.0.0.1:{}/{db}", self.port);
        if let Some((_, query)) = direct.split_once('?') {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// Cuts every connection now and refuses new ones, as a server that went away.
    pub fn cut(&self) {
        self.shared.go_down();
    }

    /// Accepts connections again (the ones cut stay cut).
    pub fn restore(&self) {
        *self.shared.rule.lock().unwrap() = None;
        self.shared.down.send_replace(false);
    }

    /// Cuts every connection (and refuses new ones) at the `nth` run (from 1) of a statement
    /// whose text contains `sql`, at the moment `cut` says.
    pub fn cut_at(&self, sql: &str, nth: usize, cut: Cut) {
        *self.shared.fired.lock().unwrap() = None;
        *self.shared.rule.lock().unwrap() = Some(Rule { sql: sql.to_string(), nth, cut, seen: 0 });
    }

    /// Holds back the next statement whose text contains `sql` (and what its client sends after
    /// it) until [`release`](Proxy::release): another client can act in between.
    pub fn hold_at(&self, sql: &str) {
        *self.shared.hold.lock().unwrap() = Some(sql.to_string());
    }

    /// Returns once a statement is held.
    pub async fn held(&self) {
        self.shared.holding.subscribe().wait_for(|h| *h).await.unwrap();
    }

    /// Lets the held statement go on.
    pub fn release(&self) {
        self.shared.holding.send_replace(false);
        self.shared.release.notify_one();
    }

    /// What the last rule fired at, if it fired.
    pub fn fired(&self) -> Option<String> {
        self.shared.fired.lock().unwrap().clone()
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        *self.shared.down.borrow()
    }
}

/// A connection's exchanges, and the cut waiting for its moment.
#[derive(Default)]
struct Conn {
    /// Statement names and their text (from `Parse`).
    statements: HashMap<String, String>,
    /// The startup, and the `Sync` and `Query` messages passed to the server: each gets one
    /// `ReadyForQuery`.
    exchanges: u64,
    /// `ReadyForQuery` messages from the server: the exchanges answered.
    answered: u64,
    /// Send `Flush` in place of `Sync` (the statement's transaction is not to commit).
    withhold_sync: bool,
    /// A statement the rule fired at, waiting for the server's answer.
    pending: Option<PendingCut>,
    /// The client asked for TLS: the server answers with one untyped byte.
    tls_reply: bool,
}

/// A cut waiting for the server: the client may have sent the statement before it read the
/// answer to its previous exchange (tokio-postgres pipelines), so the cut counts exchanges.
struct PendingCut {
    cut: Cut,
    /// Exchanges sent before the statement's own.
    earlier: u64,
}

impl Conn {
    /// Whether server message `kind` is the one to cut at; messages of earlier exchanges pass.
    fn cuts_at(&self, kind: u8) -> bool {
        match &self.pending {
            Some(PendingCut { cut: Cut::Uncommitted, earlier }) => self.answered >= *earlier && b"CE".contains(&kind),
            Some(PendingCut { cut: Cut::Committed, earlier }) => self.answered >= *earlier && kind == b'Z',
            _ => false,
        }
    }

    /// Whether the client hears no more: the earlier exchanges are answered.
    fn silenced(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| self.answered >= p.earlier)
    }
}

async fn serve(inbound: TcpStream, shared: Arc<Shared>) {
    let mut down = shared.down.subscribe();
    let Ok(outbound) = TcpStream::connect(&shared.upstream).await else { return };
    let conn = Arc::new(Mutex::new(Conn::default()));
    let (from_client, to_client) = inbound.into_split();
    let (from_server, to_server) = outbound.into_split();
    tokio::select! {
        _ = down.wait_for(|d| *d) => {}
        _ = client_to_server(from_client, to_server, &shared, &conn) => {}
        _ = server_to_client(from_server, to_client, &shared, &conn) => {}
    }
    // Dropping the halves closes both connections.
}

/// Reads a big-endian `u32` at `at`.
fn u32_at(buf: &[u8], at: usize) -> usize {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize
}

/// The NUL-terminated string at the start of `buf`, and what follows it.
fn cstr(buf: &[u8]) -> (String, &[u8]) {
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    (String::from_utf8_lossy(&buf[..end]).into_owned(), buf.get(end + 1..).unwrap_or_default())
}

/// What the client's messages read so far call for.
enum Next {
    /// Read more.
    Read,
    /// Hold the connection's next message until released.
    Hold,
    /// Cut now.
    Cut,
}

async fn client_to_server(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    conn: &Mutex<Conn>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut startup = true;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut out = Vec::new();
        let next = pass_on(&mut buf, &mut out, &mut startup, shared, conn);
        to.write_all(&out).await?;
        match next {
            Next::Cut => {
                shared.go_down();
                return Ok(());
            }
            Next::Hold => {
                shared.holding.send_replace(true);
                shared.release.notified().await;
            }
            Next::Read => {
                let n = from.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// Moves the complete messages of `buf` to `out` (as the rules say), until one calls for more
/// than passing on.
fn pass_on(buf: &mut Vec<u8>, out: &mut Vec<u8>, startup: &mut bool, shared: &Shared, conn: &Mutex<Conn>) -> Next {
    loop {
        // Startup messages have no type byte.
        let header = if *startup { 0 } else { 1 };
        if buf.len() < header + 4 {
            return Next::Read;
        }
        let total = header + u32_at(buf, header);
        if buf.len() < total {
            return Next::Read;
        }
        let msg: Vec<u8> = buf.drain(..total).collect();
        if *startup {
            let code = u32_at(&msg, 4);
            // SSLRequest or GSSENCRequest: another startup message follows.
            if code == 80_877_103 || code == 80_877_104 {
                conn.lock().unwrap().tls_reply = true;
            } else {
                // The server's first `ReadyForQuery` ends the startup.
                conn.lock().unwrap().exchanges += 1;
                *startup = false;
            }
            out.extend_from_slice(&msg);
            continue;
        }
        let body = &msg[5..];
        let mut c = conn.lock().unwrap();
        let fired = match msg[0] {
            b'P' => {
                let (name, rest) = cstr(body);
                let (sql, _) = cstr(rest);
                c.statements.insert(name, sql);
                None
            }
            b'B' => {
                let (_portal, rest) = cstr(body);
                let (name, _) = cstr(rest);
                let sql = c.statements.get(&name).cloned().unwrap_or_default();
                if shared.holds(&sql) {
                    buf.splice(0..0, msg);
                    return Next::Hold;
                }
                shared.fires(&sql)
            }
            // A simple query cannot be left uncommitted: not sending it is the cut.
            b'Q' => shared.fires(&cstr(body).0).map(|cut| if cut == Cut::Uncommitted { Cut::Before } else { cut }),
            _ => None,
        };
        match fired {
            Some(Cut::Before) => return Next::Cut,
            Some(cut) => {
                c.withhold_sync = cut == Cut::Uncommitted;
                c.pending = Some(PendingCut { cut, earlier: c.exchanges });
            }
            None => {}
        }
        match msg[0] {
            b'S' if c.withhold_sync => {
                out.extend_from_slice(&[b'H', 0, 0, 0, 4]); // Flush: answer, but do not commit
                continue;
            }
            b'S' | b'Q' => c.exchanges += 1,
            _ => {}
        }
        out.extend_from_slice(&msg);
    }
}

async fn server_to_client(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    conn: &Mutex<Conn>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut cut_now = false;
        {
            let mut c = conn.lock().unwrap();
            if c.tls_reply && !buf.is_empty() {
                c.tls_reply = false;
                out.push(buf.remove(0));
            }
        }
        while buf.len() >= 5 {
            let total = 1 + u32_at(&buf, 1);
            if buf.len() < total {
                break;
            }
            let msg: Vec<u8> = buf.drain(..total).collect();
            let mut c = conn.lock().unwrap();
            if c.cuts_at(msg[0]) {
                let answer = match msg[0] {
                    b'C' => "the statement ran",
                    b'E' => "the statement failed",
                    _ => "the exchange ended",
                };
                if let Some(fired) = shared.fired.lock().unwrap().as_mut() {
                    fired.push_str(&format!(", cut once the server said {answer}"));
                }
                cut_now = true;
                break;
            }
            if !c.silenced() {
                out.extend_from_slice(&msg);
            }
            if msg[0] == b'Z' {
                c.answered += 1;
            }
        }
        to.write_all(&out).await?;
        if cut_now {
            shared.go_down();
            return Ok(());
        }
    }
}
