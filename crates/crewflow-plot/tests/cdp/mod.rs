//! A tiny Chrome DevTools Protocol client over a real headless Chromium: enough to load a
//! page, evaluate script, click at a point, type text and keys, and take a screenshot.
//!
//! Why not `headless_chrome` or `chromiumoxide`: both compile the whole generated protocol
//! (headless_chrome's build script generates it with `auto_generate_cdp`): from scratch on the
//! 2-core CI machine, headless_chrome 1.0.22 built in 4 min 47 s (118 crates), tungstenite with
//! base64 in 18 s (29 crates), for the five commands used here.
//! Shared by the plot page's browser test, the `plot_1000_render` benchmark and the run
//! server's page test (crates/crewflow-server/tests/page.rs).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each user takes a part; tests may panic

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// Where Debian's chromium is (installed by `.ci/run`), or `$CREWFLOW_CHROMIUM`.
pub fn chromium_path() -> PathBuf {
    let path = std::env::var_os("CREWFLOW_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(
        path.exists(),
        "no Chromium at {}: install Debian's chromium (`apt-get install -y --no-install-recommends chromium`, as .ci/run does) or set CREWFLOW_CHROMIUM",
        path.display()
    );
    path
}

/// A headless Chromium, killed when dropped, with one page attached.
pub struct Browser {
    child: Child,
    socket: WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts Chromium with a `width`×`height` window and opens a blank page.
    pub fn launch(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(chromium_path())
            .args([
                "--headless=new",
                "--no-sandbox", // CI runs as root, where the sandbox refuses to start
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let url = devtools_url(&mut child);
        let rest = url.strip_prefix("ws://").expect("a ws:// DevTools URL");
        let host = rest.split('/').next().unwrap().to_string();
        let stream = TcpStream::connect(&host).expect("connect to DevTools");
        // Only guards against a hung browser; nothing is timed.
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let (socket, _) = tungstenite::client(url.as_str(), stream).expect("DevTools websocket handshake");
        let mut browser = Browser { child, socket, session: String::new(), next_id: 0, _profile: profile };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = browser.call("Target.attachToTarget", json!({"targetId": target_id, "flatten": true}));
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser
    }

    /// Sends a command (to the page once attached) and returns its result; events are skipped.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let reply = self.send(method, params);
        assert!(reply.get("error").is_none(), "{method} failed: {}", reply["error"]);
        reply["result"].clone()
    }

    /// Sends a command and returns the whole reply (`result` or `error`).
    fn send(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.socket.send(Message::text(msg.to_string())).expect("send to DevTools");
        loop {
            let reply = self.socket.read().expect("read from DevTools");
            let Ok(text) = reply.to_text() else { continue };
            let Ok(v) = serde_json::from_str::<Value>(text) else { continue };
            if v["id"] == json!(id) {
                return v;
            }
        }
    }

    /// Loads a file and waits until its scripts have run (the document is complete).
    pub fn open(&mut self, path: &Path) {
        self.goto(&format!("file://{}", path.canonicalize().unwrap().display()));
    }

    /// Loads a URL (the exact `location.href` it ends at) and waits until the document is
    /// complete.
    pub fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        while self.eval(&format!("location.href === {url:?} && document.readyState")) != json!("complete") {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reloads the page and waits until the new document is complete.
    pub fn reload(&mut self) {
        self.eval("window.__cdp_old_document = true");
        self.call("Page.reload", json!({}));
        // While the old document goes, an evaluation may find no context: ask again.
        let check = json!({"expression": "!window.__cdp_old_document && document.readyState", "returnByValue": true});
        while self.send("Runtime.evaluate", check.clone())["result"]["result"]["value"] != json!("complete") {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `text` into the focused element, as an input method would.
    pub fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({"text": text}));
    }

    /// Presses and releases a key (`"Enter"`, `"Tab"`) in the focused element.
    pub fn press(&mut self, key: &str, code: u32) {
        let text = if key == "Enter" { "\r" } else { "" };
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyDown", "key": key, "code": key, "windowsVirtualKeyCode": code, "text": text}),
        );
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key, "code": key, "windowsVirtualKeyCode": code}),
        );
    }

    /// Evaluates a script in the page and returns its value; an exception panics with it.
    pub fn eval(&mut self, script: &str) -> Value {
        let r =
            self.call("Runtime.evaluate", json!({"expression": script, "returnByValue": true, "awaitPromise": true}));
        assert!(r.get("exceptionDetails").is_none(), "script failed: {script}\n{}", r["exceptionDetails"]);
        r["result"]["value"].clone()
    }

    /// A real mouse click (press and release) at a point of the viewport.
    pub fn click(&mut self, x: f64, y: f64) {
        self.call("Input.dispatchMouseEvent", json!({"type": "mouseMoved", "x": x, "y": y}));
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "buttons": 1, "clickCount": 1}),
            );
        }
    }

    /// A PNG screenshot of the viewport.
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap()
    }
}

/// Reads Chromium's stderr up to its `DevTools listening on ws://…` line.
fn devtools_url(child: &mut Child) -> String {
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap_or_default();
        if let Some(url) = line.strip_prefix("DevTools listening on ") {
            // Keep draining stderr so Chromium never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return url.trim().to_string();
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    panic!("Chromium exited before listening for DevTools:\n{seen}");
}

/// `target/<name>`, next to the build's own files (where a reviewer finds screenshots).
pub fn target_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
