//! Runners on many hosts (issue 21): a PostgreSQL store shared by workers that name different
//! hosts, a cluster's stop signals (SIGTERM, SIGUSR1: exit 75, resume exact), `runner db copy`
//! between the two kinds of store, and PostgreSQL locations that cannot be used.
//!
//! The PostgreSQL tests need a server: `RUNNER_TEST_PG=postgres://…` when the tests are built
//! (`scripts/pg-local.sh` starts one and prints its URL; `.ci/run` does it). Without it they are
//! listed as ignored, with that reason.

use std::time::Duration;

use runner::store::{Location, MetricRow, Store};
use runner::testdb::PgTestDb;

use crate::util::{self, Dir};

/// [`util::grid`] with a `last` checkpoint at every evaluation.
fn grid(name: &str, archs: &str, seeds: &str, iterations: u32) -> String {
    util::grid(name, archs, seeds, iterations, 1)
}

/// A fresh PostgreSQL database for one test (built without RUNNER_TEST_PG, the test is ignored).
fn pg() -> PgTestDb {
    util::block_on(PgTestDb::required())
}

/// (trial, status, attempts, steps) of every trial, and every metric row by trial, read through
/// the store's API (either kind).
#[allow(clippy::type_complexity)]
/// Each trial's id, status, attempts, steps and total steps, and its metrics.
type Contents = (
    Vec<(i64, String, i64, Option<i64>, Option<i64>)>,
    Vec<(i64, Vec<MetricRow>)>,
);

fn contents(db: &str) -> Contents {
    util::block_on(async {
        let store = Store::open_existing(Location::parse(db)).await.expect("open the store");
        let mut trials = Vec::new();
        let mut metrics = Vec::new();
        for row in store.summary(None).await.unwrap() {
            let detail = store.trial(&row.trial.to_string()).await.unwrap();
            trials.push((
                row.trial,
                row.status.clone(),
                detail.attempts,
                row.steps,
                detail.total_steps,
            ));
            metrics.push((row.trial, store.metrics(row.trial).await.unwrap()));
        }
        store.close().await;
        (trials, metrics)
    })
}

#[test]
#[cfg_attr(
    not(runner_test_pg),
    ignore = "PostgreSQL: set RUNNER_TEST_PG=postgres://… (scripts/pg-local.sh) and rebuild"
)]
fn three_workers_of_three_hosts_drain_a_six_trial_grid_on_postgres_each_trial_once() {
    let db = pg();
    let d = Dir::new();
    d.write("g.toml", &grid("six", "\"plain\", \"resnet\"", "1, 2, 3", 8));
    let workers: Vec<_> = ["host-a", "host-b", "host-c"]
        .iter()
        .map(|host| {
            d.spawn(&[
                "run",
                "g.toml",
                "--db",
                &db.url,
                "--worker-host",
                host,
                "--threads",
                "1",
            ])
        })
        .collect();
    let ends: Vec<_> = workers.into_iter().map(|w| w.finish()).collect();
    for (code, out, err) in &ends {
        assert_eq!(*code, 0, "{}\n{err}", out.join("\n"));
    }
    assert!(
        !d.path().join("runs.db").exists(),
        "a worker wrote an SQLite file beside the grid"
    );
    let outputs: Vec<Vec<String>> = ends.into_iter().map(|(_, out, _)| out).collect();
    let (trials, metrics) = contents(&db.url);
    assert_eq!(trials.len(), 6);
    for (id, status, attempts, steps, _) in &trials {
        assert_eq!((status.as_str(), *attempts, *steps), ("done", 1, Some(8)), "trial {id}");
        assert_eq!(util::starts(&outputs, *id), 1, "trial {id} was started more than once");
    }
    // Two evaluations per trial, each with the same metric names, none twice.
    for (id, rows) in &metrics {
        let mut seen: Vec<(i64, &str, &str)> = rows
            .iter()
            .map(|m| (m.step, m.split.as_str(), m.name.as_str()))
            .collect();
        let n = seen.len();
        seen.dedup();
        assert_eq!(seen.len(), n, "trial {id} has a metric row twice");
        let steps: std::collections::BTreeSet<i64> = rows.iter().map(|m| m.step).collect();
        assert_eq!(steps.into_iter().collect::<Vec<_>>(), [4, 8], "trial {id}");
    }
    // The workers named their hosts.
    let workers: Vec<String> = util::block_on(async {
        let store = Store::open_existing(Location::parse(&db.url)).await.unwrap();
        let mut w = Vec::new();
        for (id, ..) in &trials {
            w.push(store.trial(&id.to_string()).await.unwrap().worker.unwrap_or_default());
        }
        store.close().await;
        w
    });
    assert!(workers.iter().all(|w| w.starts_with("host-")), "{workers:?}");
}

#[test]
#[cfg_attr(
    not(runner_test_pg),
    ignore = "PostgreSQL: set RUNNER_TEST_PG=postgres://… (scripts/pg-local.sh) and rebuild"
)]
fn a_worker_killed_on_one_host_is_taken_over_by_another_after_stale_after_with_the_same_metrics() {
    const ITERATIONS: u32 = 24;
    let text = grid("cut", "\"resnet\"", "1", ITERATIONS);
    let whole = util::uninterrupted(&text);

    let db = pg();
    let d = Dir::new();
    d.write("g.toml", &text);
    let mut a = d.spawn(&["run", "g.toml", "--db", &db.url, "--worker-host", "host-a"]);
    // Two evaluations, each with its `last` checkpoint, are committed.
    a.wait_for("  step ", 2);
    a.kill();
    // Another host's worker cannot see whether host-a's process lives: it waits for the
    // heartbeat to go stale. Within --stale-after the trial is left alone...
    let early = d.run(&[
        "run",
        "g.toml",
        "--db",
        &db.url,
        "--worker-host",
        "host-b",
        "--stale-after",
        "600",
    ]);
    assert_eq!(early.code(), 0, "{}", early.stderr());
    assert!(early.stdout().contains("0 trained"), "{}", early.stdout());
    assert!(early.stdout().contains("host-a:"), "{}", early.stdout());
    // ...and taken over after it.
    std::thread::sleep(Duration::from_secs(3));
    let b = d.run(&[
        "run",
        "g.toml",
        "--db",
        &db.url,
        "--worker-host",
        "host-b",
        "--stale-after",
        "2",
    ]);
    assert_eq!(b.code(), 0, "{}\n{}", b.stdout(), b.stderr());
    let out = b.stdout();
    assert!(out.contains("its runner host-a:") && out.contains("resuming"), "{out}");
    assert!(out.contains("(resuming)"), "{out}");

    let (trials, metrics) = contents(&db.url);
    assert_eq!(trials.len(), 1);
    let (_, status, attempts, steps, _) = &trials[0];
    assert_eq!(
        (status.as_str(), *attempts, *steps),
        ("done", 2, Some(ITERATIONS as i64))
    );
    let (_, reference) = contents(&whole.path().join("runs.db").to_string_lossy());
    assert_eq!(
        metrics[0].1, reference[0].1,
        "the taken-over trial's metrics differ from an uninterrupted run's"
    );
}

/// SIGTERM or SIGUSR1 in the middle of a trial: the step ends, `last` is written, the trial is
/// `interrupted` and the runner exits 75; the next run resumes it to an uninterrupted run's
/// metrics.
fn stopped_by(signal: libc::c_int, db: Option<&str>) {
    const ITERATIONS: u32 = 24;
    let text = grid("stop", "\"resnet\"", "1", ITERATIONS);
    let whole = util::uninterrupted(&text);

    let d = Dir::new();
    d.write("g.toml", &text);
    let local = d.path().join("runs.db").to_string_lossy().into_owned();
    let db = db.unwrap_or(&local);
    let mut run = d.spawn(&["run", "g.toml", "--db", db]);
    run.wait_for("  step ", 2);
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(run.child.id() as libc::pid_t, signal) }, 0);
    let (code, out, err) = run.finish();
    assert_eq!(code, 75, "{}\n{err}", out.join("\n"));
    assert!(err.contains("exit status 75"), "{err}");

    let (trials, metrics) = contents(db);
    let (_, status, attempts, steps, _) = &trials[0];
    assert_eq!((status.as_str(), *attempts), ("interrupted", 1));
    let at = steps.expect("steps recorded before the stop");
    assert!(at >= 8 && at < ITERATIONS as i64, "stopped at step {at}");
    assert!(metrics[0].1.iter().all(|m| m.step <= at));

    let again = d.run(&["run", "g.toml", "--db", db]);
    assert_eq!(again.code(), 0, "{}\n{}", again.stdout(), again.stderr());
    assert!(again.stdout().contains("(resuming)"), "{}", again.stdout());
    let (trials, metrics) = contents(db);
    assert_eq!(
        (trials[0].1.as_str(), trials[0].2, trials[0].3),
        ("done", 2, Some(ITERATIONS as i64))
    );
    let (_, reference) = contents(&whole.path().join("runs.db").to_string_lossy());
    assert_eq!(
        metrics[0].1, reference[0].1,
        "the resumed trial's metrics differ from an uninterrupted run's"
    );
}

#[test]
fn sigterm_interrupts_with_a_checkpoint_exits_75_and_resumes_exactly() {
    stopped_by(libc::SIGTERM, None);
}

#[test]
fn sigusr1_stops_like_sigterm() {
    stopped_by(libc::SIGUSR1, None);
}

#[test]
#[cfg_attr(
    not(runner_test_pg),
    ignore = "PostgreSQL: set RUNNER_TEST_PG=postgres://… (scripts/pg-local.sh) and rebuild"
)]
fn sigterm_on_postgres_interrupts_with_a_checkpoint_and_resumes_exactly() {
    let db = pg();
    stopped_by(libc::SIGTERM, Some(&db.url));
}

/// The path of `name` in `d`, as a `--db` value.
fn at(d: &Dir, name: &str) -> String {
    d.path().join(name).to_string_lossy().into_owned()
}

/// Copies `from` → `to`; the command's output.
fn copy(d: &Dir, from: &str, to: &str) -> String {
    let r = d.run(&["db", "copy", "--from", from, "--to", to]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    r.stdout()
}

/// A store with a finished experiment and one trial left interrupted after a `last` checkpoint.
fn half_done(d: &Dir) {
    d.write("g.toml", &grid("half", "\"plain\", \"resnet\"", "1", 8));
    let r = d.run(&["run", "g.toml"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    d.write("h.toml", &grid("later", "\"resnet\"", "2", 400));
    let mut run = d.spawn(&["run", "h.toml"]);
    run.wait_for("  step ", 1);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(run.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(run.finish().0, 75);
}

#[test]
fn db_copy_to_another_sqlite_file_keeps_every_result_and_refuses_a_second_copy() {
    let d = Dir::new();
    half_done(&d);
    let (runs, copied) = (at(&d, "runs.db"), at(&d, "copy.db"));
    let out = copy(&d, "runs.db", "copy.db");
    assert!(out.contains("copied 2 experiment(s), 3 trial(s)"), "{out}");
    assert!(out.contains("sha256 checked"), "{out}");
    assert_eq!(
        util::report_csv(&d, &["--db", "copy.db"]),
        util::report_csv(&d, &["--db", "runs.db"])
    );
    assert_eq!(contents(&copied), contents(&runs));
    // Checkpoints came along: the best weights export the same from both.
    for db in ["runs.db", "copy.db"] {
        let r = d.run(&["export", "1", "--out", &format!("{db}.safetensors"), "--db", db]);
        assert_eq!(r.code(), 0, "{}", r.stderr());
    }
    assert_eq!(
        std::fs::read(d.path().join("runs.db.safetensors")).unwrap(),
        std::fs::read(d.path().join("copy.db.safetensors")).unwrap()
    );

    // Copying again would duplicate the trials: refused, and nothing changes.
    let before = contents(&copied);
    let again = d.run(&["db", "copy", "--from", "runs.db", "--to", "copy.db"]);
    assert_eq!(again.code(), 2, "{}", again.stderr());
    assert!(
        again.stderr().contains("already holds 3 of the 3 trials"),
        "{}",
        again.stderr()
    );
    assert_eq!(contents(&copied), before);
    for other in ["runs.db", "./runs.db"] {
        let same = d.run(&["db", "copy", "--from", "runs.db", "--to", other]);
        assert_eq!(same.code(), 2, "{}", same.stderr());
        assert!(same.stderr().contains("are the same store"), "{}", same.stderr());
    }

    // The interrupted trial resumes in the copy.
    let r = d.run(&["run", "h.toml", "--db", "copy.db"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stdout().contains("(resuming)"), "{}", r.stdout());
}

#[test]
#[cfg_attr(
    not(runner_test_pg),
    ignore = "PostgreSQL: set RUNNER_TEST_PG=postgres://… (scripts/pg-local.sh) and rebuild"
)]
fn db_copy_round_trip_sqlite_postgres_sqlite_gives_the_same_report() {
    let db = pg();
    let d = Dir::new();
    half_done(&d);
    let there = copy(&d, "runs.db", &db.url);
    assert!(there.contains("copied 2 experiment(s), 3 trial(s)"), "{there}");
    assert!(
        !there.contains("runner_test:runner_test@"),
        "the password is shown: {there}"
    );
    let back = copy(&d, &db.url, "back.db");
    assert!(back.contains("copied 2 experiment(s), 3 trial(s)"), "{back}");
    let original = util::report_csv(&d, &["--db", "runs.db"]);
    assert_eq!(util::report_csv(&d, &["--db", &db.url]), original);
    assert_eq!(util::report_csv(&d, &["--db", "back.db"]), original);
    let stored = contents(&at(&d, "runs.db"));
    assert_eq!(contents(&at(&d, "back.db")), stored);
    assert_eq!(contents(&db.url), stored);

    // The half-done trial resumes on PostgreSQL.
    let r = d.run(&["run", "h.toml", "--db", &db.url]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stdout().contains("(resuming)"), "{}", r.stdout());
}

/// A PostgreSQL store that cannot be used is a message that names it (password masked), exit 2,
/// and nothing written; no server is needed to check it.
#[test]
fn an_unusable_postgres_url_exits_2_naming_it_without_the_password() {
    let d = Dir::new();
    d.write("g.toml", &grid("bad", "\"plain\"", "1", 4));
    for (url, says) in [
        ("postgres://me:s3cret@127.0.0.1:9/runs", "cannot be reached"),
        ("postgres://me:s3cret@127.0.0.1:notaport/runs", "not a PostgreSQL URL"),
    ] {
        for args in [
            vec!["run", "g.toml", "--db", url],
            vec!["report", "--db", url],
            vec!["db", "copy", "--from", url, "--to", "x.db"],
        ] {
            let r = d.run(&args);
            assert_eq!(r.code(), 2, "{args:?}: {}", r.stderr());
            let err = r.stderr();
            assert!(
                err.contains(says) && err.contains("me:***@127.0.0.1"),
                "{args:?}: {err}"
            );
            assert!(!err.contains("s3cret"), "{args:?}: {err}");
        }
    }
    // RUNNER_DB is --db's default.
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["report"])
        .env("RUNNER_DB", "postgres://me:s3cret@127.0.0.1:9/runs")
        .current_dir(d.path())
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("me:***@127.0.0.1:9/runs"));
    assert_eq!(d.files(), ["g.toml"]);
}
