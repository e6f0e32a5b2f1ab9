//! Opening and closing the SQLite store: one file in WAL mode that the runners of one host share.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{backoff, describe, Location, Pool, Store, BUSY_RETRIES, MAX_CONNECTIONS};
use crate::{Error, Result};

/// How long SQLite itself waits for another writer's lock before answering SQLITE_BUSY.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn connect(path: &Path, create: bool) -> Result<Store> {
    let location = Location::Sqlite(path.to_path_buf());
    if !create && !path.is_file() {
        return Err(Error::Store {
            db: location.to_string(),
            message: format!("no results database at {location}: run `runner run GRID` first"),
        });
    }
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
        pool: Pool::Sqlite(pool(path, create, &options).await?),
        location,
    };
    match store.migrate().await {
        Ok(false) => {}
        // SQLite prepares a statement against the schema its connection read last, and sqlx
        // takes the result's column names from that preparation: a pooled connection that
        // read the schema before the migration would report a redefined view's old columns.
        // Start again with connections that know only the new schema.
        Ok(true) => {
            if let Pool::Sqlite(old) = &store.pool {
                old.close().await;
            }
            store.pool = Pool::Sqlite(pool(path, create, &options).await?);
        }
        Err(e) => {
            // Closed rather than dropped, so that no -wal/-shm file is left beside a
            // database this binary refused.
            if let Pool::Sqlite(pool) = &store.pool {
                shut(pool, path).await;
            }
            return Err(e);
        }
    }
    Ok(store)
}

/// Checkpoints the WAL into the main file, then closes every connection.
pub(super) async fn close(pool: &SqlitePool, location: &Location) {
    // SQLite checkpoints when its last connection closes, but the pool may still be
    // returning a connection when it is closed; checkpoint explicitly. Best effort: another
    // process reading the file can keep part of the WAL alive, and it checkpoints later.
    let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(pool).await;
    if let Location::Sqlite(path) = location {
        shut(pool, path).await;
    }
}

/// Closes every connection before returning, so that SQLite sees its last connection go and
/// removes the -wal and -shm files. `Pool::close` alone may return while a connection that
/// was on its way back to the pool is still being closed by a background task, which a
/// process about to exit never waits for: wait (10 s at most, for a loaded machine) until
/// none is left.
async fn shut(pool: &SqlitePool, path: &Path) {
    pool.close().await;
    for _ in 0..1000 {
        if pool.size() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The pool counts a connection gone before its worker thread has closed the SQLite
    // handle; SQLite removes the -wal and -shm files at that last close. Give it a moment (a
    // second at most: another process using the file keeps them, and that is fine).
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let side = |ext: &str| path.with_file_name(format!("{name}-{ext}"));
    let (wal, shm) = (side("wal"), side("shm"));
    for _ in 0..100 {
        if !wal.exists() && !shm.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
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

/// The primary SQLite result code of a database error (extended codes are on, so the low byte).
fn sqlite_code(e: &sqlx::Error) -> Option<i32> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::sqlite::SqliteError>()
            .and_then(sqlx::error::DatabaseError::code)
            .and_then(|c| c.parse::<i32>().ok())
            .map(|c| c & 0xff),
        _ => None,
    }
}

const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_READONLY: i32 = 8;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_NOTADB: i32 = 26;

pub(super) fn is_busy(e: &sqlx::Error) -> bool {
    matches!(sqlite_code(e), Some(SQLITE_BUSY | SQLITE_LOCKED))
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
        db: path.display().to_string(),
        message,
    }
}
