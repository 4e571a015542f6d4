//! The web page at `/` in a real headless Chromium (Debian's `chromium`, as .ci/run installs
//! it), against a real server over loopback: pick the conversational flow, type a message and
//! press Enter, see the reply stream in word by word (the flow holds its last word until the
//! test lets it go), reload and see the history; a hostile message shows as text; start the
//! review flow, see its pause among the pending feedback, answer it, see the run finish with
//! its events; start a flow with inputs from its form; browse runs and sessions; under
//! `tenant_router`, the page asks for the API key and works once it is given. Screenshots land
//! in `target/crewflow-page/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

#[path = "../../crewflow-plot/tests/cdp/mod.rs"]
mod cdp;
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cdp::Browser;
use common::{Running, greet, review, serve, serve_app, streaming_chat};
use crewflow_server::{DoubleTexting, Server, Tenants, tenant_router};
use serde_json::json;
use tokio::sync::Semaphore;

/// Evaluates `script` until it is `true`; panics naming `what` (with the page's text) after 30 s.
fn wait(browser: &mut Browser, script: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if browser.eval(script) == json!(true) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let page = browser.eval("document.body.innerText");
    panic!("gave up waiting: {what}\nthe page says:\n{}", page.as_str().unwrap_or_default());
}

/// A real mouse click in the middle of the element `selector` matches (scrolled into view).
fn click(browser: &mut Browser, selector: &str) {
    let at = browser.eval(&format!(
        "(() => {{ const e = document.querySelector({selector:?}); if (!e) return null; e.scrollIntoView({{block: 'center'}}); \
         const r = e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2, r.width * r.height]; }})()"
    ));
    assert!(at.is_array() && at[2].as_f64().unwrap() > 0.0, "nothing visible to click at {selector}: {at}");
    browser.click(at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
}

/// Focuses the element `selector`, types `text` into it and presses Enter.
fn type_and_enter(browser: &mut Browser, selector: &str, text: &str) {
    browser.eval(&format!("document.querySelector({selector:?}).focus()"));
    browser.type_text(text);
    browser.press("Enter", 13);
}

fn text_of(browser: &mut Browser, script: &str) -> String {
    browser.eval(script).as_str().unwrap_or_else(|| panic!("{script} is not a string")).to_string()
}

fn screenshot(browser: &mut Browser, name: &str) {
    let png = browser.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let path = cdp::target_dir("crewflow-page").join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// The messages of the chat, as `role: text`.
fn messages(browser: &mut Browser) -> Vec<String> {
    let list = browser.eval(
        "[...document.querySelectorAll('#messages li[data-role]')].map(li => li.dataset.role + ': ' + li.textContent)",
    );
    serde_json::from_value(list).unwrap()
}

/// A server with `talk` (conversational, streamed, held by `gate`), `review` (pauses for
/// feedback) and `greet` (takes inputs), over SQLite files in `dir`.
fn hosting(dir: &std::path::Path, gate: Arc<Semaphore>) -> Server {
    let store = crewflow_store::open(dir.join("runs.db").to_str().unwrap()).unwrap();
    Server::new(store.clone())
        .flow(&review(&store))
        .unwrap()
        .flow(&greet(&store))
        .unwrap()
        .chat(&streaming_chat(dir.join("sessions.db"), gate), DoubleTexting::Enqueue)
        .unwrap()
}

/// Serves `app` at the root of a loopback port (not nested, unlike `common::serve_app`).
async fn serve_at_root(app: axum::Router) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    crewflow_llm::install_crypto_provider();
    Running { base: format!("http://{addr}"), addr, client: reqwest::Client::new(), key: None, task: Arc::new(task) }
}

#[test]
fn the_page_chats_with_streamed_replies_answers_a_pause_and_browses_runs_and_sessions() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let srv: Running = runtime.block_on(serve(hosting(dir.path(), gate.clone())));
    let mut b = Browser::launch(1100, 800);
    // Page events on (the script below is only installed with them), though the client reads none.
    b.call("Page.enable", json!({}));
    b.call("Page.addScriptToEvaluateOnNewDocument", json!({ "source": WATCH_POLICY }));

    // The flows, at the router's prefix (`/api`, no trailing slash: the page still calls
    // `/api/flows`, not `/flows`).
    b.goto(&srv.base);
    wait(&mut b, "document.querySelectorAll('#flows button').length === 3", "the three flows listed");
    let names = b.eval("[...document.querySelectorAll('#flows button')].map(b => b.dataset.flow)");
    assert_eq!(names, json!(["greet", "review", "talk"]));
    screenshot(&mut b, "flows");

    // Pick the conversational flow: its chat opens; type, Enter sends.
    click(&mut b, "#flows button[data-flow=talk]");
    wait(&mut b, "!!document.querySelector('#message')", "the chat's message box");
    assert_eq!(b.eval("document.activeElement.id"), json!("message"), "the message box has the focus");
    type_and_enter(&mut b, "#message", "hello there");
    // The reply streams in: all but its last word, which the flow holds until the gate opens.
    wait(
        &mut b,
        "(() => { const r = document.querySelector('#messages li.assistant'); return !!r && r.textContent === 'echo: hello ' && r.classList.contains('streaming'); })()",
        "the partial reply `echo: hello ` while the turn runs",
    );
    assert_eq!(b.eval("document.querySelector('#message').value"), json!(""), "Enter sent the message");
    screenshot(&mut b, "chat-streaming");
    gate.add_permits(1);
    wait(
        &mut b,
        "(() => { const r = document.querySelector('#messages li.assistant'); return r.textContent === 'echo: hello there' && !r.classList.contains('streaming'); })()",
        "the whole reply",
    );
    let hash = text_of(&mut b, "location.hash");
    let session =
        hash.strip_prefix("#/sessions/").unwrap_or_else(|| panic!("the chat's address names its session: {hash}"));
    let session = session.to_string();
    let (code, stored) = runtime.block_on(srv.get(&format!("/sessions/{session}")));
    assert_eq!((code, stored["messages"][1]["content"].as_str()), (200, Some("echo: hello there")), "{stored}");

    // Reopened, the session shows its history, turns and traces.
    b.reload();
    wait(&mut b, "document.querySelectorAll('#messages li[data-role]').length === 2", "the history after a reload");
    assert_eq!(messages(&mut b), ["user: hello there", "assistant: echo: hello there"]);
    let spans = b.eval("[...document.querySelectorAll('#traces [data-span]')].map(li => li.dataset.span)");
    assert!(spans.as_array().unwrap().iter().any(|s| s == "t0"), "the turn's span is in the trace: {spans}");
    screenshot(&mut b, "chat-history");

    // A hostile message is text, streamed and from the history alike: its tags (whole words,
    // so each comes in one token) would make elements, and the image's handler would run, if
    // anything were put in as HTML.
    let hostile = "<b>bold</b> <img\tsrc=x\tonerror=window.pwned=1> end";
    type_and_enter(&mut b, "#message", hostile);
    let last = "[...document.querySelectorAll('#messages li.assistant')].pop()";
    let partial = format!("echo: {}", hostile.strip_suffix("end").unwrap());
    wait(
        &mut b,
        &format!("(r => r.textContent === {partial:?} && r.classList.contains('streaming'))({last})"),
        "the hostile reply streaming, as text",
    );
    let check = "document.querySelectorAll('main img, main b').length === 0 && window.pwned === undefined";
    assert_eq!(b.eval(check), json!(true), "streamed markup was parsed as HTML");
    gate.add_permits(1);
    let reply = format!("echo: {hostile}");
    wait(
        &mut b,
        &format!("(r => r.textContent === {reply:?} && !r.classList.contains('streaming'))({last})"),
        "the whole reply to the hostile message",
    );
    assert_eq!(b.eval(check), json!(true), "markup from the server was parsed as HTML");
    b.reload();
    wait(
        &mut b,
        "document.querySelectorAll('#messages li[data-role]').length === 4",
        "the history with the hostile turn",
    );
    assert_eq!(messages(&mut b)[2..], [format!("user: {hostile}"), format!("assistant: {reply}")]);
    assert_eq!(b.eval(check), json!(true), "markup from the history was parsed as HTML");

    // The review flow: start it from its form, see its pause, answer it in the feedback view.
    click(&mut b, "nav a[href='#/flows']");
    wait(&mut b, "!!document.querySelector('#flows button[data-flow=review]')", "the flows again");
    click(&mut b, "#flows button[data-flow=review]");
    wait(&mut b, "!!document.querySelector('#start-form button[type=submit]')", "the review flow's start form");
    click(&mut b, "details.picture-box summary");
    wait(&mut b, "document.querySelector('iframe.picture').srcdoc.includes('draft')", "the flow's picture");
    click(&mut b, "#start-form button[type=submit]");
    wait(&mut b, "location.hash.startsWith('#/runs/')", "the started run's page");
    let run = text_of(&mut b, "location.hash.slice('#/runs/'.length)");
    wait(&mut b, "document.querySelector('#run-status')?.textContent === 'paused'", "the run paused for feedback");
    click(&mut b, "nav a[href='#/feedback']");
    wait(
        &mut b,
        &format!("!!document.querySelector('#feedback li[data-run=\"{run}\"] button[data-answer=approved]')"),
        "the run's pending feedback",
    );
    let item = text_of(&mut b, &format!("document.querySelector('#feedback li[data-run=\"{run}\"]').innerText"));
    assert!(item.contains("Publish?") && item.contains("the draft"), "{item}");
    screenshot(&mut b, "feedback");
    click(&mut b, &format!("#feedback li[data-run=\"{run}\"] button[data-answer=approved]"));
    wait(&mut b, "document.querySelector('#run-status')?.textContent === 'finished'", "the answered run finished");
    assert_eq!(b.eval("document.querySelector('#run-output').textContent"), json!("published"));
    // Its events, as a timeline: from its start, through the pause and the answer, to its end.
    wait(&mut b, "!!document.querySelector('#events li[data-kind=run_finished]')", "the run's events to its end");
    let kinds = b.eval("[...document.querySelectorAll('#events li')].map(li => li.dataset.kind)");
    let kinds: Vec<String> = serde_json::from_value(kinds).unwrap();
    for kind in ["run_started", "step_finished", "feedback_requested", "run_paused", "run_resumed", "run_finished"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} among the events: {kinds:?}");
    }
    screenshot(&mut b, "run");
    let (_, pending) = runtime.block_on(srv.get("/feedback"));
    assert_eq!(pending["feedback"], json!([]), "the answer went to the server");
    let actions = "[...document.querySelectorAll('#run-actions button')].map(b => b.dataset.action)";
    assert_eq!(b.eval(actions), json!(["fork"]), "a finished run can only be forked");

    // The run's buttons: fork the finished run (a new run from the state it reached, from the
    // flow's starts: it pauses for its review again), cancel the fork's pause, resume it from
    // its last checkpoint (it pauses again).
    click(&mut b, "#run-actions button[data-action=fork]");
    wait(
        &mut b,
        &format!("location.hash.startsWith('#/runs/') && location.hash !== '#/runs/{run}'"),
        "the fork's page",
    );
    let fork = text_of(&mut b, "location.hash.slice('#/runs/'.length)");
    wait(&mut b, "document.querySelector('#run-status')?.textContent === 'paused'", "the fork paused for its review");
    wait(&mut b, &format!("JSON.stringify({actions}) === '[\"cancel\",\"fork\"]'"), "a paused run's buttons");
    click(&mut b, "#run-actions button[data-action=cancel]");
    wait(&mut b, "document.querySelector('#run-status')?.textContent === 'cancelled'", "the fork cancelled");
    let (_, cancelled) = runtime.block_on(srv.get(&format!("/runs/{fork}")));
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(b.eval(actions), json!(["resume", "fork"]), "a cancelled run's buttons");
    click(&mut b, "#run-actions button[data-action=resume]");
    wait(&mut b, "document.querySelector('#run-status')?.textContent === 'paused'", "the fork resumed, paused again");
    let (_, resumed) = runtime.block_on(srv.get(&format!("/runs/{fork}")));
    assert_eq!(resumed["status"], "paused", "{resumed}");
    screenshot(&mut b, "run-actions");
    b.goto(&format!("{}#/runs/{run}", srv.base));
    wait(&mut b, "document.querySelector('#run-status')?.textContent === 'finished'", "the review run again");

    // A flow with inputs: its form starts a run with them.
    b.goto(&format!("{}#/flows/greet", srv.base));
    wait(&mut b, "!!document.querySelector('#input-name')", "greet's input form");
    b.eval("document.querySelector('#input-name').focus()");
    b.type_text("Ada");
    click(&mut b, "#start-form button[type=submit]");
    wait(&mut b, "document.querySelector('#run-output')?.textContent === 'HELLO, ADA'", "greet's output");

    // The runs, listed; one opened shows its events.
    click(&mut b, "nav a[href='#/runs']");
    wait(&mut b, &format!("!!document.querySelector('#runs tr[data-run=\"{run}\"]')"), "the review run listed");
    let row = text_of(&mut b, &format!("document.querySelector('#runs tr[data-run=\"{run}\"]').innerText"));
    assert!(row.contains("review") && row.contains("finished"), "{row}");
    assert_eq!(b.eval("document.querySelectorAll('#runs tbody tr').length"), json!(3), "review, its fork, greet");
    screenshot(&mut b, "runs");
    click(&mut b, &format!("#runs tr[data-run=\"{run}\"] a"));
    wait(&mut b, "!!document.querySelector('#events li[data-kind=run_finished]')", "the opened run's events");

    // The sessions, listed; one opened is the chat again.
    click(&mut b, "nav a[href='#/sessions']");
    wait(&mut b, "!!document.querySelector('#sessions tbody a')", "the session listed");
    assert_eq!(b.eval("document.querySelector('#sessions tbody a').textContent"), json!(session));
    click(&mut b, "#sessions tbody a");
    wait(&mut b, "document.querySelectorAll('#messages li[data-role]').length === 4", "the session's messages");
    assert_eq!(messages(&mut b)[..2], ["user: hello there", "assistant: echo: hello there"]);
    assert_eq!(b.eval("document.getElementById('notice').hidden"), json!(true), "an error was shown");

    // Through all of it, the Content-Security-Policy refused nothing of the page's own; what it
    // refuses is reported (an injected inline script does not run, and is seen here).
    assert_eq!(b.eval("window.__policy || []"), json!([]), "the policy refused part of the page");
    let ran = b.eval(
        "(() => { const s = document.createElement('script'); s.textContent = 'window.injected = 1'; document.body.append(s); return window.injected === 1; })()",
    );
    assert_eq!(ran, json!(false), "an injected inline script ran");
    wait(&mut b, "(window.__policy || []).some(v => v.startsWith('script-src'))", "the refusal of the injected script");

    // The picture, opened on its own, comes under the same policy (the page's frame of it, a
    // `srcdoc`, inherits the page's): its script runs (it fits the drawing: a transform) and
    // nothing of it is refused.
    b.goto(&format!("{}/flows/review/plot", srv.base));
    wait(
        &mut b,
        "!!document.getElementById('vp')?.getAttribute('transform')",
        "the picture's script to fit the drawing",
    );
    assert_eq!(b.eval("window.__policy || []"), json!([]), "the policy refused part of the picture");
}

/// Run in every document before its own scripts (`Page.addScriptToEvaluateOnNewDocument`):
/// collects what the Content-Security-Policy refuses into `window.__policy`.
const WATCH_POLICY: &str = r#"
document.addEventListener('securitypolicyviolation', (e) =>
  (window.__policy ||= []).push(e.violatedDirective + ' ' + e.blockedURI + ' ' + (e.sample || '')));
"#;

#[test]
fn under_tenant_router_the_page_asks_for_the_key_and_works_with_it() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tenants = Tenants::new()
        .tenant("acme", hosting(dir.path(), Arc::new(Semaphore::new(0))))
        .unwrap()
        .key("acme", "sk-page")
        .unwrap();
    let srv = runtime.block_on(serve_at_root(tenant_router(tenants)));
    // The page itself needs no key; every route does.
    let (code, mime, html) = runtime.block_on(srv.text("/"));
    assert_eq!((code, mime.as_str()), (200, "text/html; charset=utf-8"));
    assert!(html.contains("API key"), "{html}");
    let (code, _) = runtime.block_on(srv.get("/flows"));
    assert_eq!(code, 401);

    // Served at the root this time: the page's own path, `/`, ends with its slash.
    let mut b = Browser::launch(1000, 700);
    b.goto(&format!("{}/", srv.base));
    wait(&mut b, "!document.getElementById('key-form').hidden", "the key prompt");
    assert_eq!(b.eval("document.activeElement.id"), json!("key-input"));
    assert_eq!(b.eval("document.getElementById('main').hidden"), json!(true));
    screenshot(&mut b, "key-prompt");

    type_and_enter(&mut b, "#key-input", "sk-wrong");
    wait(
        &mut b,
        "!document.getElementById('key-form').hidden && document.getElementById('key-why').textContent.includes('refused')",
        "a refused key asks again",
    );
    type_and_enter(&mut b, "#key-input", "sk-page");
    wait(&mut b, "document.querySelectorAll('#flows button').length === 3", "the flows, with the key");
    assert_eq!(b.eval("document.getElementById('key-form').hidden"), json!(true));
    assert_eq!(b.eval("sessionStorage.getItem('crewflow-api-key')"), json!("sk-page"));
    // The key goes with the picture and the streams too: a run's events under the key.
    let (code, started) =
        runtime.block_on(srv.with_key("sk-page").post("/flows/greet/runs?wait=true", r#"{"name": "Bo"}"#));
    assert_eq!(code, 200, "{started}");
    b.goto(&format!("{}/#/runs/{}", srv.base, started["run_id"].as_str().unwrap()));
    wait(&mut b, "!!document.querySelector('#events li[data-kind=run_finished]')", "the run's events, with the key");
    wait(&mut b, "document.querySelector('#run-output')?.textContent === 'HELLO, BO'", "the run's output");
    b.goto(&format!("{}/#/flows/greet", srv.base));
    wait(&mut b, "!!document.querySelector('details.picture-box summary')", "greet's page");
    click(&mut b, "details.picture-box summary");
    wait(&mut b, "document.querySelector('iframe.picture').srcdoc.includes('shout')", "the picture, with the key");
    screenshot(&mut b, "tenant-flow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_under_the_prefix_with_or_without_its_slash_and_can_be_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(hosting(dir.path(), Arc::new(Semaphore::new(0)))).await;
    // Nested under `/api`, the page is at `/api` (axum routes no `/api/` into a nested router).
    let (code, mime, html) = srv.text("").await;
    assert_eq!((code, mime.as_str()), (200, "text/html; charset=utf-8"));
    assert!(html.starts_with("<!doctype html>"), "{html}");
    // Under a Content-Security-Policy: no inline code but its own, by hash; only its server.
    let answer = reqwest::get(&srv.base).await.unwrap();
    let policy = answer.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(policy.starts_with("default-src 'none'; script-src 'sha256-"), "{policy}");
    assert!(policy.contains("connect-src 'self'") && !policy.contains("unsafe-inline"), "{policy}");
    let (code, _) = srv.post("", "{}").await;
    assert_eq!(code, 405, "only GET serves the page");

    let off = serve(hosting(dir.path(), Arc::new(Semaphore::new(0))).page(false)).await;
    let (code, e) = off.get("").await;
    assert_eq!((code, common::error_of(&e).0), (404, "not_found"), "{e}");
    let tenants = |page: bool| {
        Tenants::new()
            .tenant("acme", hosting(dir.path(), Arc::new(Semaphore::new(0))))
            .unwrap()
            .key("acme", "k")
            .unwrap()
            .page(page)
    };
    let off = serve_app(tenant_router(tenants(false))).await;
    let (code, e) = off.get("").await;
    assert_eq!((code, common::error_of(&e).0), (401, "unauthorized"), "{e}");
    let (code, e) = off.with_key("k").get("").await;
    assert_eq!((code, common::error_of(&e).0), (404, "not_found"), "{e}");
    let on = serve_app(tenant_router(tenants(true))).await;
    let (code, _, html) = on.text("").await;
    assert_eq!(code, 200);
    assert!(html.starts_with("<!doctype html>"));
}
