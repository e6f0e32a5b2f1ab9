//! The results store: one SQLite file (through sqlx) that holds experiments, trials, their
//! metrics and checkpoints, and the `trial_summary` view that reports read.
//!
//! The schema lives in `migrations/` (documented there, for people who query the file with
//! `sqlite3`); it is embedded in the binary and brought up to date at open. Several runner
//! processes may share one file: every write is an IMMEDIATE transaction, retried a bounded
//! number of times on SQLITE_BUSY, so "database is locked" never reaches the user.
//!
//! The API is async (sqlx on tokio); the runner owns the runtime and calls it with `block_on`.
//! Nothing here spawns tasks of its own.

/// Runs `$op` (an expression giving a future of `sqlx::Result`: one statement or one
/// transaction) again while the database answers SQLITE_BUSY, up to [`BUSY_RETRIES`] times.
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

mod read;
mod write;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{FromRow, Row};

use crate::arch::{Params, Value};
use crate::{Error, Result};

/// How long SQLite itself waits for another writer's lock before answering SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Further tries after SQLITE_BUSY got past the busy timeout (heavy contention, or a lock
/// upgrade SQLite refuses to wait for); with the backoff below this bounds a write to about a minute.
pub(crate) const BUSY_RETRIES: u32 = 8;
/// The runner calls the store from one thread; a second connection lets a read overlap a write.
const MAX_CONNECTIONS: u32 = 2;

/// A handle on the results database; cheap to clone (a connection pool and the path).
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
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

/// One row of the `trial_summary` view (see `migrations/0003_arch_params.sql`). Errors are
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
}

impl SummaryRow {
    /// The value of the architecture parameter `name`; `None` when the trial's architecture has
    /// no such parameter.
    pub fn param(&self, name: &str) -> Option<&Value> {
        self.arch_params.get(name)
    }
}

// By hand rather than derived: `arch_params` is JSON text in the view.
impl<'r> FromRow<'r, SqliteRow> for SummaryRow {
    fn from_row(row: &'r SqliteRow) -> sqlx::Result<Self> {
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
    /// Opens the database at `path`, creating it if missing, and runs the migrations this binary
    /// carries. Fails with [`Error::Store`] if the file is not an SQLite database, was written by
    /// a newer runner, or cannot be created or opened.
    pub async fn open(path: &Path) -> Result<Store> {
        Store::connect(path, true).await
    }

    /// Opens an existing database, for commands that only read results.
    pub async fn open_existing(path: &Path) -> Result<Store> {
        if !path.is_file() {
            return Err(Error::Store {
                path: path.to_path_buf(),
                message: format!("no results database at {}: run `runner run GRID` first", path.display()),
            });
        }
        Store::connect(path, false).await
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies the WAL into the main file and closes every connection, so that `runs.db` alone
    /// holds every result (to copy or mail it). Call it before exiting.
    pub async fn close(&self) {
        // SQLite checkpoints when its last connection closes, but the pool may still be
        // returning a connection when it is closed; checkpoint explicitly. Best effort: another
        // process reading the file can keep part of the WAL alive, and it checkpoints later.
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await;
        self.shut().await;
    }

    /// Closes every connection before returning, so that SQLite sees its last connection go and
    /// removes the -wal and -shm files. `Pool::close` alone may return while a connection that
    /// was on its way back to the pool is still being closed by a background task, which a
    /// process about to exit never waits for: wait (10 s at most, for a loaded machine) until
    /// none is left.
    async fn shut(&self) {
        self.pool.close().await;
        for _ in 0..1000 {
            if self.pool.size() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The pool counts a connection gone before its worker thread has closed the SQLite
        // handle; SQLite removes the -wal and -shm files at that last close. Give it a moment (a
        // second at most: another process using the file keeps them, and that is fine).
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let side = |ext: &str| self.path.with_file_name(format!("{name}-{ext}"));
        let (wal, shm) = (side("wal"), side("shm"));
        for _ in 0..100 {
            if !wal.exists() && !shm.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn connect(path: &Path, create: bool) -> Result<Store> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(create)
            // Readers never block the writer and the writer never blocks readers; `report`
            // works while a run is writing.
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL is durable against a process crash, which is what a killed
            // training run is; only a power cut may lose the last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let mut store = Store {
            pool: pool(path, create, &options).await?,
            path: path.to_path_buf(),
        };
        match store.migrate().await {
            Ok(false) => {}
            // SQLite prepares a statement against the schema its connection read last, and sqlx
            // takes the result's column names from that preparation: a pooled connection that
            // read the schema before the migration would report a redefined view's old columns.
            // Start again with connections that know only the new schema.
            Ok(true) => {
                store.pool.close().await;
                store.pool = pool(path, create, &options).await?;
            }
            Err(e) => {
                // Closed rather than dropped, so that no -wal/-shm file is left beside a
                // database this binary refused.
                store.shut().await;
                return Err(e);
            }
        }
        Ok(store)
    }

    /// Runs the embedded migrations inside one IMMEDIATE transaction, so that two runners
    /// opening a new file at the same moment do not both try to create the tables. Says
    /// whether the schema was out of date (and is now current).
    async fn migrate(&self) -> Result<bool> {
        let migrator = sqlx::migrate!("./migrations");
        if self.schema_is_current(&migrator).await? {
            return Ok(false);
        }
        let mut last = None;
        for attempt in 0..=BUSY_RETRIES {
            let mut tx = match self.pool.begin_with("BEGIN IMMEDIATE").await {
                Ok(tx) => tx,
                Err(e) if is_busy(&e) => {
                    last = Some(MigrateError::Execute(e));
                    backoff(attempt).await;
                    continue;
                }
                Err(e) => return Err(self.error(e)),
            };
            // `run_direct` is `run` without the `Acquire` bound that makes the future of `open`
            // fail to be `Send` (sqlx's own workaround, hidden from its docs but public).
            let result = match migrator.run_direct(&mut *tx).await {
                Ok(()) => tx.commit().await.map_err(MigrateError::Execute),
                // Rolled back here rather than on drop, which would leave it to a background task.
                Err(e) => {
                    let _ = tx.rollback().await;
                    Err(e)
                }
            };
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

    /// Whether every migration this binary carries is applied, and nothing else: then opening
    /// needs no write lock, and `runner report` never waits for a running batch's transactions.
    /// Anything else (a new file, an older or newer schema) goes through the migrator, which
    /// applies or explains.
    async fn schema_is_current(&self, migrator: &Migrator) -> Result<bool> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.error(e))?;
        let tracked: Option<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.error(e))?;
        if tracked.is_none() {
            return Ok(false);
        }
        let applied = conn
            .list_applied_migrations()
            .await
            .map_err(|e| self.migrate_error(e))?;
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
                 wrote this file?): use another --db"
            ),
            MigrateError::Execute(db) | MigrateError::ExecuteMigration(db, _) => describe(db),
            other => other.to_string(),
        };
        Error::Store {
            path: self.path.clone(),
            message,
        }
    }

    /// Any other failure of the database, with the path it concerns.
    fn error(&self, e: sqlx::Error) -> Error {
        Error::Store {
            path: self.path.clone(),
            message: describe(&e),
        }
    }
}

/// A connection pool on the file. Several runners started together on a new file all switch it
/// to WAL at once; the losers may be told SQLITE_BUSY before the busy timeout applies.
async fn pool(path: &Path, create: bool, options: &SqliteConnectOptions) -> Result<SqlitePool> {
    let mut attempt = 0;
    loop {
        match SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .connect_with(options.clone())
            .await
        {
            Ok(pool) => return Ok(pool),
            Err(e) if is_busy(&e) && attempt < BUSY_RETRIES => {
                backoff(attempt).await;
                attempt += 1;
            }
            Err(e) => return Err(open_error(path, create, e)),
        }
    }
}

pub(crate) async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(50 * (1 << attempt.min(6)))).await;
}

/// The primary SQLite result code of a database error (extended codes are on, so the low byte).
fn sqlite_code(e: &sqlx::Error) -> Option<i32> {
    match e {
        sqlx::Error::Database(db) => db.code().and_then(|c| c.parse::<i32>().ok()).map(|c| c & 0xff),
        _ => None,
    }
}

const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_READONLY: i32 = 8;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_NOTADB: i32 = 26;

pub(crate) fn is_busy(e: &sqlx::Error) -> bool {
    matches!(sqlite_code(e), Some(SQLITE_BUSY | SQLITE_LOCKED))
}

fn describe(e: &sqlx::Error) -> String {
    match e {
        // Only after the busy timeout and every retry: a minute of waiting.
        _ if is_busy(e) => "stayed locked by another process for over a minute (database is locked)".to_string(),
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

/// Says in the user's terms why the file could not be opened.
fn open_error(path: &Path, create: bool, e: sqlx::Error) -> Error {
    let message = match sqlite_code(&e) {
        Some(SQLITE_NOTADB) => "is not an SQLite database (give another file with --db)".to_string(),
        Some(SQLITE_CANTOPEN) if create => format!(
            "cannot be created or opened ({}): is its directory there and writable?",
            describe(&e)
        ),
        Some(SQLITE_CANTOPEN) => format!("cannot be opened ({})", describe(&e)),
        Some(SQLITE_READONLY) => format!("is read-only ({}): runner needs to write to it", describe(&e)),
        _ => describe(&e),
    };
    Error::Store {
        path: path.to_path_buf(),
        message,
    }
}
