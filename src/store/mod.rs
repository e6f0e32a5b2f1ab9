//! The results store: experiments, trials, their metrics and checkpoints, and the
//! `trial_summary` view that reports read; in one SQLite file (the default) or in a PostgreSQL
//! database that runners on many hosts share. Both through sqlx, behind this one API.
//!
//! The schemas live in `migrations/sqlite/` and `migrations/postgres/` (documented there, for
//! people who query them with `sqlite3` or `psql`): the same numbering, the same tables, the same
//! view columns. They are embedded in the binary and brought up to date at open. Several runner
//! processes may share one store. On SQLite every write is an IMMEDIATE transaction, retried a
//! bounded number of times on SQLITE_BUSY, so "database is locked" never reaches the user; on
//! PostgreSQL a claim is one `UPDATE … FOR UPDATE SKIP LOCKED` statement.
//!
//! The statements are written once, in SQL both databases accept (`$N` parameters, `ON CONFLICT`
//! upserts, `IS DISTINCT FROM`), with the few differences ([`Dialect`]) spliced in; `on_db!`
//! runs one on whichever pool the store has.
//!
//! The API is async (sqlx on tokio); the runner owns the runtime and calls it with `block_on`.
//! Nothing here spawns tasks of its own.

/// Runs `$op` (an expression giving a future of `sqlx::Result`: one statement or one
/// transaction) again while the database answers that it is busy (SQLITE_BUSY; a PostgreSQL
/// deadlock or serialization failure), up to [`BUSY_RETRIES`] times.
/// A macro rather than a function taking a closure: the closure's borrowed futures would not be
/// provably `Send`, and callers may run the store inside `tokio::spawn`.
macro_rules! retry {
    ($store:expr, $op:expr) => {{
        let mut attempt = 0;
        loop {
            match $op.await {
                Ok(v) => break Ok(v),
                Err(e) if $crate::store::is_busy(&e) && attempt < $crate::store::BUSY_RETRIES => {
                    $crate::store::backoff(attempt).await;
                    attempt += 1;
                }
                Err(e) => break Err($store.error(e)),
            }
        }
    }};
}

/// Expands `$body` once per database: `$pool` is the `&SqlitePool` or the `&PgPool`, and `$d`
/// (when named) that database's [`Dialect`]. The body's sqlx calls are the same text; the
/// compiler checks them against each driver.
macro_rules! each_pool {
    ($pools:expr, |$pool:ident, $d:ident| $body:expr) => {
        match $pools {
            $crate::store::Pool::Sqlite($pool) => {
                let $d = &$crate::store::SQLITE;
                $body
            }
            $crate::store::Pool::Postgres($pool) => {
                let $d = &$crate::store::POSTGRES;
                $body
            }
        }
    };
    ($pools:expr, |$pool:ident| $body:expr) => {
        match $pools {
            $crate::store::Pool::Sqlite($pool) => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}

/// `each_pool!` with `retry!` around the body (a future of `sqlx::Result`), errors in the
/// user's terms: how every statement of the store runs.
macro_rules! on_db {
    ($store:expr, |$pool:ident $(, $d:ident)?| $body:expr) => {
        each_pool!(&$store.pool, |$pool $(, $d)?| retry!($store, $body))
    };
}

mod copy;
mod postgres;
mod read;
mod sqlite;
mod write;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use sqlx::{FromRow, Row};

pub use copy::{same_store, Copied};

use crate::arch::{Params, Value};
use crate::{Error, Result};

/// Further tries after the database said it was busy (for SQLite: after its busy timeout, under
/// heavy contention or a lock upgrade it refuses to wait for); with the backoff below this bounds
/// a write to about a minute.
pub(crate) const BUSY_RETRIES: u32 = 8;
/// The runner calls the store from one thread; a second connection lets a read overlap a write.
const MAX_CONNECTIONS: u32 = 2;

/// A handle on the results database; cheap to clone (a connection pool and where it is).
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    location: Location,
}

#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Where the results are: `--db` and `RUNNER_DB`. A `postgres://` (or `postgresql://`) URL is a
/// PostgreSQL database; anything else is the path of an SQLite file (`sqlite://PATH` too).
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    /// The URL as given, password included: only [`Location`]'s `Display` is shown to anyone.
    Postgres(String),
}

impl Location {
    pub fn parse(s: &str) -> Location {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Location::Postgres(s.to_string())
        } else {
            Location::Sqlite(PathBuf::from(s.strip_prefix("sqlite://").unwrap_or(s)))
        }
    }
}

impl FromStr for Location {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> std::result::Result<Location, Self::Err> {
        Ok(Location::parse(s))
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Location {
        Location::Sqlite(p.to_path_buf())
    }
}

impl From<&PathBuf> for Location {
    fn from(p: &PathBuf) -> Location {
        Location::Sqlite(p.clone())
    }
}

impl From<&Location> for Location {
    fn from(l: &Location) -> Location {
        l.clone()
    }
}

/// The path, or the URL with its password masked: what messages say.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "{}", p.display()),
            Location::Postgres(url) => f.write_str(&mask_password(url)),
        }
    }
}

// As `Display`, so that a log line never prints a password.
impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Location({self})")
    }
}

/// `postgres://user:secret@host/db?password=x` → `postgres://user:***@host/db?password=***`.
fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// What the two databases spell differently. Statements are written with `{now}` (the current
/// UTC time as ISO 8601 text with milliseconds, as every time column holds it) and
/// `{heartbeat_age_s}` (seconds since a trial's `heartbeat_at`), which [`Dialect::sql`] fills in.
pub(crate) struct Dialect {
    /// How a write transaction begins.
    pub begin: &'static str,
    now: &'static str,
    heartbeat_age_s: &'static str,
    /// One row whose text is non-NULL when the migrations table exists.
    migrations_table: &'static str,
    /// Taken inside the migration transaction, so that two runners migrating a new database at
    /// once run one after the other; `None` where `BEGIN` already does it.
    migration_lock: Option<&'static str>,
    migrator: &'static Migrator,
}

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

pub(crate) static SQLITE: Dialect = Dialect {
    // Taking the write lock when the transaction begins (not at its first write) means two
    // writers never both read and then fail to upgrade: the second simply waits.
    begin: "BEGIN IMMEDIATE",
    now: "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
    heartbeat_age_s: "((julianday('now') - julianday(heartbeat_at)) * 86400.0)",
    migrations_table: "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    migration_lock: None,
    migrator: &SQLITE_MIGRATIONS,
};

pub(crate) static POSTGRES: Dialect = Dialect {
    begin: "BEGIN",
    // The server's clock, for every runner alike: hosts' clocks may disagree.
    now: "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
    heartbeat_age_s: "(extract(epoch FROM now() - heartbeat_at::timestamptz)::float8)",
    migrations_table: "SELECT to_regclass('_sqlx_migrations')::text",
    // Any constant: the one lock of runner migrations (ASCII "runner").
    migration_lock: Some("SELECT pg_advisory_xact_lock(125779745564018)"),
    migrator: &POSTGRES_MIGRATIONS,
};

impl Dialect {
    pub(crate) fn sql(&self, template: &str) -> String {
        template
            .replace("{now}", self.now)
            .replace("{heartbeat_age_s}", self.heartbeat_age_s)
    }
}

/// A trial to register: one point of an expanded grid.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTrial {
    /// sha256 of `config_json`: the trial's identity.
    pub key: String,
    pub arch: String,
    pub config_json: String,
    pub params: i64,
    pub mflops: f64,
    /// Position in the expanded grid; reports list trials in this order.
    pub ord: i64,
}

/// A trial handed to one worker by [`Store::claim`].
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub trial_id: i64,
    pub key: String,
    /// The `last` checkpoint to resume from; `None` means start from scratch (the store has
    /// already dropped whatever an earlier attempt recorded).
    pub resume: Option<Checkpoint>,
    /// The status before this claim: `pending`, `interrupted`, `failed`, or `running` when a
    /// dead worker's trial was taken over.
    pub previous_status: String,
    /// The worker that ran the trial before (`host:pid`), if any ran it.
    pub previous_worker: Option<String>,
}

/// A trial some worker is running (or was, until it died): see [`Store::running`].
#[derive(Debug, Clone, PartialEq)]
pub struct RunningTrial {
    pub trial_id: i64,
    pub key: String,
    /// `host:pid` of the runner that claimed it.
    pub worker: Option<String>,
    /// Seconds since its last heartbeat; `None` when it never sent one.
    pub heartbeat_age_s: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// Weights and BN statistics at the lowest validation error so far.
    Best,
    /// Everything needed to resume training.
    Last,
}

impl CheckpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::Best => "best",
            CheckpointKind::Last => "last",
        }
    }
}

impl FromStr for CheckpointKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "best" => Ok(CheckpointKind::Best),
            "last" => Ok(CheckpointKind::Last),
            other => Err(Error::Usage(format!("unknown checkpoint kind `{other}` (best, last)"))),
        }
    }
}

#[derive(Clone, PartialEq)]
pub struct Checkpoint {
    pub kind: CheckpointKind,
    pub step: i64,
    /// Hex sha256 of `bytes`, checked when the checkpoint is read back.
    pub sha256: String,
    pub bytes: Vec<u8>,
}

impl Checkpoint {
    pub fn new(kind: CheckpointKind, step: i64, bytes: Vec<u8>) -> Checkpoint {
        Checkpoint {
            kind,
            step,
            sha256: hex::encode(Sha256::digest(&bytes)),
            bytes,
        }
    }
}

// By hand, so that a log line never prints megabytes of weights.
impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("kind", &self.kind)
            .field("step", &self.step)
            .field("sha256", &self.sha256)
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .finish()
    }
}

/// One value of one step, e.g. `("val", "error", 0.12)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub split: String,
    pub name: String,
    pub value: f64,
}

/// What the trainer reports at an evaluation point; written by [`Store::record`] in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub step: i64,
    pub epoch: f64,
    pub metrics: Vec<Metric>,
    /// A new best: its validation error (fraction) and checkpoint.
    pub best: Option<(f64, Checkpoint)>,
    pub last: Option<Checkpoint>,
    pub train_loss: Option<f64>,
    pub images_per_s: Option<f64>,
    /// Training time so far, seconds.
    pub wall_s: f64,
}

/// How a trial ended: the trainer's own outcome, recorded as it is.
pub use crate::train::Outcome;

/// One row of the `trial_summary` view (see `migrations/sqlite/0003_arch_params.sql`). Errors are
/// fractions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryRow {
    pub experiment: String,
    pub trial: i64,
    /// The first 12 hex characters of the trial key.
    pub key: String,
    pub arch: String,
    /// The architecture's parameters as stored with the trial (every parameter its plugin
    /// declared when the trial was registered, defaults filled in), by name.
    pub arch_params: Params,
    pub seed: Option<i64>,
    pub dataset: Option<String>,
    pub params: i64,
    pub mflops: f64,
    pub status: String,
    pub steps: Option<i64>,
    pub best_val_error: Option<f64>,
    pub best_step: Option<i64>,
    pub test_error: Option<f64>,
    pub train_loss: Option<f64>,
    pub wall_s: Option<f64>,
    pub images_per_s: Option<f64>,
    pub error: Option<String>,
    /// The `[train]` settings that differ among the trials of a report, by dotted name
    /// (`train.optimizer.lr`); filled by the report from the stored configurations (the view
    /// does not have them), empty otherwise.
    #[serde(skip_serializing_if = "is_empty")]
    pub settings: Params,
}

fn is_empty(p: &Params) -> bool {
    p.0.is_empty()
}

impl SummaryRow {
    /// The value of the architecture parameter `name`; `None` when the trial's architecture has
    /// no such parameter.
    pub fn param(&self, name: &str) -> Option<&Value> {
        self.arch_params.get(name)
    }
}

// By hand rather than derived: `arch_params` is JSON text in the view. For the rows of either
// database.
impl<'r, R: Row> FromRow<'r, R> for SummaryRow
where
    &'r str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        let params: Option<String> = row.try_get("arch_params")?;
        Ok(SummaryRow {
            experiment: row.try_get("experiment")?,
            trial: row.try_get("trial")?,
            key: row.try_get("key")?,
            arch: row.try_get("arch")?,
            arch_params: parse_params(params.as_deref()).map_err(|e| sqlx::Error::ColumnDecode {
                index: "arch_params".into(),
                source: e.into(),
            })?,
            seed: row.try_get("seed")?,
            dataset: row.try_get("dataset")?,
            params: row.try_get("params")?,
            mflops: row.try_get("mflops")?,
            status: row.try_get("status")?,
            steps: row.try_get("steps")?,
            best_val_error: row.try_get("best_val_error")?,
            best_step: row.try_get("best_step")?,
            test_error: row.try_get("test_error")?,
            train_loss: row.try_get("train_loss")?,
            wall_s: row.try_get("wall_s")?,
            images_per_s: row.try_get("images_per_s")?,
            error: row.try_get("error")?,
            settings: Params::default(),
        })
    }
}

/// The `arch_params` JSON object of a trial. A value of a type this build's parameters cannot
/// have (a float, say, from another runner's plugin) is kept as its JSON text rather than
/// making the whole report fail; a missing object is no parameters.
fn parse_params(text: Option<&str>) -> std::result::Result<Params, serde_json::Error> {
    let Some(text) = text else {
        return Ok(Params::default());
    };
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)?;
    Ok(Params(
        map.into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::Bool(b) => Value::Bool(b),
                    serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                        (Some(i), _) => Value::Int(i),
                        (None, Some(x)) => Value::Float(x),
                        (None, None) => Value::Str(n.to_string()),
                    },
                    serde_json::Value::String(s) => Value::Str(s),
                    other => Value::Str(other.to_string()),
                };
                (k, v)
            })
            .collect(),
    ))
}

/// Everything about one trial (`runner show`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrialDetail {
    pub summary: SummaryRow,
    /// The full trial key (the summary has a prefix).
    pub key: String,
    pub ord: i64,
    pub config_json: String,
    pub worker: Option<String>,
    pub heartbeat_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub attempts: i64,
    /// Optimiser steps the trial trains for in all; `None` until its runner has started it.
    pub total_steps: Option<i64>,
}

/// An experiment and how many of its trials are in each status (`trial_summary`'s, where a
/// running trial whose runner went silent counts as interrupted).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentStatus {
    pub name: String,
    pub created_at: String,
    pub trials: i64,
    /// By status name: pending, running, done, failed, interrupted (every one, zeros included).
    pub status: std::collections::BTreeMap<String, i64>,
}

/// One metrics row, in long format.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct MetricRow {
    pub step: i64,
    pub epoch: f64,
    pub split: String,
    pub name: String,
    pub value: f64,
}

impl Store {
    /// Opens the store, creating an SQLite file if missing (a PostgreSQL database must exist;
    /// its tables are created), and runs the migrations this binary carries. Fails with
    /// [`Error::Store`] if it is not a database of that kind, was written by a newer runner, or
    /// cannot be created, reached or logged into; nothing is written then.
    pub async fn open(location: impl Into<Location>) -> Result<Store> {
        Store::connect(location.into(), true).await
    }

    /// Opens an existing store, for commands that only read results.
    pub async fn open_existing(location: impl Into<Location>) -> Result<Store> {
        Store::connect(location.into(), false).await
    }

    async fn connect(location: Location, create: bool) -> Result<Store> {
        match &location {
            Location::Sqlite(path) => sqlite::connect(path, create).await,
            Location::Postgres(url) => postgres::connect(url, &location, create).await,
        }
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Closes every connection; for SQLite after copying the WAL into the main file, so that
    /// `runs.db` alone holds every result (to copy or mail it). Call it before exiting.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => sqlite::close(pool, &self.location).await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }

    /// Brings the schema up to date inside one transaction (IMMEDIATE on SQLite; under an
    /// advisory lock on PostgreSQL), so that two runners opening a new store at the same moment
    /// do not both try to create the tables. Says whether the schema was out of date (and is now
    /// current).
    async fn migrate(&self) -> Result<bool> {
        if self.schema_is_current().await? {
            return Ok(false);
        }
        let mut last = None;
        for attempt in 0..=BUSY_RETRIES {
            let result = each_pool!(&self.pool, |pool, d| async {
                let mut tx = pool.begin_with(d.begin).await.map_err(MigrateError::Execute)?;
                if let Some(lock) = d.migration_lock {
                    sqlx::query(lock)
                        .execute(&mut *tx)
                        .await
                        .map_err(MigrateError::Execute)?;
                }
                // `run_direct` is `run` without the `Acquire` bound that makes the future of
                // `open` fail to be `Send` (sqlx's own workaround, hidden from its docs but public).
                match d.migrator.run_direct(&mut *tx).await {
                    Ok(()) => tx.commit().await.map_err(MigrateError::Execute),
                    // Rolled back here rather than on drop, which would leave it to a background task.
                    Err(e) => {
                        let _ = tx.rollback().await;
                        Err(e)
                    }
                }
            }
            .await);
            match result {
                Ok(()) => return Ok(true),
                Err(MigrateError::Execute(e)) if is_busy(&e) => {
                    last = Some(MigrateError::Execute(e));
                    backoff(attempt).await;
                }
                Err(e) => return Err(self.migrate_error(e)),
            }
        }
        Err(self.migrate_error(last.unwrap_or(MigrateError::Execute(sqlx::Error::PoolTimedOut))))
    }

    /// Whether the store has runner's tables at all.
    async fn has_schema(&self) -> Result<bool> {
        let tracked: Option<Option<String>> = on_db!(self, |pool, d| sqlx::query_scalar(d.migrations_table)
            .fetch_optional(pool))?;
        Ok(tracked.flatten().is_some())
    }

    /// Whether every migration this binary carries is applied, and nothing else: then opening
    /// needs no write lock, and `runner report` never waits for a running batch's transactions.
    /// Anything else (a new store, an older or newer schema) goes through the migrator, which
    /// applies or explains.
    async fn schema_is_current(&self) -> Result<bool> {
        if !self.has_schema().await? {
            return Ok(false);
        }
        let (applied, migrator) = each_pool!(&self.pool, |pool, d| {
            let mut conn = pool.acquire().await.map_err(|e| self.error(e))?;
            let applied = conn
                .list_applied_migrations()
                .await
                .map_err(|e| self.migrate_error(e))?;
            (applied, d.migrator)
        });
        let known: Vec<_> = migrator.iter().filter(|m| m.migration_type.is_up_migration()).collect();
        Ok(applied.len() == known.len()
            && applied
                .iter()
                .all(|a| known.iter().any(|m| m.version == a.version && m.checksum == a.checksum)))
    }

    fn migrate_error(&self, e: MigrateError) -> Error {
        let message = match &e {
            MigrateError::VersionMissing(v) => format!(
                "was written by a newer runner (schema migration {v} is not known to this binary): \
                 upgrade runner, or use another --db"
            ),
            MigrateError::VersionMismatch(v) => format!(
                "schema migration {v} differs from the one this binary carries (a development build \
                 wrote this database?): use another --db"
            ),
            MigrateError::Execute(db) | MigrateError::ExecuteMigration(db, _) => describe(db),
            other => other.to_string(),
        };
        self.fail(message)
    }

    /// Any other failure of the database, with the store it concerns.
    fn error(&self, e: sqlx::Error) -> Error {
        self.fail(describe(&e))
    }

    fn fail(&self, message: String) -> Error {
        Error::Store {
            db: self.location.to_string(),
            message,
        }
    }
}

pub(crate) async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(50 * (1 << attempt.min(6)))).await;
}

/// Whether the database refused for a moment only: SQLite's BUSY or LOCKED, a PostgreSQL
/// deadlock or serialization failure. Trying again is then right.
pub(crate) fn is_busy(e: &sqlx::Error) -> bool {
    sqlite::is_busy(e) || postgres::is_busy(e)
}

fn describe(e: &sqlx::Error) -> String {
    match e {
        // Only after the busy timeout and every retry: a minute of waiting.
        _ if is_busy(e) => "stayed locked by another process for over a minute (database is locked)".to_string(),
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}
