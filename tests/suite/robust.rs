//! `runner run` when things go wrong (issue 7): several runners on one grid and one database,
//! runners killed with SIGKILL at any moment, trials left `running` by a runner that is gone,
//! and bad input, which must be refused with exit status 2 before anything is written.

use std::path::Path;
use std::time::Duration;

use runner::store::Store;

use crate::util::{self, Dir};

use crate::util::{grid, CIFAR10_FILES as CIFAR_FILES, EVAL_EVERY};

/// The steps at which a trial of `iterations` steps records its metrics.
fn evaluation_steps(iterations: u32) -> Vec<i64> {
    (1..=iterations / EVAL_EVERY).map(|k| (k * EVAL_EVERY) as i64).collect()
}

/// Every metric row of the file, in a stable order.
fn metrics(db: &Path) -> Vec<(i64, i64, String, String, f64)> {
    util::query(
        db,
        "SELECT trial_id, step, split, name, value FROM metrics ORDER BY trial_id, step, split, name",
    )
}

/// The "N trained, M failed in this run" count of a runner's output.
fn trained(lines: &[String]) -> usize {
    let line = lines
        .iter()
        .find(|l| l.contains(" trained, "))
        .unwrap_or_else(|| panic!("no summary line in:\n{}", lines.join("\n")));
    line.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn three_runners_on_one_grid_train_each_of_six_trials_once() {
    const ITERATIONS: u32 = 8;
    let d = Dir::new();
    d.write(
        "g.toml",
        &grid("six", "\"plain\", \"resnet\"", "1, 2, 3", ITERATIONS, 1),
    );
    let runners: Vec<_> = (0..3).map(|_| d.spawn(&["run", "g.toml", "--threads", "1"])).collect();
    let ends: Vec<_> = runners.into_iter().map(|r| r.finish()).collect();

    let mut total = 0;
    for (code, out, err) in &ends {
        let out = out.join("\n");
        assert_eq!(*code, 0, "{out}\n{err}");
        assert!(!err.contains("locked") && !out.contains("locked"), "{out}\n{err}");
        total += trained(&out.lines().map(String::from).collect::<Vec<_>>());
    }
    assert_eq!(total, 6, "the runners trained {total} trials between them");

    let db = d.path().join("runs.db");
    let trials: Vec<(i64, String, i64)> = util::query(&db, "SELECT id, status, attempts FROM trials ORDER BY id");
    assert_eq!(trials.len(), 6);
    let outputs: Vec<Vec<String>> = ends.iter().map(|(_, out, _)| out.clone()).collect();
    for (id, status, attempts) in &trials {
        assert_eq!((status.as_str(), *attempts), ("done", 1), "trial {id}");
        // Started by exactly one runner: one "[i/6] trial N: ..." line in all outputs together.
        let starts = util::starts(&outputs, *id);
        assert_eq!(starts, 1, "trial {id} was started {starts} times");
    }
    // Every trial has its evaluations, each once, and the same metrics at each.
    let per_step: Vec<(i64, i64, i64)> = util::query(
        &db,
        "SELECT trial_id, step, count(*) FROM metrics GROUP BY trial_id, step ORDER BY 1, 2",
    );
    for (id, _, _) in &trials {
        let steps: Vec<i64> = per_step.iter().filter(|r| r.0 == *id).map(|r| r.1).collect();
        assert_eq!(steps, evaluation_steps(ITERATIONS), "trial {id}");
    }
    let first: Vec<i64> = per_step.iter().filter(|r| r.0 == trials[0].0).map(|r| r.2).collect();
    for (id, _, _) in &trials[1..] {
        let counts: Vec<i64> = per_step.iter().filter(|r| r.0 == *id).map(|r| r.2).collect();
        assert_eq!(counts, first, "metric rows per evaluation of trial {id}");
    }
    assert_eq!(util::integrity(&db), "ok");
}

#[test]
fn a_runner_killed_at_any_moment_leaves_a_trial_that_resumes_to_the_same_metrics() {
    const ITERATIONS: u32 = 24;
    // A `last` checkpoint every other evaluation: metrics can run ahead of the checkpoint.
    let text = grid("cut", "\"resnet\"", "1", ITERATIONS, 2);
    let whole = util::uninterrupted(&text);

    let d = Dir::new();
    d.write("g.toml", &text);
    let db = d.path().join("runs.db");
    // (what to wait for in this attempt's output, how many times, then how long before SIGKILL)
    let kills: [(&str, usize, u64); 4] = [
        // As the first evaluation's metrics are written.
        ("  step ", 1, 0),
        // Right after the claim, while the checkpoint is read and the model built.
        ("] trial 1: ", 1, 0),
        // As the second evaluation of the attempt writes its metrics and `last` checkpoint.
        ("  step ", 2, 0),
        // Between evaluations, in the middle of training steps. The third evaluation line means
        // the second (a checkpoint) is committed: the records are written in order.
        ("  step ", 3, 30),
    ];
    for (attempt, (text, n, delay_ms)) in kills.into_iter().enumerate() {
        let mut r = d.spawn(&["run", "g.toml"]);
        r.wait_for(text, n);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let seen = r.kill();
        if attempt > 0 {
            assert!(
                seen.iter()
                    .any(|l| l.contains("its runner (pid ") && l.contains("is gone; resuming")),
                "attempt {attempt} did not take over the killed runner's trial at once:\n{}",
                seen.join("\n")
            );
        }
        assert_eq!(util::integrity(&db), "ok", "after kill {attempt}");
        let status: Vec<(String,)> = util::query(&db, "SELECT status FROM trials");
        assert_eq!(status, [("running".to_string(),)], "after kill {attempt}");
    }

    // Claimed now, the trial keeps no metrics past the checkpoint it resumes from.
    util::block_on(async {
        let store = Store::open(&db).await.unwrap();
        let key = store.trial("1").await.unwrap().key;
        let claim = store
            .claim(&[key], "test:0", false, Duration::ZERO)
            .await
            .unwrap()
            .expect("the killed runner's trial is claimable");
        let last = claim
            .resume
            .as_ref()
            .expect("a `last` checkpoint was committed before the last kill");
        assert!(last.step >= (2 * EVAL_EVERY) as i64, "{last:?}");
        let beyond: Vec<i64> = store
            .metrics(claim.trial_id)
            .await
            .unwrap()
            .iter()
            .map(|m| m.step)
            .filter(|&s| s > last.step)
            .collect();
        assert!(beyond.is_empty(), "metrics past step {}: {beyond:?}", last.step);
        store.release(claim.trial_id, "test:0").await.unwrap();
        store.close().await;
    });

    let rest = d.run(&["run", "g.toml"]);
    assert_eq!(rest.code(), 0, "{}\n{}", rest.stdout(), rest.stderr());
    assert!(rest.stdout().contains("(resuming)"), "{}", rest.stdout());
    assert_eq!(util::integrity(&db), "ok");
    let end: Vec<(String, i64, i64)> = util::query(&db, "SELECT status, steps, attempts FROM trials");
    // Four killed runs, the claim above, and the run that finished.
    assert_eq!(end, [("done".to_string(), ITERATIONS as i64, kills.len() as i64 + 2)]);
    let steps: Vec<(i64,)> = util::query(&db, "SELECT DISTINCT step FROM metrics ORDER BY step");
    assert_eq!(
        steps.into_iter().map(|s| s.0).collect::<Vec<_>>(),
        evaluation_steps(ITERATIONS)
    );
    assert_eq!(metrics(&db), metrics(&whole.path().join("runs.db")));
}

#[test]
fn a_trial_whose_runner_stopped_elsewhere_is_reclaimed_after_the_stale_timeout() {
    let d = Dir::new();
    d.write("g.toml", &grid("stale", "\"plain\", \"resnet\"", "1", 8, 1));
    let db = d.path().join("runs.db");
    // Registers both trials and claims the first; then both are made to look like trials of
    // runners on another machine: trial 1's went silent 90 s ago, trial 2's is alive (its
    // clock a little ahead, so that it stays fresh however slow this machine is).
    let mut r = d.spawn(&["run", "g.toml"]);
    r.wait_for("] trial 1: ", 1);
    r.kill();
    util::execute(
        &db,
        "UPDATE trials SET status = 'running', worker = 'far-away:4242', \
             heartbeat_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-90 seconds') WHERE id = 1; \
         UPDATE trials SET status = 'running', worker = 'far-away:4343', \
             heartbeat_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+10 minutes') WHERE id = 2;",
    );
    let summary = || util::query::<(i64, String)>(&db, "SELECT trial, status FROM trial_summary ORDER BY trial");
    let running = |id: i64| (id, "running".to_string());

    // 90 s is within the default 120: both trials are left to their runners.
    let patient = d.run(&["run", "g.toml"]);
    assert_eq!(patient.code(), 0, "{}", patient.stderr());
    assert!(patient.stdout().contains("0 trained"), "{}", patient.stdout());
    assert!(
        patient
            .stdout()
            .contains("2 trials are running in other runners (far-away:4242, far-away:4343)"),
        "{}",
        patient.stdout()
    );
    assert_eq!(summary(), [running(1), running(2)]);

    let eager = d.run(&["run", "g.toml", "--stale-after", "60"]);
    assert_eq!(eager.code(), 0, "{}", eager.stderr());
    let out = eager.stdout();
    assert!(
        out.contains("trial 1: its runner far-away:4242 sent no heartbeat for over 60 s; resuming"),
        "{out}"
    );
    assert!(out.contains("1 trained"), "{out}");
    assert!(
        out.contains("1 trial is running in other runners (far-away:4343)"),
        "{out}"
    );
    assert_eq!(summary(), [(1, "done".to_string()), running(2)]);
    let owner: Vec<(Option<String>, i64)> = util::query(&db, "SELECT worker, attempts FROM trials WHERE id = 2");
    // Never claimed by a runner of this machine.
    assert_eq!(owner, [(Some("far-away:4343".to_string()), 0)]);

    // Silent for five minutes: reported as interrupted, though the table still says running.
    util::execute(
        &db,
        "UPDATE trials SET heartbeat_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-5 minutes') WHERE id = 2",
    );
    assert_eq!(summary(), [(1, "done".to_string()), (2, "interrupted".to_string())]);
    let raw: Vec<(String,)> = util::query(&db, "SELECT status FROM trials WHERE id = 2");
    assert_eq!(raw, [("running".to_string(),)]);
    let last = d.run(&["run", "g.toml"]);
    assert_eq!(last.code(), 0, "{}", last.stderr());
    assert_eq!(summary(), [(1, "done".to_string()), (2, "done".to_string())]);
}

// ---- bad input: exit 2, a message naming the file, and nothing written ----

/// A grid whose single trial trains in a moment.
const TINY: &str = "[experiment]\nname = \"ok\"\n\n\
     [dataset]\nkind = \"synthetic\"\ntrain = 64\ntest = 16\nvalidation = 16\n\n\
     [train]\niterations = 2\nbatch_size = 16\neval_every = 2\noptimizer = { kind = \"sgd\", lr = 0.05 }\n\n\
     [grid]\narch = [\"plain\"]\ndepth = [8]\n";

/// A directory whose runs.db holds one finished experiment.
fn with_results() -> Dir {
    let d = Dir::new();
    d.write("ok.toml", TINY);
    let r = d.run(&["run", "ok.toml"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    d
}

/// Runs `runner ARGS` in `d` and checks that it is refused as bad input without changing any
/// file; returns its stderr.
fn refused(d: &Dir, args: &[&str]) -> String {
    let before = without_side_files(d);
    let r = d.run(args);
    assert_eq!(r.code(), 2, "{}\n{}", r.stdout(), r.stderr());
    assert_eq!(without_side_files(d), before, "bad input changed files: {}", r.stderr());
    r.stderr()
}

/// The directory's snapshot without SQLite's side files, after checking that any WAL holds
/// nothing: SQLite removes them at its last close, but a runner that exits while sqlx is
/// still closing a pool connection (seen on a loaded machine) leaves them behind, empty.
fn without_side_files(d: &Dir) -> Vec<(String, String)> {
    let wal = d.path().join("runs.db-wal");
    if wal.exists() {
        assert_eq!(
            std::fs::metadata(&wal).unwrap().len(),
            0,
            "a refused run wrote to the WAL"
        );
    }
    let side = |name: &str| name.ends_with("-wal") || name.ends_with("-shm");
    d.snapshot().into_iter().filter(|(name, _)| !side(name)).collect()
}

/// `make_input` run in a fresh directory and in one with results: both refuse the same way,
/// and neither gets a database or a changed one. Returns the message.
fn refused_everywhere(make_input: impl Fn(&Dir), args: &[&str]) -> String {
    let fresh = Dir::new();
    make_input(&fresh);
    let first = refused(&fresh, args);
    assert!(!fresh.path().join("runs.db").exists());
    let used = with_results();
    make_input(&used);
    let second = refused(&used, args);
    assert_eq!(first, second);
    first
}

/// The 1-based line of `text` that contains `what`.
fn line_of(text: &str, what: &str) -> usize {
    text.lines().position(|l| l.contains(what)).expect("the line is there") + 1
}

#[test]
fn malformed_toml_is_refused_with_its_line() {
    let text = TINY.replace("iterations = 2", "iterations = = 2");
    let err = refused_everywhere(
        |d| {
            d.write("bad.toml", &text);
        },
        &["run", "bad.toml"],
    );
    assert!(err.contains(&format!("bad.toml:{}:", line_of(&text, "= ="))), "{err}");
}

#[test]
fn an_unknown_key_is_refused_with_its_name_and_line() {
    let text = TINY.replace("eval_every = 2", "eval_every = 2\nlerning_rate = 0.1");
    let err = refused_everywhere(
        |d| {
            d.write("bad.toml", &text);
        },
        &["run", "bad.toml"],
    );
    assert!(
        err.contains(&format!("bad.toml:{}:", line_of(&text, "lerning_rate"))),
        "{err}"
    );
    assert!(err.contains("lerning_rate"), "{err}");
}

#[test]
fn invalid_values_are_refused_with_the_key_and_the_valid_choices() {
    let depth = TINY.replace("arch = [\"plain\"]\ndepth = [8]", "arch = [\"resnet\"]\ndepth = [10]");
    let err = refused_everywhere(
        |d| {
            d.write("bad.toml", &depth);
        },
        &["run", "bad.toml"],
    );
    assert!(
        err.contains(&format!("bad.toml:{}:", line_of(&depth, "depth = [10]"))),
        "{err}"
    );
    assert!(err.contains("depth 10") && err.contains("6n+2"), "{err}");

    let lr = TINY.replace("lr = 0.05", "lr = -1");
    let err = refused_everywhere(
        |d| {
            d.write("bad.toml", &lr);
        },
        &["run", "bad.toml"],
    );
    assert!(err.contains("bad.toml:"), "{err}");
    assert!(err.contains("`lr` must be a positive number, got -1"), "{err}");
}

/// A grid on CIFAR-10 files in `cifar/`.
const CIFAR: &str = "[experiment]\nname = \"c\"\n\n\
     [dataset]\nkind = \"cifar10\"\npath = \"cifar\"\n\n\
     [train]\niterations = 2\nbatch_size = 4\n\n\
     [grid]\narch = [\"plain\"]\ndepth = [8]\n";

/// Writes the grid and the six CIFAR-10 files, `records` records each (label, then 3072
/// pixels), with `edit` applied to each file's bytes.
fn cifar(d: &Dir, records: usize, edit: &dyn Fn(&str, &mut Vec<u8>)) {
    d.write("c.toml", CIFAR);
    std::fs::create_dir(d.path().join("cifar")).unwrap();
    for name in CIFAR_FILES {
        let mut bytes = Vec::new();
        for i in 0..records {
            bytes.push((i % 10) as u8);
            bytes.extend((0..3072).map(|p| ((p + i) % 256) as u8));
        }
        edit(name, &mut bytes);
        std::fs::write(d.path().join("cifar").join(name), bytes).unwrap();
    }
}

#[test]
fn missing_cifar_files_are_refused_naming_the_file() {
    let err = refused_everywhere(
        |d| {
            d.write("c.toml", CIFAR);
            std::fs::create_dir(d.path().join("cifar")).unwrap();
        },
        &["run", "c.toml"],
    );
    assert!(
        err.contains("cifar/data_batch_1.bin") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn a_truncated_cifar_file_is_refused_naming_it() {
    let err = refused_everywhere(
        |d| {
            cifar(d, 20, &|name, bytes| {
                if name == "data_batch_2.bin" {
                    bytes.truncate(bytes.len() - 100);
                }
            })
        },
        &["run", "c.toml"],
    );
    assert!(
        err.contains("cifar/data_batch_2.bin") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn a_mislabelled_cifar_record_is_refused_naming_file_and_record() {
    let err = refused_everywhere(
        |d| {
            cifar(d, 20, &|name, bytes| {
                if name == "data_batch_3.bin" {
                    bytes[5 * 3073] = 12;
                }
            })
        },
        &["run", "c.toml"],
    );
    assert!(err.contains("cifar/data_batch_3.bin"), "{err}");
    assert!(err.contains("label 12 in record 5"), "{err}");
}

#[test]
fn a_db_that_is_not_sqlite_is_refused_and_left_alone() {
    let d = Dir::new();
    d.write("ok.toml", TINY);
    d.write("notes.db", &"my notes, not a database\n".repeat(100));
    let err = refused(&d, &["run", "ok.toml", "--db", "notes.db"]);
    assert!(
        err.contains("notes.db") && err.contains("not an SQLite database"),
        "{err}"
    );
}

#[test]
fn a_db_from_a_newer_runner_is_refused_and_left_alone() {
    let d = with_results();
    util::execute(
        &d.path().join("runs.db"),
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', TRUE, x'00', 0)",
    );
    let err = refused(&d, &["run", "ok.toml"]);
    assert!(err.contains("runs.db") && err.contains("newer runner"), "{err}");
}

#[test]
fn a_read_only_location_is_refused_naming_it() {
    use std::os::unix::fs::PermissionsExt;
    let d = Dir::new();
    d.write("ok.toml", TINY);
    let ro = d.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let db = if std::fs::write(ro.join("probe"), "").is_err() {
        "ro/runs.db".to_string()
    } else {
        // Running as root, which permissions do not stop: use a place that stops everyone.
        std::fs::remove_file(ro.join("probe")).unwrap();
        match std::fs::write("/sys/runs.db", "") {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => "/sys/runs.db".to_string(),
            _ => {
                eprintln!("note: skipped: running as root and no read-only location found to test with");
                return;
            }
        }
    };
    let err = refused(&d, &["run", "ok.toml", "--db", &db]);
    assert!(err.contains(&db) && err.contains("writable"), "{err}");
}

// ---- a failing trial ----

#[test]
fn a_trial_whose_data_fails_to_load_mid_run_fails_alone_with_its_error() {
    let d = Dir::new();
    cifar(&d, 20, &|_, _| {});
    // Two seeds: the first trial's data is read before anything starts, the second's only
    // when its turn comes. The first trains long enough for the files to be spoiled meanwhile.
    let text = CIFAR
        .replace("iterations = 2", "iterations = 300\neval_every = 100")
        .replace("depth = [8]", "depth = [8]\nseed = [1, 2]");
    d.write("c.toml", &text);
    let mut r = d.spawn(&["run", "c.toml", "--threads", "1"]);
    r.wait_for("] trial 1: ", 1);
    let spoiled = d.path().join("cifar").join("data_batch_4.bin");
    let bytes = std::fs::read(&spoiled).unwrap();
    std::fs::write(&spoiled, &bytes[..bytes.len() - 10]).unwrap();
    let (code, out, err) = r.finish();
    let out = out.join("\n");
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("1 trained, 1 failed"), "{out}");

    let db = d.path().join("runs.db");
    let trials: Vec<(i64, String, Option<String>)> =
        util::query(&db, "SELECT id, status, error FROM trials ORDER BY id");
    assert_eq!(trials[0].1, "done", "{trials:?}");
    assert_eq!(trials[1].1, "failed", "{trials:?}");
    let error = trials[1].2.clone().unwrap_or_default();
    assert!(
        error.contains("loading its data") && error.contains("data_batch_4.bin") && error.contains("truncated"),
        "{error}"
    );
}
