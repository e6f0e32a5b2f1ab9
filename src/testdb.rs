//! Throw-away PostgreSQL databases for the tests (the store's and the binary's): one per test,
//! created on the server that `RUNNER_TEST_PG` names and dropped when the handle goes.
//! Not part of the API; public only so that the integration tests can use it.

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

/// The variable that names a PostgreSQL database whose user may create databases.
pub const VAR: &str = "RUNNER_TEST_PG";

/// A database of its own for one test.
pub struct PgTestDb {
    /// Its URL, password included.
    pub url: String,
    name: String,
    admin: PgConnectOptions,
}

impl PgTestDb {
    /// A new empty database; `None` when `RUNNER_TEST_PG` is not set. Panics when it is set but
    /// the server cannot be used: a test that was asked for must not pass unrun.
    pub async fn create() -> Option<PgTestDb> {
        let admin_url = std::env::var(VAR).ok().filter(|v| !v.is_empty())?;
        let admin =
            PgConnectOptions::from_str(&admin_url).unwrap_or_else(|e| panic!("{VAR} is not a PostgreSQL URL: {e}"));
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let name = format!(
            "runner_t{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = admin
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{VAR}: cannot connect: {e}"));
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap_or_else(|e| panic!("{VAR}: CREATE DATABASE {name}: {e}"));
        conn.close().await.ok();
        let url = with_database(&admin_url, &name);
        Some(PgTestDb { url, name, admin })
    }

    /// [`PgTestDb::create`] for a test that was built to run on PostgreSQL
    /// (`cfg(runner_test_pg)`): panics, saying so, when `RUNNER_TEST_PG` is not set now.
    pub async fn required() -> PgTestDb {
        PgTestDb::create()
            .await
            .unwrap_or_else(|| panic!("{VAR} was set when these tests were built: set it to run them"))
    }

    /// The same server and user with another database name (one that may not exist).
    pub fn sibling(&self, database: &str) -> String {
        with_database(&self.url, database)
    }
}

impl Drop for PgTestDb {
    /// Drops the database, closing whatever connections a test left open. From a thread of its
    /// own, since the handle may be dropped inside a runtime.
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut conn = admin.connect().await?;
                conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await?;
                conn.close().await
            })
            .map_err(std::io::Error::other)
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("note: could not drop the test database {}: {e}", self.name);
        }
    }
}

/// `url` with its path (the database name) replaced, query kept.
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    let mut out = format!("{scheme}://{authority}/{database}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_name_is_replaced_and_the_rest_kept() {
        let f = super::with_database;
        assert_eq!(f("postgres://u:p@h:5/db", "x"), "postgres://u:p@h:5/x");
        assert_eq!(
            f("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(f("postgresql://h", "x"), "postgresql://h/x");
    }
}
