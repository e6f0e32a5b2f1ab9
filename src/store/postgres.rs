//! Opening the PostgreSQL store: one database that runners on many hosts share.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use super::{describe, Location, Pool, Store, MAX_CONNECTIONS};
use crate::{Error, Result};

/// How long opening waits for a server that does not answer (a wrong host, a firewall).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

pub(super) async fn connect(url: &str, location: &Location, create: bool) -> Result<Store> {
    let fail = |message: String| Error::Store {
        db: location.to_string(),
        message,
    };
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        fail(format!(
            "is not a PostgreSQL URL this runner can use ({e}); the form is \
             postgres://USER:PASSWORD@HOST:PORT/DATABASE"
        ))
    })?;
    let options = options.application_name("runner");
    // One plain connection first, for an error in the user's terms: the pool would retry a
    // refused connection until its timeout, and then say only that it timed out.
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(e)) => return Err(fail(open_message(&e))),
        Err(_) => return Err(fail(open_message(&sqlx::Error::PoolTimedOut))),
    }
    let pool = |options: PgConnectOptions| async move {
        PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| fail(open_message(&e)))
    };
    let mut store = Store {
        pool: Pool::Postgres(pool(options.clone()).await?),
        location: location.clone(),
    };
    let result = async {
        if !create && !store.has_schema().await? {
            return Err(store.fail("holds no runner results yet: run `runner run GRID --db URL` first".to_string()));
        }
        store.migrate().await
    }
    .await;
    match result {
        Ok(false) => {}
        // A connection that prepared a statement on a view before it was redefined would fail
        // it ("cached plan must not change result type"): start again with fresh ones.
        Ok(true) => {
            if let Pool::Postgres(old) = &store.pool {
                old.close().await;
            }
            store.pool = Pool::Postgres(pool(options).await?);
        }
        Err(e) => {
            if let Pool::Postgres(p) = &store.pool {
                p.close().await;
            }
            return Err(e);
        }
    }
    Ok(store)
}

/// The SQLSTATE of a PostgreSQL error.
fn sqlstate(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) => db.try_downcast_ref::<PgDatabaseError>().map(|e| e.code()),
        _ => None,
    }
}

/// serialization_failure, deadlock_detected: the transaction may simply be run again.
pub(super) fn is_busy(e: &sqlx::Error) -> bool {
    matches!(sqlstate(e), Some("40001" | "40P01"))
}

/// Why the server could not be used, in the user's terms.
fn open_message(e: &sqlx::Error) -> String {
    match (sqlstate(e), e) {
        (Some("28P01" | "28000"), _) => format!("refused the user name or password ({})", describe(e)),
        (Some("3D000"), _) => format!(
            "does not exist ({}): create it first (`createdb NAME`, or CREATE DATABASE)",
            describe(e)
        ),
        (_, sqlx::Error::Io(io)) => {
            format!("cannot be reached ({io}): is PostgreSQL running there, and are the host and port right?")
        }
        (_, sqlx::Error::PoolTimedOut) => format!(
            "did not answer within {} s: is the host right, and does a firewall let the port through?",
            CONNECT_TIMEOUT.as_secs()
        ),
        _ => describe(e),
    }
}
