//! `runner serve`: a web dashboard over the store, read-only. One page (experiments, a sortable
//! trial table, training curves in the style of He et al. 2015, Figure 6, error against depth,
//! trials ticked to compare) that polls `/api/version` and redraws what changed, and the JSON
//! API it reads, which is documented in the README:
//!
//! | route | answer |
//! |---|---|
//! | `/`, `/experiments/{name}`, `/trials/{id}` | the page (404 for an unknown name or id) |
//! | `/static/app.js`, `/static/style.css` | its script and style, embedded in the binary |
//! | `/api/experiments` | experiments with their trials counted by status, the store's version |
//! | `/api/experiments/{name}/trials` | the trial table's rows |
//! | `/api/experiments/{name}/charts` | the experiment's charts as data |
//! | `/api/trials/{id}` | one trial, its configuration included |
//! | `/api/trials/{id}/metrics?points=N` | every recorded series, each thinned to N points |
//! | `/api/compare?trials=3,7` | the training curves of the trials named, on one chart |
//! | `/api/version` | a text that changes whenever the store does |
//!
//! Safe by default: only GET routes exist (nothing writes to the store), the address is
//! 127.0.0.1 unless `--addr` says otherwise, no file is read from disk (the page's files are in
//! the binary), curves are thinned to a bounded number of points, and every name from a grid
//! reaches the page as text: the script builds the document with `textContent`, the server
//! escapes what it writes into HTML, and a Content-Security-Policy allows only the page's own
//! script.

mod api;
mod bench;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::cli::ServeArgs;
use crate::report::plot;
use crate::store::{MetricRow, Store, TrialDetail};
use crate::Error;

pub use bench::bench;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// What every handler reads.
struct App {
    store: Store,
    curves: Curves,
}

/// Each trial's training and validation error, thinned to [`api::CURVE_POINTS`], kept while
/// the trial's progress (steps, attempts, status) is unchanged: a chart of 200 trials then reads
/// only the trials that moved since it was last drawn.
#[derive(Default)]
struct Curves {
    by_trial: std::sync::Mutex<HashMap<i64, (Progress, TrainVal)>>,
}

type Progress = (Option<i64>, i64, String);
/// (step, error) of the training and of the validation split.
type TrainVal = [Vec<(i64, f64)>; 2];

/// Trials whose curves are kept at most (a few MiB): beyond it the cache starts again.
const MAX_CACHED: usize = 5000;

fn progress(d: &TrialDetail) -> Progress {
    (d.summary.steps, d.attempts, d.summary.status.clone())
}

impl App {
    fn new(store: Store) -> App {
        App {
            store,
            curves: Curves::default(),
        }
    }

    /// The error curves of `details` for a chart, each thinned to its share of
    /// [`api::CHART_BUDGET`].
    async fn curves(&self, details: &[TrialDetail]) -> std::result::Result<plot::Metrics, Failure> {
        let stale: HashSet<i64> = {
            let cache = self.curves.by_trial.lock().unwrap_or_else(|e| e.into_inner());
            details
                .iter()
                .filter(|d| cache.get(&d.summary.trial).is_none_or(|(p, _)| *p != progress(d)))
                .map(|d| d.summary.trial)
                .collect()
        };
        let fresh = if stale.is_empty() {
            Default::default()
        } else {
            self.store
                .error_curves(&stale.iter().copied().collect::<Vec<_>>())
                .await?
        };
        let mut cache = self.curves.by_trial.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() + stale.len() > MAX_CACHED {
            cache.clear();
        }
        for d in details.iter().filter(|d| stale.contains(&d.summary.trial)) {
            let rows = fresh.get(&d.summary.trial).map(Vec::as_slice).unwrap_or_default();
            let split = |name: &str| -> Vec<(i64, f64)> {
                let points: Vec<(i64, f64)> = rows
                    .iter()
                    .filter(|m| m.split == name)
                    .map(|m| (m.step, m.value))
                    .collect();
                api::thin(&points, api::CURVE_POINTS, |p| p.1)
            };
            cache.insert(d.summary.trial, (progress(d), [split("train"), split("val")]));
        }
        let per_line = (api::CHART_BUDGET / (2 * details.len().max(1))).clamp(api::MIN_CURVE_POINTS, api::CURVE_POINTS);
        let mut out = plot::Metrics::new();
        for d in details {
            let Some((_, curves)) = cache.get(&d.summary.trial) else {
                continue;
            };
            let mut rows = Vec::new();
            for (split, points) in ["train", "val"].into_iter().zip(curves.iter()) {
                rows.extend(
                    api::thin(points, per_line, |p| p.1)
                        .into_iter()
                        .map(|(step, value)| MetricRow {
                            step,
                            epoch: 0.0,
                            split: split.into(),
                            name: "error".into(),
                            value,
                        }),
                );
            }
            out.insert(d.summary.trial, rows);
        }
        Ok(out)
    }
}

type Shared = State<Arc<App>>;

/// `runner serve`: opens the store (an unreadable one, or one a newer runner wrote, is an error
/// before anything listens: exit 2), listens, prints the address, and serves until Ctrl-C.
pub fn serve(args: &ServeArgs) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    rt.block_on(async {
        let store = Store::open_existing(&args.db).await?;
        // Read once now, so that a damaged file is reported here rather than on the page.
        store.version().await?;
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .map_err(|e| Error::Usage(format!("cannot listen on {}: {e} (choose another --addr)", args.addr)))?;
        let addr = listener.local_addr().context("reading the address listened on")?;
        println!(
            "runner serve: http://{addr}/ (results in {}, read-only; Ctrl-C to stop)",
            store.location()
        );
        if !addr.ip().is_loopback() {
            eprintln!(
                "note: listening on {}: anyone who can reach this machine can read these results (there is no login)",
                addr.ip()
            );
        }
        let app = Arc::new(App::new(store.clone()));
        axum::serve(listener, router(app))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving")?;
        store.close().await;
        Ok(0)
    })
}

/// Every route; anything else is a 404 and any method but GET (and HEAD) a 405.
fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page_home))
        .route("/experiments/{name}", get(page_experiment))
        .route("/trials/{id}", get(page_trial))
        .route(
            "/static/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/static/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/api/experiments", get(api_experiments))
        .route("/api/experiments/{name}/trials", get(api_trials))
        .route("/api/experiments/{name}/charts", get(api_charts))
        .route("/api/trials/{id}", get(api_trial))
        .route("/api/trials/{id}/metrics", get(api_metrics))
        .route("/api/compare", get(api_compare))
        .route("/api/version", get(api_version))
        .fallback(|| async { Failure::NotFound("no such page".into()).page() })
        .layer(axum::middleware::map_response(secure))
        .with_state(app)
}

/// Headers on every answer: no sniffing of types, only this server's script runs, nothing is
/// framed by another site, and the store's data is not cached.
async fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             frame-ancestors 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Why a request has no answer: an unknown name or id (404), a bad query (400), the store
/// failing (503, with its message).
#[derive(Debug)]
enum Failure {
    NotFound(String),
    BadRequest(String),
    Store(String),
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::NotFound(_) => StatusCode::NOT_FOUND,
            Failure::BadRequest(_) => StatusCode::BAD_REQUEST,
            Failure::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::NotFound(m) | Failure::BadRequest(m) | Failure::Store(m) => m,
        }
    }

    /// As an HTML page (for the page routes).
    fn page(self) -> Response {
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{code} · runner</title>\
             <link rel=\"stylesheet\" href=\"/static/style.css\"></head><body><main class=\"failure\">\
             <h1>{code}</h1><p>{message}</p><p><a href=\"/\">All experiments</a></p></main></body></html>",
            code = self.status(),
            message = escape(self.message()),
        );
        (
            self.status(),
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response()
    }
}

/// As JSON `{"error": "..."}` (for the API).
impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status(), Json(serde_json::json!({ "error": self.message() }))).into_response()
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Store(e.to_string())
    }
}

type Answer<T> = std::result::Result<Json<T>, Failure>;

/// `&`, `<`, `>`, `"` and `'` as entities: text that is safe in HTML content and attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page, titled `title` (escaped here).
fn shell(title: &str) -> Response {
    let html = INDEX_HTML.replace("{{TITLE}}", &escape(title));
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

async fn page_home() -> Response {
    shell("runner")
}

async fn page_experiment(State(app): Shared, Path(name): Path<String>) -> Response {
    match experiment_exists(&app, &name).await {
        Ok(()) => shell(&format!("{name} · runner")),
        Err(f) => f.page(),
    }
}

async fn page_trial(State(app): Shared, Path(id): Path<String>) -> Response {
    match trial(&app, &id).await {
        Ok(d) => shell(&format!(
            "trial {} · {} · runner",
            d.summary.trial, d.summary.experiment
        )),
        Err(f) => f.page(),
    }
}

async fn experiment_exists(app: &App, name: &str) -> std::result::Result<(), Failure> {
    if app.store.experiments().await?.iter().any(|e| e == name) {
        Ok(())
    } else {
        Err(Failure::NotFound(format!("no experiment `{name}` in this store")))
    }
}

/// The trial a path names; 404 for anything but the id of a trial in the store.
async fn trial(app: &App, id: &str) -> std::result::Result<TrialDetail, Failure> {
    let not_found = || Failure::NotFound(format!("no trial {id} in this store"));
    trial_by_id(app, id.parse().map_err(|_| not_found())?).await
}

async fn trial_by_id(app: &App, id: i64) -> std::result::Result<TrialDetail, Failure> {
    app.store
        .trial_by_id(id)
        .await?
        .ok_or_else(|| Failure::NotFound(format!("no trial {id} in this store")))
}

async fn api_experiments(State(app): Shared) -> Answer<api::Experiments> {
    Ok(Json(api::Experiments {
        store: app.store.location().to_string(),
        version: app.store.version().await?,
        experiments: app.store.experiment_statuses().await?,
    }))
}

async fn api_version(State(app): Shared) -> Answer<serde_json::Value> {
    Ok(Json(serde_json::json!({ "version": app.store.version().await? })))
}

/// An experiment's trials in detail; 404 for a name the store does not have.
async fn details(app: &App, name: &str) -> std::result::Result<Vec<TrialDetail>, Failure> {
    let details = app.store.details(name).await?;
    if details.is_empty() {
        experiment_exists(app, name).await?;
    }
    Ok(details)
}

async fn api_trials(State(app): Shared, Path(name): Path<String>) -> Answer<serde_json::Value> {
    let trials = api::trials(&details(&app, &name).await?);
    Ok(Json(serde_json::json!({ "experiment": name, "trials": trials })))
}

async fn api_charts(State(app): Shared, Path(name): Path<String>) -> Answer<api::Charts> {
    let details = details(&app, &name).await?;
    let curves = app.curves(&details).await?;
    let (charts, skipped) = plot::charts(&summaries(&details), &curves);
    Ok(Json(api::Charts { charts, skipped }))
}

/// The summary rows of `details`, with the `[train]` settings that differ among them (which
/// split the charts' families).
fn summaries(details: &[TrialDetail]) -> Vec<crate::store::SummaryRow> {
    api::trials(details).into_iter().map(|t| t.summary).collect()
}

async fn api_trial(State(app): Shared, Path(id): Path<String>) -> Answer<api::TrialPage> {
    Ok(Json(api::trial_page(&trial(&app, &id).await?)))
}

async fn api_metrics(
    State(app): Shared,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer<serde_json::Value> {
    let points = match q.get("points") {
        None => api::DEFAULT_POINTS,
        Some(p) => match p.parse::<usize>() {
            Ok(n) if (2..=api::MAX_POINTS).contains(&n) => n,
            _ => {
                return Err(Failure::BadRequest(format!(
                    "points must be a number from 2 to {} (`{p}` given)",
                    api::MAX_POINTS
                )))
            }
        },
    };
    let d = trial(&app, &id).await?;
    let metrics = app.store.metrics(d.summary.trial).await?;
    Ok(Json(serde_json::json!({
        "trial": d.summary.trial,
        "series": api::series(&metrics, points),
    })))
}

async fn api_compare(State(app): Shared, Query(q): Query<HashMap<String, String>>) -> Answer<api::Charts> {
    let ids = api::trial_ids(q.get("trials").map(String::as_str).unwrap_or("")).map_err(Failure::BadRequest)?;
    let mut details = Vec::new();
    for id in ids {
        details.push(trial_by_id(&app, id).await?);
    }
    let metrics = app.curves(&details).await?;
    let rows = summaries(&details);
    let refs: Vec<&crate::store::SummaryRow> = rows.iter().collect();
    let (charts, skipped) = match plot::curves(&refs, &metrics) {
        Some(c) => (vec![c], Vec::new()),
        None => (
            Vec::new(),
            vec!["no training or validation error recorded yet for these trials".into()],
        ),
    };
    Ok(Json(api::Charts { charts, skipped }))
}
