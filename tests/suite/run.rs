//! `runner run` → `runner report` / `show` on tiny synthetic grids, and the promises
//! around them: a second run trains nothing, a trial interrupted by SIGINT resumes to the same
//! metrics, a diverging trial fails alone.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use runner::store::{MetricRow, Store};

use crate::util::{csv_rows, Dir};

/// Two depth-8 nets on 512 synthetic images; a few seconds each.
fn grid(iterations: u32, lr: &str) -> String {
    format!(
        "[experiment]\nname = \"tiny\"\n\n\
         [dataset]\nkind = \"synthetic\"\ntrain = 512\ntest = 128\nvalidation = 128\naugment = [\"pad-crop:4\", \"hflip\"]\n\n\
         [train]\niterations = {iterations}\nbatch_size = 16\neval_every = 4\n\
         optimizer = {{ kind = \"sgd\", lr = {lr} }}\n\n\
         [grid]\narch = [\"plain\", \"resnet\"]\ndepth = [8]\n"
    )
}

fn metrics(dir: &Dir) -> Vec<Vec<(i64, String, String, f64)>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open_existing(&dir.path().join("runs.db")).await.unwrap();
        let mut all = Vec::new();
        for row in store.summary(None).await.unwrap() {
            let m: Vec<MetricRow> = store.metrics(row.trial).await.unwrap();
            all.push(m.into_iter().map(|m| (m.step, m.split, m.name, m.value)).collect());
        }
        store.close().await;
        all
    })
}

#[test]
fn a_grid_runs_reports_and_a_second_run_trains_nothing() {
    let d = Dir::new();
    d.write("g.toml", &grid(8, "0.05"));
    let r = d.run(&["run", "g.toml"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert!(r.stdout().contains("2 trained, 0 failed"), "{}", r.stdout());

    let (header, rows) = csv_rows(&d);
    // The parameters of plain (depth, width), then those resnet adds, between arch and params.
    let expected = "experiment,trial,arch,depth,width,shortcut,preact,block,params,status,steps,best_val_error,\
                    test_error,train_loss,wall_s";
    assert_eq!(header[..15].join(","), expected);
    assert_eq!(rows.len(), 2);
    let col = |row: &Vec<String>, name: &str| row[header.iter().position(|h| h == name).unwrap()].clone();
    for row in &rows {
        assert_eq!(col(row, "status"), "done");
        assert_eq!(col(row, "steps"), "8");
        assert_eq!(col(row, "depth"), "8");
        for e in ["best_val_error", "test_error"] {
            let v: f64 = col(row, e).parse().unwrap_or_else(|_| panic!("{e} in {row:?}"));
            assert!((0.0..=1.0).contains(&v), "{e} = {v} is not a fraction");
        }
    }
    assert_eq!(col(&rows[0], "arch"), "plain");
    assert_eq!(col(&rows[1], "shortcut"), "A");
    assert_eq!(col(&rows[0], "shortcut"), "", "a plain net has no shortcut");
    let before = metrics(&d);

    let again = d.run(&["run", "g.toml"]);
    assert_eq!(again.code(), 0, "{}", again.stderr());
    assert!(again.stdout().contains("0 trained, 0 failed"), "{}", again.stdout());
    assert_eq!(metrics(&d), before, "a second run changed recorded metrics");

    // `show` by id prints the configuration and the metric history.
    let show = d.run(&["show", "1"]);
    assert_eq!(show.code(), 0, "{}", show.stderr());
    assert!(show.stdout().contains("status       done"), "{}", show.stdout());
    assert!(show.stdout().contains("val/error"), "{}", show.stdout());
}

#[test]
fn an_interrupted_trial_resumes_to_the_metrics_of_an_uninterrupted_one() {
    let text = grid(24, "0.05");
    let whole = Dir::new();
    whole.write("g.toml", &text);
    assert_eq!(whole.run(&["run", "g.toml"]).code(), 0);

    let cut = Dir::new();
    cut.write("g.toml", &text);
    let mut child = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["run", "g.toml"])
        .current_dir(cut.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Interrupt once the first trial has recorded its second evaluation.
    // Keep reading to the end: a closed pipe would make the runner's next line fail.
    let stdout = child.stdout.take().unwrap();
    let mut sent = false;
    for line in BufReader::new(stdout).lines() {
        if !sent && line.unwrap().contains("step 8/24") {
            let kill = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(kill.success());
            sent = true;
        }
    }
    assert!(sent, "the run ended before its second evaluation");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let (header, rows) = csv_rows(&cut);
    let status_col = header.iter().position(|h| h == "status").unwrap();
    assert_eq!(rows[0][status_col], "interrupted");

    let rest = cut.run(&["run", "g.toml"]);
    assert_eq!(rest.code(), 0, "{}", rest.stderr());
    assert!(rest.stdout().contains("(resuming)"), "{}", rest.stdout());
    assert_eq!(metrics(&cut), metrics(&whole));
}

#[test]
fn diverging_trials_fail_one_by_one_and_the_grid_goes_on() {
    let d = Dir::new();
    d.write("g.toml", &grid(8, "1e6"));
    let r = d.run(&["run", "g.toml"]);
    assert_eq!(r.code(), 1, "{}", r.stdout());
    assert!(r.stdout().contains("0 trained, 2 failed"), "{}", r.stdout());
    let (header, rows) = csv_rows(&d);
    let status = header.iter().position(|h| h == "status").unwrap();
    assert_eq!(
        rows.iter().map(|r| r[status].as_str()).collect::<Vec<_>>(),
        ["failed", "failed"]
    );
    let show = d.run(&["show", "2"]);
    assert!(show.stdout().contains("diverged at step"), "{}", show.stdout());
}

/// `--jobs 3` trains the grid's trials side by side in one runner, each under a worker name of
/// its own, and every trial ends with exactly the metrics of a one-at-a-time run.
#[test]
fn jobs_train_side_by_side_to_the_numbers_of_one_at_a_time() {
    let text = crate::util::grid("jobs", "\"plain\", \"resnet\"", "1, 2", 8, 1);
    let one = crate::util::uninterrupted(&text);
    let three = Dir::new();
    three.write("g.toml", &text);
    let r = three.run(&["run", "g.toml", "--jobs", "3"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let out = r.stdout();
    assert!(out.contains("4 trials, 3 at a time"), "{out}");
    assert!(out.contains("4 trained, 0 failed"), "{out}");
    // with several jobs, each trial's lines name it
    for id in 1..=4 {
        assert!(out.contains(&format!("  trial {id}: done in")), "{out}");
    }
    assert_eq!(
        metrics(&three),
        metrics(&one),
        "a trial's metrics depend on what trained beside it"
    );

    let workers: Vec<String> = crate::util::block_on(async {
        let store = Store::open_existing(&three.path().join("runs.db")).await.unwrap();
        let mut w = Vec::new();
        for id in 1..=4 {
            w.push(store.trial(&id.to_string()).await.unwrap().worker.unwrap_or_default());
        }
        store.close().await;
        w
    });
    let pid_of = |w: &str| {
        w.rsplit_once(':')
            .map(|(_, p)| p.split('/').next().unwrap_or("").to_string())
    };
    assert!(workers.iter().all(|w| w.contains('/')), "{workers:?}");
    assert!(
        workers.windows(2).all(|p| pid_of(&p[0]) == pid_of(&p[1])),
        "one process: {workers:?}"
    );
    let mut jobs: Vec<&str> = workers.iter().filter_map(|w| w.rsplit_once('/').map(|j| j.1)).collect();
    jobs.sort_unstable();
    jobs.dedup();
    assert!(jobs.len() >= 2, "the trials all went to one job: {workers:?}");
}

/// A trial whose estimated memory exceeds what the process may use fails before it is built,
/// with the estimate in its message, and the trials beside it train.
#[test]
fn a_trial_that_cannot_fit_fails_before_it_starts_and_the_grid_goes_on() {
    let d = Dir::new();
    let text = crate::util::grid("fit", "\"resnet\"", "1", 8, 1).replace("depth = [8]", "depth = [8, 200000]");
    d.write("g.toml", &text);
    let r = d.run(&["run", "g.toml"]);
    assert_eq!(r.code(), 1, "{}\n{}", r.stdout(), r.stderr());
    assert!(r.stdout().contains("1 trained, 1 failed"), "{}", r.stdout());
    let (header, rows) = csv_rows(&d);
    let status = header.iter().position(|h| h == "status").unwrap();
    let depth = header.iter().position(|h| h == "depth").unwrap();
    let by_depth = |dep: &str| rows.iter().find(|r| r[depth] == dep).unwrap()[status].clone();
    assert_eq!(
        (by_depth("8"), by_depth("200000")),
        ("done".to_string(), "failed".to_string())
    );
    let failed = rows.iter().position(|r| r[depth] == "200000").unwrap() + 1;
    let show = d.run(&["show", &failed.to_string()]);
    assert!(
        show.stdout().contains("estimated") && show.stdout().contains("--ignore-memory-limit"),
        "{}",
        show.stdout()
    );
}
