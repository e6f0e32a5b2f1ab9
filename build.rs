//! Rebuild when a migration is added: `sqlx::migrate!` embeds the folders at compile time, and
//! cargo would not otherwise notice a new file in them.
//!
//! `RUNNER_TEST_PG` (a PostgreSQL URL) at build time turns on the PostgreSQL half of the store
//! tests (`cfg(runner_test_pg)`); without it they are compiled but ignored, and `cargo test`
//! lists them with the reason.
fn main() {
    println!("cargo::rerun-if-changed=migrations/sqlite");
    println!("cargo::rerun-if-changed=migrations/postgres");
    println!("cargo::rerun-if-env-changed=RUNNER_TEST_PG");
    println!("cargo::rustc-check-cfg=cfg(runner_test_pg)");
    if std::env::var_os("RUNNER_TEST_PG").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=runner_test_pg");
    }
}
