//! The dashboard in a real headless Chromium, driven over the DevTools protocol: a store with a
//! finished grid and a running one; the table and the charts are drawn with the right counts,
//! two ticked trials share one chart, and a screenshot (kept as
//! `target/tmp/dashboard.png`) is not blank.
//!
//! Chromium is found as `$RUNNER_TEST_CHROMIUM`, `chromium` or `chromium-browser`. Without one
//! the test says it skipped, unless `RUNNER_TEST_REQUIRE_CHROMIUM=1` (CI sets it): then it fails.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::serve::{finished_store, Server};
use crate::util::grid;

fn chromium() -> Option<String> {
    if let Ok(path) = std::env::var("RUNNER_TEST_CHROMIUM") {
        return Some(path);
    }
    ["chromium", "chromium-browser"]
        .into_iter()
        .map(String::from)
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// A headless Chromium and one page of it, over the DevTools protocol.
struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(binary: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e}"));
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut url = None;
        let mut said = Vec::new();
        for line in stderr.lines() {
            let line = line.unwrap();
            if let Some(at) = line.find("ws://") {
                url = Some(line[at..].trim().to_string());
                break;
            }
            said.push(line);
        }
        let url = url.unwrap_or_else(|| panic!("{binary} gave no DevTools address:\n{}", said.join("\n")));
        let (ws, _) = tungstenite::connect(url.as_str()).expect("connect to DevTools");
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = b.call("Target.createTarget", json!({ "url": "about:blank" }));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = b.call("Target.attachToTarget", json!({ "targetId": target, "flatten": true }));
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b.call("Page.enable", json!({}));
        b
    }

    /// Sends one command (to the page once attached) and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).expect("send to DevTools");
        loop {
            let Message::Text(text) = self.ws.read().expect("read from DevTools") else {
                continue;
            };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page (20 s at most).
    fn wait_until(&mut self, expression: &str) {
        let start = Instant::now();
        while self.eval(&format!("!!({expression})")) != json!(true) {
            if start.elapsed() > Duration::from_secs(20) {
                let error = self.eval("document.getElementById('error')?.textContent ?? ''");
                panic!("waited 20 s for `{expression}`; the page's error banner: {error}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_until("document.readyState === 'complete' && document.body && document.body.dataset.ready === '1'");
    }

    fn count(&mut self, selector: &str) -> u64 {
        self.eval(&format!("document.querySelectorAll({}).length", json!(selector)))
            .as_u64()
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_dashboard_draws_trials_and_curves_and_compares_ticked_trials_in_chromium() {
    let Some(binary) = chromium() else {
        assert!(
            std::env::var("RUNNER_TEST_REQUIRE_CHROMIUM").is_err(),
            "RUNNER_TEST_REQUIRE_CHROMIUM is set but no chromium was found"
        );
        eprintln!("skipped: the dashboard's browser test (no chromium; apt-get install chromium, or set RUNNER_TEST_CHROMIUM)");
        return;
    };
    // A finished grid (4 trials) and, beside it, one that keeps training while we look.
    let d = finished_store("depth");
    d.write("long.toml", &grid("long", r#""resnet""#, "1", 1_000_000, 50));
    let mut long = d.spawn(&["run", "long.toml"]);
    long.wait_for("trial", 1);
    let s = Server::start(&d);

    let mut b = Browser::start(&binary);
    b.open(&format!("{}/experiments/depth", s.base));
    assert_eq!(b.count("#experiments li[data-experiment]"), 2);
    assert_eq!(b.count("#trials tbody tr.trial"), 4);
    assert_eq!(b.count("#trials tbody tr.trial[data-status=done]"), 4);
    assert_eq!(b.count("#trials tbody input.compare"), 4);
    // The curves (a panel per family: resnet and plain) and the error against depth.
    assert_eq!(b.count("#charts svg.chart[data-kind=curves]"), 1);
    assert_eq!(b.count("#charts svg.chart[data-kind=curves] g.panel"), 2);
    assert_eq!(b.count("#charts svg.chart[data-kind=depth]"), 1);
    // Training (thin) and validation (bold) error of each trial.
    assert_eq!(
        b.count("#charts svg.chart[data-kind=curves] path.line[data-style=thin]"),
        4
    );
    assert_eq!(
        b.count("#charts svg.chart[data-kind=curves] path.line[data-style=bold]"),
        4
    );
    assert_eq!(b.count("#compare svg.chart"), 0);

    // Tick the first and the last trial: their curves on one chart.
    let ids: Vec<i64> = serde_json::from_value(
        b.eval("[...document.querySelectorAll('#trials tbody tr.trial')].map(r => Number(r.dataset.trial))"),
    )
    .unwrap();
    let (first, last) = (ids[0], ids[3]);
    for id in [last, first] {
        b.eval(&format!(
            "document.querySelector('input.compare[data-trial=\"{id}\"]').click()"
        ));
    }
    b.wait_until(&format!(
        "document.body.dataset.compare === '{first},{last}' && document.body.dataset.ready === '1'"
    ));
    assert_eq!(b.count("#compare svg.chart"), 1);
    assert_eq!(b.count("#compare svg.chart path.line"), 4);
    assert_eq!(
        b.count(&format!("#compare svg.chart path.line[data-trial='{first}']")),
        2
    );
    assert_eq!(
        b.count(&format!("#compare svg.chart path.line[data-trial='{last}']")),
        2
    );

    let shot = b.call(
        "Page.captureScreenshot",
        json!({ "format": "png", "captureBeyondViewport": true }),
    );
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    let image = image::load_from_memory(&png).unwrap().to_rgb8();
    assert!(
        image.width() >= 1000 && image.height() >= 800,
        "{}×{}",
        image.width(),
        image.height()
    );
    // Not blank: many colours (lines, text, the status pills), and no colour covers it all.
    let mut colours = std::collections::HashMap::new();
    for p in image.pixels() {
        *colours.entry(p.0).or_insert(0u64) += 1;
    }
    let most = colours.values().max().copied().unwrap_or(0);
    assert!(colours.len() > 50, "{} colours in {}", colours.len(), path.display());
    assert!(
        most < u64::from(image.width() * image.height()) * 9 / 10,
        "one colour covers most of {}",
        path.display()
    );

    // The running grid: its trial is shown running, with its progress.
    b.open(&format!("{}/experiments/long", s.base));
    b.wait_until("document.querySelector('#trials tbody tr.trial[data-status=running]')");
    let progress = b.eval("document.querySelector('#trials tbody tr.trial[data-status=running] .progress').title");
    assert!(progress.as_str().unwrap().ends_with(" / 1000000 steps"), "{progress}");
    eprintln!("the dashboard's screenshot: {}", path.display());
    long.kill();
}
