//! `runner serve` over HTTP against real stores: every page and API route, a grid run while the
//! server runs, hostile names, unknown ids, and stores it refuses to start on.

use serde_json::Value;

use crate::util::{execute, grid, Dir, Running};

/// A `runner serve` on a free port of 127.0.0.1, stopped when dropped.
pub struct Server {
    pub running: Option<Running>,
    pub base: String,
}

impl Server {
    pub fn start(dir: &Dir) -> Server {
        let mut running = dir.spawn(&["serve", "--addr", "127.0.0.1:0"]);
        running.wait_for("runner serve: http://", 1);
        let line = running.seen.last().expect("the address line").clone();
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("an URL")
            .trim_end_matches('/')
            .to_string();
        Server {
            running: Some(running),
            base,
        }
    }

    /// Status, content type and body of GET `path`.
    pub fn get(&self, path: &str) -> (u16, String, String) {
        let answer = match ureq::get(&format!("{}{path}", self.base)).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("GET {path}: {e}"),
        };
        let status = answer.status();
        let kind = answer.content_type().to_string();
        (status, kind, answer.into_string().expect("a text body"))
    }

    /// The JSON of GET `path`, which must answer 200.
    pub fn json(&self, path: &str) -> Value {
        let (status, kind, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        assert_eq!(kind, "application/json", "GET {path}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.kill();
        }
    }
}

/// A store with a finished grid `name`: resnet and plain depth-8, seeds 1 and 2, 24 steps.
pub fn finished_store(name: &str) -> Dir {
    let d = Dir::new();
    d.write("g.toml", &grid(name, r#""resnet", "plain""#, "1, 2", 24, 2));
    let r = d.run(&["run", "g.toml"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    d
}

/// The elements of a JSON array.
fn items(v: &Value) -> &[Value] {
    v.as_array().unwrap_or_else(|| panic!("an array: {v}"))
}

fn ids(trials: &Value) -> Vec<i64> {
    items(trials).iter().map(|t| t["trial"].as_i64().unwrap()).collect()
}

/// Every line of a chart, over all its panels.
fn lines(chart: &Value) -> Vec<&Value> {
    items(&chart["panels"])
        .iter()
        .flat_map(|p| items(&p["lines"]))
        .collect()
}

/// The series `split`/`name` of a `/api/trials/ID/metrics` answer.
fn series<'a>(metrics: &'a Value, split: &str, name: &str) -> &'a Value {
    items(&metrics["series"])
        .iter()
        .find(|s| s["split"] == split && s["name"] == name)
        .unwrap_or_else(|| panic!("no {split}/{name}: {metrics}"))
}

#[test]
fn every_page_and_api_route_answers_from_the_store() {
    let d = finished_store("depth");
    let s = Server::start(&d);

    // The pages: the same document, titled; its script and style.
    for (path, title) in [
        ("/", "<title>runner</title>"),
        ("/experiments/depth", "<title>depth · runner</title>"),
        ("/trials/1", "<title>trial 1 · depth · runner</title>"),
    ] {
        let (status, kind, body) = s.get(path);
        assert_eq!((status, kind.as_str()), (200, "text/html"), "{path}");
        assert!(body.contains(title), "{path}: {body}");
        assert!(body.contains(r#"<script src="/static/app.js""#), "{path}");
    }
    let (status, kind, js) = s.get("/static/app.js");
    assert_eq!((status, kind.as_str()), (200, "text/javascript"));
    assert!(js.contains("/api/experiments"), "the script reads the API");
    assert_eq!(s.get("/static/style.css").1, "text/css");

    let all = s.json("/api/experiments");
    assert_eq!(all["store"], "runs.db");
    let e = &all["experiments"][0];
    assert_eq!((e["name"].as_str(), e["trials"].as_i64()), (Some("depth"), Some(4)));
    assert_eq!(e["status"]["done"], 4);
    assert_eq!(e["status"]["running"], 0);
    assert_eq!(all["version"], s.json("/api/version")["version"]);

    let trials = &s.json("/api/experiments/depth/trials")["trials"];
    assert_eq!(items(trials).len(), 4);
    for t in items(trials) {
        assert_eq!(t["status"], "done");
        // Progress as step of steps, written by the runner when the trial started.
        assert_eq!((t["steps"].as_i64(), t["total_steps"].as_i64()), (Some(24), Some(24)));
        assert!(t["test_error"].as_f64().is_some(), "{t}");
        assert_eq!(t["arch_params"]["depth"], 8);
        assert!(t["eta_s"].is_null(), "no time left for a finished trial: {t}");
        assert!(t["wall_s"].as_f64().unwrap() > 0.0, "{t}");
    }
    let ids = ids(trials);

    // The experiment's charts: curves with a line per trial and split, and error against depth.
    let charts = s.json("/api/experiments/depth/charts");
    let kinds: Vec<&str> = items(&charts["charts"])
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["curves", "depth"], "{charts}");
    let curve_lines = lines(&charts["charts"][0]);
    // Train and validation error of each of the four trials; 24 steps, an evaluation every 4.
    assert_eq!(curve_lines.len(), 8);
    for id in &ids {
        assert_eq!(
            curve_lines.iter().filter(|l| l["trial"].as_i64() == Some(*id)).count(),
            2
        );
    }
    assert!(curve_lines.iter().all(|l| items(&l["points"]).len() == 6));
    assert!(curve_lines.iter().any(|l| l["style"] == "thin") && curve_lines.iter().any(|l| l["style"] == "bold"));
    // Colours as CSS, one per depth (all are depth 8 here): the palette's first.
    assert!(curve_lines.iter().all(|l| l["color"] == "#1f77b4"), "{charts}");

    let one = s.json(&format!("/api/trials/{}", ids[0]));
    assert_eq!(one["trial"].as_i64(), Some(ids[0]));
    assert_eq!(one["config"]["train"]["iterations"], 24, "{one}");
    assert_eq!(one["attempts"], 1);

    let metrics = s.json(&format!("/api/trials/{}/metrics", ids[0]));
    let names: Vec<String> = items(&metrics["series"])
        .iter()
        .map(|s| format!("{}/{}", s["split"].as_str().unwrap(), s["name"].as_str().unwrap()))
        .collect();
    for name in [
        "train/error",
        "train/loss",
        "train/lr",
        "val/error",
        "val/loss",
        "test/error",
    ] {
        assert!(names.contains(&name.to_string()), "{name}: {names:?}");
    }
    assert_eq!(
        series(&metrics, "val", "error")["steps"],
        serde_json::json!([4, 8, 12, 16, 20, 24])
    );
    // Thinned on request: at most 3 points, the first and the last kept.
    let thin = s.json(&format!("/api/trials/{}/metrics?points=3", ids[0]));
    for one in items(&thin["series"]) {
        assert!(items(&one["steps"]).len() <= 3, "{one}");
    }
    let val = series(&thin, "val", "error");
    assert_eq!(val["steps"][0], 4);
    assert_eq!(items(&val["steps"]).last().unwrap(), 24);

    // Two trials on one chart.
    let compare = s.json(&format!("/api/compare?trials={},{}", ids[3], ids[0]));
    let compared: Vec<i64> = lines(&compare["charts"][0])
        .iter()
        .map(|l| l["trial"].as_i64().unwrap())
        .collect();
    assert_eq!(compared.len(), 4, "{compare}");
    assert!(compared.contains(&ids[0]) && compared.contains(&ids[3]));
}

#[test]
fn unknown_names_and_ids_are_404_and_bad_queries_400() {
    let d = finished_store("depth");
    let s = Server::start(&d);
    for path in [
        "/experiments/nope",
        "/trials/999",
        "/trials/abc",
        "/nope",
        "/static/../Cargo.toml",
        "/static/%2e%2e/%2e%2e/Cargo.toml",
        "/static/index.html",
        "/runs.db",
    ] {
        let (status, kind, body) = s.get(path);
        assert_eq!((status, kind.as_str()), (404, "text/html"), "{path}: {body}");
        assert!(body.contains("All experiments"), "{path}: a page with a way back");
    }
    for path in [
        "/api/experiments/nope/trials",
        "/api/experiments/nope/charts",
        "/api/trials/999",
        "/api/trials/999/metrics",
        "/api/compare?trials=1,999",
        "/api/nope",
    ] {
        let (status, _, body) = s.get(path);
        assert_eq!(status, 404, "{path}: {body}");
        if path != "/api/nope" {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert!(v["error"].as_str().unwrap().starts_with("no "), "{path}: {body}");
        }
    }
    for (path, says) in [
        ("/api/compare?trials=1,x", "`x` is not a trial id"),
        ("/api/compare", "trials=3,7,12"),
        ("/api/trials/1/metrics?points=1", "points must be a number from 2"),
        ("/api/trials/1/metrics?points=many", "points must be a number from 2"),
    ] {
        let (status, _, body) = s.get(path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
    // Nothing writes: any other method is refused.
    let post = ureq::post(&format!("{}/api/experiments", s.base)).call();
    assert!(matches!(post, Err(ureq::Error::Status(405, _))), "{post:?}");
}

#[test]
fn hostile_names_reach_the_page_as_text() {
    let name = r#"<script>alert("x")</script>&<img src=x onerror=alert(1)>"#;
    let d = Dir::new();
    let text =
        grid("placeholder", r#""plain""#, "1", 8, 2).replace(r#"name = "placeholder""#, &format!("name = '{name}'"));
    d.write("g.toml", &text);
    let r = d.run(&["run", "g.toml"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let s = Server::start(&d);
    let encoded: String = name
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, _, body) = s.get(&format!("/experiments/{encoded}"));
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&lt;img src=x onerror=alert(1)&gt;"),
        "{body}"
    );
    assert!(!body.contains("<img") && !body.contains("<script>alert"), "{body}");
    // The 404 page escapes what it repeats from the address too.
    let (status, _, body) = s.get("/experiments/%3Cimg%20src%3Dx%3E");
    assert_eq!(status, 404);
    assert!(body.contains("&lt;img src=x&gt;") && !body.contains("<img"), "{body}");
    // The API gives the name as JSON text, exactly.
    assert_eq!(s.json("/api/experiments")["experiments"][0]["name"], name);
    let (_, _, headers_page) = s.get("/");
    assert!(!headers_page.contains("<img"));
    let csp = ureq::get(&format!("{}/", s.base)).call().unwrap();
    assert_eq!(
        csp.header("content-security-policy")
            .map(|h| h.contains("script-src 'self'")),
        Some(true)
    );
}

#[test]
fn a_grid_run_while_the_server_runs_appears_without_a_restart() {
    let d = finished_store("first");
    let s = Server::start(&d);
    let before = s.json("/api/version")["version"].clone();
    assert!(s.get("/api/experiments/second/trials").0 == 404);

    // A second grid trained into the same store while the server is up; the server is asked
    // while it trains (the run must not be blocked by the reader) and after.
    d.write("h.toml", &grid("second", r#""resnet""#, "1", 400, 2));
    let mut run = d.spawn(&["run", "h.toml"]);
    run.wait_for("trial", 1);
    let mut seen_running = false;
    for _ in 0..600 {
        let (status, _, body) = s.get("/api/experiments/second/trials");
        if status == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            let t = &v["trials"][0];
            if t["status"] == "running" && t["steps"].as_i64().unwrap_or(0) > 0 {
                assert_eq!(t["total_steps"], 400, "{t}");
                assert!(
                    t["eta_s"].as_f64().is_some_and(|e| e > 0.0),
                    "a running trial has time left: {t}"
                );
                seen_running = true;
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(seen_running, "the running trial with its progress was never served");
    let (code, lines, stderr) = run.finish();
    assert_eq!(code, 0, "{lines:?}\n{stderr}");

    let after = s.json("/api/experiments");
    assert_ne!(after["version"], before);
    let names: Vec<&str> = items(&after["experiments"])
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["first", "second"]);
    let t = &s.json("/api/experiments/second/trials")["trials"][0];
    assert_eq!((t["status"].as_str(), t["steps"].as_i64()), (Some("done"), Some(400)));
    assert_eq!(s.get(&format!("/trials/{}", t["trial"])).0, 200);
}

#[test]
fn a_store_it_cannot_read_is_an_error_before_it_listens() {
    // No store at all.
    let d = Dir::new();
    let r = d.run(&["serve", "--addr", "127.0.0.1:0"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(r.stderr().contains("no results database at runs.db"), "{}", r.stderr());

    // Not a database.
    d.write("runs.db", "these are not the results you are looking for\n");
    let r = d.run(&["serve", "--addr", "127.0.0.1:0"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(r.stderr().contains("runs.db"), "{}", r.stderr());
    assert!(r.stdout().is_empty(), "nothing listened: {}", r.stdout());

    // Written by a newer runner.
    let d = finished_store("depth");
    execute(
        &d.path().join("runs.db"),
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', 1, x'00', 0)",
    );
    let r = d.run(&["serve", "--addr", "127.0.0.1:0"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(r.stderr().contains("newer runner"), "{}", r.stderr());

    // An address it cannot listen on.
    let d = finished_store("depth");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let r = d.run(&["serve", "--addr", &addr]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(
        r.stderr().contains(&format!("cannot listen on {addr}")),
        "{}",
        r.stderr()
    );
}
