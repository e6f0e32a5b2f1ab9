//! Store tests. The shared suite (`on_both!`) runs every test on a fresh SQLite file in its own
//! temp dir and on a fresh PostgreSQL database of its own (created on the server that
//! `RUNNER_TEST_PG` names, dropped afterwards); the tests at the end are SQLite's own (WAL,
//! side files, the file format).
//!
//! Without `RUNNER_TEST_PG` when the tests are built, the PostgreSQL half is compiled but
//! marked ignored, with a reason that says how to run it (`scripts/pg-local.sh` starts a
//! server). `.ci/run` always sets it.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::*;
use crate::arch::Value;
use crate::testdb::PgTestDb;

const HOUR: Duration = Duration::from_secs(3600);

/// A test of the shared suite: `async fn NAME(db: TestDb) { … }` becomes a module `NAME` with
/// the tests `sqlite` and `postgres`, each given a fresh database of its kind. Attributes (a
/// `#[tokio::test(flavor = …)]`) replace the plain `#[tokio::test]` on both.
macro_rules! on_both {
    ($(#[$attr:meta])* async fn $name:ident($db:ident: TestDb) $body:block) => {
        on_both!(@ [$(#[$attr])*] $name $db $body);
    };
    (@ [] $name:ident $db:ident $body:block) => {
        on_both!(@ [#[tokio::test]] $name $db $body);
    };
    (@ [$(#[$attr:meta])+] $name:ident $db:ident $body:block) => {
        mod $name {
            use super::*;

            async fn body($db: TestDb) $body

            $(#[$attr])+
            async fn sqlite() {
                body(TestDb::sqlite()).await
            }

            $(#[$attr])+
            #[cfg_attr(not(runner_test_pg), ignore = "PostgreSQL: set RUNNER_TEST_PG=postgres://… (scripts/pg-local.sh) and rebuild")]
            async fn postgres() {
                body(TestDb::postgres().await).await
            }
        }
    };
}

/// The config_json of a trial, shaped like the grid module writes it.
fn config(experiment: &str, arch: &str, depth: i64, seed: i64) -> String {
    let params = if arch == "resnet" {
        serde_json::json!({"block": "basic", "depth": depth, "preact": true, "shortcut": "B", "width": 16})
    } else {
        serde_json::json!({"depth": depth, "width": 16})
    };
    serde_json::json!({
        "experiment": experiment,
        "arch": arch,
        "params": params,
        "dataset": {"kind": "synthetic", "validation": 100},
        "train": {"iterations": 10, "batch_size": 8},
        "seed": seed,
    })
    .to_string()
}

fn trial(experiment: &str, ord: i64, arch: &str, depth: i64) -> NewTrial {
    let config_json = config(experiment, arch, depth, 1);
    NewTrial {
        key: hex::encode(Sha256::digest(config_json.as_bytes())),
        arch: arch.to_string(),
        config_json,
        params: 1000 * depth,
        mflops: 2.5 * depth as f64,
        ord,
    }
}

fn grid(experiment: &str, n: i64) -> Vec<NewTrial> {
    (0..n).map(|i| trial(experiment, i, "resnet", 6 * i + 8)).collect()
}

fn keys(trials: &[NewTrial]) -> Vec<String> {
    trials.iter().map(|t| t.key.clone()).collect()
}

/// A fresh database of one kind for one test of the shared suite.
enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres(Box<PgTestDb>),
}

impl TestDb {
    fn sqlite() -> TestDb {
        TestDb::Sqlite(tempfile::tempdir().expect("temp dir"))
    }

    async fn postgres() -> TestDb {
        TestDb::Postgres(Box::new(PgTestDb::required().await))
    }

    fn location(&self) -> Location {
        match self {
            TestDb::Sqlite(dir) => Location::Sqlite(dir.path().join("runs.db")),
            TestDb::Postgres(db) => Location::Postgres(db.url.clone()),
        }
    }

    /// A store on it: every call another one, as another runner process would open.
    async fn open(&self) -> Store {
        Store::open(self.location()).await.expect("open")
    }
}

/// A fresh SQLite store in a temp dir (for SQLite's own tests).
async fn fresh() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("runs.db")).await.expect("open");
    (dir, store)
}

fn record(step: i64, val_error: f64) -> Record {
    Record {
        step,
        epoch: step as f64 / 10.0,
        metrics: vec![
            Metric {
                split: "val".into(),
                name: "error".into(),
                value: val_error,
            },
            Metric {
                split: "train".into(),
                name: "loss".into(),
                value: 2.0 - step as f64 / 1000.0,
            },
        ],
        best: None,
        last: None,
        train_loss: Some(2.0 - step as f64 / 1000.0),
        images_per_s: Some(100.0 + step as f64),
        wall_s: step as f64 / 10.0,
    }
}

async fn claim_one(store: &Store, keys: &[String], worker: &str) -> Claim {
    store
        .claim(keys, worker, false, HOUR)
        .await
        .expect("claim")
        .expect("a trial to claim")
}

/// Runs one statement on the store's own pool, whichever database it is (`$N` parameters).
async fn exec(store: &Store, sql: &str, binds: &[i64]) {
    each_pool!(&store.pool, |pool| {
        let mut q = sqlx::query(sql);
        for b in binds {
            q = q.bind(*b);
        }
        q.execute(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    })
}

/// Marks the trial's heartbeat as an hour and more old: its worker died long ago.
async fn age_heartbeat(store: &Store, trial_id: i64) {
    exec(
        store,
        "UPDATE trials SET heartbeat_at = '2000-01-01T00:00:00.000Z' WHERE id = $1",
        &[trial_id],
    )
    .await
}

/// Records a migration this binary does not have, as a newer runner would have.
async fn mark_as_from_a_newer_runner(store: &Store) {
    each_pool!(&store.pool, |pool| {
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99990101000000, 'from the future', TRUE, $1, 0)",
        )
        .bind(vec![0u8])
        .execute(pool)
        .await
        .unwrap();
    });
}

on_both! {
async fn register_twice_does_not_duplicate(db: TestDb) {
    let store = db.open().await;
    let trials = grid("depth", 3);
    let id = store.register("depth", "v1", &trials).await.unwrap();
    let first = store.summary(None).await.unwrap();
    // A claimed trial must survive re-registration untouched.
    let claimed = claim_one(&store, &keys(&trials), "w").await;

    let mut more = trials.clone();
    more.push(trial("depth", 3, "plain", 20));
    let again = store.register("depth", "v2", &more).await.unwrap();
    assert_eq!(again, id);

    let rows = store.summary(None).await.unwrap();
    assert_eq!(rows.len(), 4);
    for (before, after) in first.iter().zip(&rows) {
        assert_eq!(before.trial, after.trial);
        assert_eq!(before.key, after.key);
    }
    let status = |t: i64| rows.iter().find(|r| r.trial == t).map(|r| r.status.clone());
    assert_eq!(status(claimed.trial_id).as_deref(), Some("running"));
    let toml: String = each_pool!(&store.pool, |pool| sqlx::query_scalar(
        "SELECT grid_toml FROM experiments WHERE id = $1"
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap());
    assert_eq!(toml, "v2");
    assert_eq!(store.experiments().await.unwrap(), vec!["depth".to_string()]);
}
}

on_both! {
async fn summary_lists_trials_in_grid_order_per_experiment(db: TestDb) {
    let store = db.open().await;
    // Inserted in reverse grid order.
    let mut b = grid("b-first", 4);
    b.reverse();
    store.register("b-first", "", &b).await.unwrap();
    store.register("a-second", "", &grid("a-second", 2)).await.unwrap();

    let rows = store.summary(None).await.unwrap();
    let order: Vec<(String, i64)> = rows
        .iter()
        .map(|r| (r.experiment.clone(), r.arch_params.int("depth").unwrap()))
        .collect();
    let expected: Vec<(String, i64)> = (0..4)
        .map(|i| ("b-first".to_string(), 6 * i + 8))
        .chain((0..2).map(|i| ("a-second".to_string(), 6 * i + 8)))
        .collect();
    assert_eq!(order, expected);

    let only = store.summary(Some("a-second")).await.unwrap();
    assert_eq!(only.len(), 2);
    assert!(only.iter().all(|r| r.experiment == "a-second"));
    assert!(matches!(store.summary(Some("nope")).await, Err(Error::Usage(_))));
}
}

on_both! {
async fn view_extracts_architecture_columns_from_config(db: TestDb) {
    let store = db.open().await;
    let resnet = trial("e", 0, "resnet", 20);
    let plain = trial("e", 1, "plain", 20);
    store.register("e", "", &[resnet.clone(), plain.clone()]).await.unwrap();
    let rows = store.summary(None).await.unwrap();

    let r = &rows[0];
    assert_eq!(r.arch, "resnet");
    let expected = |json: serde_json::Value| -> crate::arch::Params { serde_json::from_value(json).unwrap() };
    assert_eq!(
        r.arch_params,
        expected(serde_json::json!({"block": "basic", "depth": 20, "preact": true, "shortcut": "B", "width": 16}))
    );
    assert_eq!(r.param("preact"), Some(&Value::Bool(true)));
    assert_eq!(r.seed, Some(1));
    assert_eq!(r.dataset.as_deref(), Some("synthetic"));
    assert_eq!(r.params, resnet.params);
    assert_eq!(r.mflops, resnet.mflops);
    assert_eq!(r.status, "pending");
    assert!(resnet.key.starts_with(&r.key) && r.key.len() < resnet.key.len());

    let p = &rows[1];
    assert_eq!(p.arch, "plain");
    assert_eq!(p.arch_params, expected(serde_json::json!({"depth": 20, "width": 16})));
    assert_eq!(p.param("shortcut"), None);
}
}

/// A trial whose parameters are the registered plugin's defaults, as the grid module resolves them.
fn default_trial(experiment: &str, ord: i64, arch: &str) -> NewTrial {
    let plugin = crate::plugins::find(arch).unwrap();
    let params = crate::arch::resolve(plugin, &Default::default()).unwrap();
    let config_json = serde_json::json!({
        "experiment": experiment,
        "arch": arch,
        "params": params,
        "dataset": {"kind": "synthetic"},
        "seed": 1,
    })
    .to_string();
    NewTrial {
        key: hex::encode(Sha256::digest(config_json.as_bytes())),
        arch: arch.to_string(),
        config_json,
        params: 1,
        mflops: 1.0,
        ord,
    }
}

on_both! {
async fn the_summary_keeps_every_stored_parameter_of_any_architecture(db: TestDb) {
    // A trial of an architecture this build does not know: the summary still has all of its
    // parameters, with their types.
    let store = db.open().await;
    let mut t = trial("e", 0, "plain", 8);
    t.arch = "alexnet".into();
    t.config_json = serde_json::json!({
        "experiment": "e", "arch": "alexnet", "seed": 1, "dataset": {"kind": "synthetic"},
        "params": {"layers": 11, "bn": true, "dropout": 0.5, "head": "fc"},
    })
    .to_string();
    t.key = hex::encode(Sha256::digest(t.config_json.as_bytes()));
    store.register("e", "", &[t]).await.unwrap();
    let rows = store.summary(None).await.unwrap();
    let p = &rows[0].arch_params;
    assert_eq!(p.get("layers"), Some(&Value::Int(11)));
    assert_eq!(p.get("bn"), Some(&Value::Bool(true)));
    assert_eq!(p.get("dropout"), Some(&Value::Float(0.5)));
    assert_eq!(p.get("head"), Some(&Value::Str("fc".into())));
}
}

on_both! {
async fn claims_follow_key_order_and_never_repeat(db: TestDb) {
    let store = db.open().await;
    let trials = grid("e", 3);
    store.register("e", "", &trials).await.unwrap();
    let order = vec![trials[2].key.clone(), trials[0].key.clone(), trials[1].key.clone()];

    let other = db.open().await;
    let first = claim_one(&store, &order, "a").await;
    let second = claim_one(&other, &order, "b").await;
    let third = claim_one(&store, &order, "a").await;
    let claimed: Vec<&str> = [&first, &second, &third].iter().map(|c| c.key.as_str()).collect();
    assert_eq!(claimed, order.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(first.resume.is_none());
    assert_eq!(first.previous_status, "pending");
    assert!(store.claim(&order, "a", true, HOUR).await.unwrap().is_none());
    assert!(other.claim(&order, "b", true, HOUR).await.unwrap().is_none());

    let detail = store.trial(&second.trial_id.to_string()).await.unwrap();
    assert_eq!(detail.worker.as_deref(), Some("b"));
    assert_eq!(detail.summary.status, "running");
    assert_eq!(detail.attempts, 1);
    assert!(detail.started_at.is_some() && detail.heartbeat_at.is_some());
}
}

on_both! {
async fn claims_only_among_the_given_keys(db: TestDb) {
    let store = db.open().await;
    let trials = grid("e", 3);
    store.register("e", "", &trials).await.unwrap();
    let only = vec![trials[1].key.clone()];
    assert_eq!(claim_one(&store, &only, "w").await.key, trials[1].key);
    assert!(store.claim(&only, "w", false, HOUR).await.unwrap().is_none());
}
}

on_both! {
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_from_separate_stores_take_each_trial_once(db: TestDb) {
    let trials = grid("e", 24);
    let keys = keys(&trials);
    db.open().await.register("e", "", &trials).await.unwrap();

    let mut tasks = Vec::new();
    for w in 0..4 {
        let (location, keys) = (db.location(), keys.clone());
        tasks.push(tokio::spawn(async move {
            // Each worker opens its own store, as separate processes would.
            let store = Store::open(location).await.unwrap();
            let worker = format!("w{w}");
            let mut mine = Vec::new();
            while let Some(c) = store.claim(&keys, &worker, false, HOUR).await.unwrap() {
                mine.push(c.trial_id);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), trials.len(), "claims: {all:?}");
    assert_eq!(unique.len(), trials.len());
}
}

on_both! {
async fn stale_running_trial_is_taken_over(db: TestDb) {
    let store = db.open().await;
    let trials = grid("e", 1);
    let keys = keys(&trials);
    store.register("e", "", &trials).await.unwrap();
    let a = claim_one(&store, &keys, "a").await;
    // Fresh heartbeat: nobody else may take it.
    assert!(store.claim(&keys, "b", false, HOUR).await.unwrap().is_none());

    age_heartbeat(&store, a.trial_id).await;
    let b = claim_one(&store, &keys, "b").await;
    assert_eq!(b.trial_id, a.trial_id);
    assert_eq!(b.previous_status, "running");
    assert_eq!(b.previous_worker.as_deref(), Some("a"));
    let detail = store.trial(&a.trial_id.to_string()).await.unwrap();
    assert_eq!(detail.worker.as_deref(), Some("b"));
    assert_eq!(detail.attempts, 2);

    // The old owner learns that it lost the trial, and can neither record nor finish it; the
    // new one keeps it alive.
    let taken = |r: Result<()>| matches!(r, Err(Error::TakenOver { ref by, .. }) if by == "b");
    assert!(taken(store.heartbeat(a.trial_id, "a").await));
    assert!(taken(store.record(a.trial_id, "a", &record(100, 0.5)).await));
    let done = Outcome::Done {
        test_error: Some(0.1),
        wall_s: 1.0,
    };
    assert!(taken(store.finish(a.trial_id, "a", &done).await));
    assert!(store.metrics(a.trial_id).await.unwrap().is_empty());
    store.heartbeat(b.trial_id, "b").await.unwrap();
    // Releasing as the old owner must not touch the new owner's run.
    store.release(a.trial_id, "a").await.unwrap();
    assert_eq!(
        store.trial(&a.trial_id.to_string()).await.unwrap().summary.status,
        "running"
    );
}
}

on_both! {
async fn failed_trials_are_claimed_again_only_when_asked(db: TestDb) {
    let store = db.open().await;
    let trials = grid("e", 1);
    let keys = keys(&trials);
    store.register("e", "", &trials).await.unwrap();
    let c = claim_one(&store, &keys, "w").await;
    store
        .finish(
            c.trial_id,
            "w",
            &Outcome::Failed {
                error: "out of memory".into(),
                wall_s: 3.0,
            },
        )
        .await
        .unwrap();
    let row = &store.summary(None).await.unwrap()[0];
    assert_eq!(
        (row.status.as_str(), row.error.as_deref()),
        ("failed", Some("out of memory"))
    );

    assert!(store.claim(&keys, "w", false, HOUR).await.unwrap().is_none());
    let again = store.claim(&keys, "w", true, HOUR).await.unwrap().unwrap();
    assert_eq!(again.previous_status, "failed");
    let row = &store.summary(None).await.unwrap()[0];
    assert_eq!((row.status.as_str(), row.error.as_deref()), ("running", None));
}
}

on_both! {
async fn resume_keeps_metrics_up_to_the_last_checkpoint(db: TestDb) {
    let store = db.open().await;
    let trials = grid("e", 1);
    let keys = keys(&trials);
    store.register("e", "", &trials).await.unwrap();
    let c = claim_one(&store, &keys, "w").await;

    let state = vec![7u8; 64];
    let mut at100 = record(100, 0.5);
    at100.last = Some(Checkpoint::new(CheckpointKind::Last, 100, state.clone()));
    store.record(c.trial_id, "w", &at100).await.unwrap();
    store.record(c.trial_id, "w", &record(200, 0.4)).await.unwrap();
    store.release(c.trial_id, "w").await.unwrap();
    assert_eq!(store.summary(None).await.unwrap()[0].status, "interrupted");

    let resumed = claim_one(&store, &keys, "w2").await;
    assert_eq!(resumed.previous_status, "interrupted");
    let ckpt = resumed.resume.expect("resume from the last checkpoint");
    assert_eq!((ckpt.kind, ckpt.step, ckpt.bytes), (CheckpointKind::Last, 100, state));
    let steps: HashSet<i64> = store
        .metrics(c.trial_id)
        .await
        .unwrap()
        .iter()
        .map(|m| m.step)
        .collect();
    assert_eq!(steps, HashSet::from([100]));

    // The resumed run records step 200 again, with other values: rewritten, not duplicated.
    store.record(c.trial_id, "w2", &record(200, 0.3)).await.unwrap();
    store.record(c.trial_id, "w2", &record(200, 0.25)).await.unwrap();
    let rows = store.metrics(c.trial_id).await.unwrap();
    let val200: Vec<f64> = rows
        .iter()
        .filter(|m| m.step == 200 && m.split == "val")
        .map(|m| m.value)
        .collect();
    assert_eq!(val200, vec![0.25]);
}
}

on_both! {
async fn restart_without_checkpoint_drops_earlier_results(db: TestDb) {
    let store = db.open().await;
    let trials = grid("e", 1);
    let keys = keys(&trials);
    store.register("e", "", &trials).await.unwrap();
    let c = claim_one(&store, &keys, "w").await;
    let mut rec = record(100, 0.5);
    rec.best = Some((0.5, Checkpoint::new(CheckpointKind::Best, 100, vec![1, 2, 3])));
    store.record(c.trial_id, "w", &rec).await.unwrap();
    store.finish(c.trial_id, "w", &Outcome::Interrupted).await.unwrap();

    let again = claim_one(&store, &keys, "w").await;
    assert!(again.resume.is_none());
    assert!(store.metrics(c.trial_id).await.unwrap().is_empty());
    assert!(store
        .checkpoint(c.trial_id, CheckpointKind::Best)
        .await
        .unwrap()
        .is_none());
    let row = &store.summary(None).await.unwrap()[0];
    assert_eq!((row.best_val_error, row.steps), (None, None));
}
}

on_both! {
async fn best_checkpoint_is_replaced_together_with_best_val_error(db: TestDb) {
    let store = db.open().await;
    let trials = grid("e", 1);
    store.register("e", "", &trials).await.unwrap();
    let c = claim_one(&store, &keys(&trials), "w").await;

    let mut first = record(100, 0.4);
    first.best = Some((0.4, Checkpoint::new(CheckpointKind::Best, 100, vec![1; 10])));
    store.record(c.trial_id, "w", &first).await.unwrap();
    let mut better = record(200, 0.3);
    better.best = Some((0.3, Checkpoint::new(CheckpointKind::Best, 200, vec![2; 10])));
    store.record(c.trial_id, "w", &better).await.unwrap();
    // Not a new best: the best stays where it was.
    store.record(c.trial_id, "w", &record(300, 0.35)).await.unwrap();

    let best = store
        .checkpoint(c.trial_id, CheckpointKind::Best)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((best.step, best.bytes.clone()), (200, vec![2; 10]));
    assert_eq!(best, Checkpoint::new(CheckpointKind::Best, 200, vec![2; 10]));
    let row = &store.summary(None).await.unwrap()[0];
    assert_eq!(
        (row.best_val_error, row.best_step, row.steps),
        (Some(0.3), Some(200), Some(300))
    );
    assert_eq!(row.train_loss, record(300, 0.0).train_loss);
    assert!(store
        .checkpoint(c.trial_id, CheckpointKind::Last)
        .await
        .unwrap()
        .is_none());

    store
        .finish(
            c.trial_id,
            "w",
            &Outcome::Done {
                test_error: Some(0.31),
                wall_s: 42.0,
            },
        )
        .await
        .unwrap();
    let row = &store.summary(None).await.unwrap()[0];
    assert_eq!(
        (row.status.as_str(), row.test_error, row.wall_s),
        ("done", Some(0.31), Some(42.0))
    );
    assert!(store
        .claim(&keys(&trials), "w", true, Duration::ZERO)
        .await
        .unwrap()
        .is_none());
}
}

on_both! {
async fn damaged_checkpoint_is_reported(db: TestDb) {
    let store = db.open().await;
    let trials = grid("e", 1);
    store.register("e", "", &trials).await.unwrap();
    let c = claim_one(&store, &keys(&trials), "w").await;
    let mut rec = record(100, 0.4);
    rec.best = Some((0.4, Checkpoint::new(CheckpointKind::Best, 100, vec![1; 10])));
    store.record(c.trial_id, "w", &rec).await.unwrap();
    each_pool!(&store.pool, |pool| {
        sqlx::query("UPDATE checkpoints SET bytes = $2 WHERE trial_id = $1")
            .bind(c.trial_id)
            .bind(vec![0u8])
            .execute(pool)
            .await
            .unwrap();
    });
    assert!(matches!(
        store.checkpoint(c.trial_id, CheckpointKind::Best).await,
        Err(Error::Store { .. })
    ));
}
}

on_both! {
async fn record_for_an_unknown_trial_is_an_error(db: TestDb) {
    let store = db.open().await;
    assert!(store.record(99, "w", &record(1, 0.5)).await.is_err());
    let mut rec = record(1, 0.5);
    rec.metrics.clear();
    assert!(store.record(99, "w", &rec).await.is_err());
    assert!(store.finish(99, "w", &Outcome::Interrupted).await.is_err());
}
}

on_both! {
async fn trial_by_id_or_key_prefix(db: TestDb) {
    let store = db.open().await;
    let trials = grid("e", 40);
    store.register("e", "", &trials).await.unwrap();
    let rows = store.summary(None).await.unwrap();

    let by_id = store.trial(&rows[3].trial.to_string()).await.unwrap();
    assert_eq!(by_id.key, trials[3].key);
    assert_eq!(by_id.config_json, trials[3].config_json);
    assert_eq!(by_id.ord, 3);
    assert_eq!(by_id.summary, rows[3]);

    let by_key = store.trial(&trials[5].key[..8].to_uppercase()).await.unwrap();
    assert_eq!(by_key.summary.trial, rows[5].trial);

    for bad in ["", "abc", "12ab", "not-hex!", "99999"] {
        assert!(matches!(store.trial(bad).await, Err(Error::Usage(_))), "{bad:?}");
    }
    assert!(matches!(store.trial("ffffffffffff0").await, Err(Error::Usage(_))));
}
}

on_both! {
async fn ambiguous_key_prefix_is_a_usage_error(db: TestDb) {
    let store = db.open().await;
    let mut a = trial("e", 0, "resnet", 20);
    let mut b = trial("e", 1, "resnet", 32);
    a.key = format!("abcdef0{}", &a.key[7..]);
    b.key = format!("abcdef1{}", &b.key[7..]);
    store.register("e", "", &[a.clone(), b]).await.unwrap();
    match store.trial("abcdef").await {
        Err(Error::Usage(m)) => assert!(m.contains("several"), "{m}"),
        other => panic!("expected an ambiguity error, got {other:?}"),
    }
    assert_eq!(store.trial("abcdef0").await.unwrap().key, a.key);
}
}

on_both! {
async fn a_database_from_a_newer_runner_is_refused(db: TestDb) {
    let store = db.open().await;
    mark_as_from_a_newer_runner(&store).await;
    store.close().await;

    match Store::open(db.location()).await {
        Err(e @ Error::Store { .. }) => assert!(e.to_string().contains("newer runner"), "{e}"),
        other => panic!("expected Error::Store, got {other:?}"),
    }
}
}

on_both! {
async fn a_key_registered_by_another_experiment_stays_there(db: TestDb) {
    let store = db.open().await;
    let shared = trial("first", 0, "resnet", 20);
    store
        .register("first", "", std::slice::from_ref(&shared))
        .await
        .unwrap();
    let mut moved = shared.clone();
    moved.ord = 7;
    store.register("second", "", &[moved]).await.unwrap();

    assert_eq!(
        store.experiments().await.unwrap(),
        vec!["first".to_string(), "second".to_string()]
    );
    assert_eq!(store.summary(Some("first")).await.unwrap().len(), 1);
    assert!(store.summary(Some("second")).await.unwrap().is_empty());
    assert_eq!(store.trial(&shared.key[..10]).await.unwrap().ord, 0);
}
}

on_both! {
async fn a_running_trial_without_heartbeats_reads_as_interrupted_in_the_summary(db: TestDb) {
    let store = db.open().await;
    let trials = grid("e", 2);
    let keys = keys(&trials);
    store.register("e", "", &trials).await.unwrap();
    let live = claim_one(&store, &keys, "here:1").await;
    let dead = claim_one(&store, &keys, "there:2").await;
    age_heartbeat(&store, dead.trial_id).await;

    let status = |rows: &[SummaryRow], id: i64| rows.iter().find(|r| r.trial == id).unwrap().status.clone();
    let rows = store.summary(None).await.unwrap();
    assert_eq!(status(&rows, live.trial_id), "running");
    assert_eq!(status(&rows, dead.trial_id), "interrupted");
    // The table keeps what runners claim on.
    let raw: String = each_pool!(&store.pool, |pool| sqlx::query_scalar("SELECT status FROM trials WHERE id = $1")
        .bind(dead.trial_id)
        .fetch_one(pool)
        .await
        .unwrap());
    assert_eq!(raw, "running");

    let running = store.running().await.unwrap();
    assert_eq!(running.len(), 2);
    let age = |id: i64| {
        running
            .iter()
            .find(|r| r.trial_id == id)
            .unwrap()
            .heartbeat_age_s
            .unwrap()
    };
    assert!(age(live.trial_id) < 60.0, "{running:?}");
    assert!(age(dead.trial_id) > 3000.0, "{running:?}");
    assert_eq!(
        running
            .iter()
            .find(|r| r.trial_id == dead.trial_id)
            .unwrap()
            .worker
            .as_deref(),
        Some("there:2")
    );
}
}

on_both! {
async fn the_dashboard_reads_counts_details_configs_curves_and_a_version_that_follows_writes(db: TestDb) {
    let store = db.open().await;
    let (e, f) = (grid("e", 3), grid("f", 1));
    store.register("e", "", &e).await.unwrap();
    store.register("f", "", &f).await.unwrap();
    let mut versions = vec![store.version().await.unwrap()];
    fn changed(versions: &mut Vec<String>, v: String) {
        assert!(!versions.contains(&v), "{v} was seen before: {versions:?}");
        versions.push(v);
    }

    let c = claim_one(&store, &keys(&e), "w").await;
    changed(&mut versions, store.version().await.unwrap());
    store.started(c.trial_id, "w", 500).await.unwrap();
    let mut rec = record(100, 0.5);
    rec.metrics.push(Metric {
        split: "train".into(),
        name: "error".into(),
        value: 0.6,
    });
    store.record(c.trial_id, "w", &rec).await.unwrap();
    changed(&mut versions, store.version().await.unwrap());
    store.record(c.trial_id, "w", &record(200, 0.4)).await.unwrap();
    changed(&mut versions, store.version().await.unwrap());
    assert_eq!(store.version().await.unwrap(), *versions.last().unwrap(), "no write, no change");

    let statuses = store.experiment_statuses().await.unwrap();
    let counts: Vec<(&str, i64, i64, i64)> = statuses
        .iter()
        .map(|s| (s.name.as_str(), s.trials, s.status["running"], s.status["pending"]))
        .collect();
    assert_eq!(counts, [("e", 3, 1, 2), ("f", 1, 0, 1)]);
    assert_eq!(statuses[0].status.len(), 5, "every status, zeros included");

    let details = store.details("e").await.unwrap();
    let seen: Vec<(i64, Option<i64>, Option<i64>)> = details
        .iter()
        .map(|d| (d.ord, d.summary.steps, d.total_steps))
        .collect();
    assert_eq!(seen, [(0, Some(200), Some(500)), (1, None, None), (2, None, None)]);
    assert_eq!(details[0].worker.as_deref(), Some("w"));
    assert!(store.details("nope").await.unwrap().is_empty());
    // Every configuration in one statement, as `report` reads them.
    let configs = store.configs(Some("e")).await.unwrap();
    let expected: BTreeMap<i64, String> = details.iter().map(|d| (d.summary.trial, d.config_json.clone())).collect();
    assert_eq!(configs, expected);
    assert_eq!(store.configs(None).await.unwrap().len(), 4);

    // Only the training and validation error, in step order; other metrics and trials are not read.
    let curves = store.error_curves(&[c.trial_id, 999]).await.unwrap();
    let rows: Vec<(i64, &str, f64)> = curves[&c.trial_id]
        .iter()
        .map(|m| (m.step, m.split.as_str(), m.value))
        .collect();
    assert_eq!(rows, [(100, "train", 0.6), (100, "val", 0.5), (200, "val", 0.4)]);
    assert_eq!(curves.len(), 1);

    // A runner that goes silent changes what the page shows (running → interrupted).
    age_heartbeat(&store, c.trial_id).await;
    changed(&mut versions, store.version().await.unwrap());
    assert_eq!(store.experiment_statuses().await.unwrap()[0].status["interrupted"], 1);
}
}

// ---- SQLite's own: the file, WAL, side files, its upgrade path ------------------------------

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

fn sqlite_pool(store: &Store) -> &SqlitePool {
    match &store.pool {
        Pool::Sqlite(pool) => pool,
        Pool::Postgres(_) => panic!("an SQLite store was expected"),
    }
}

#[tokio::test]
async fn open_sets_wal_foreign_keys_and_busy_timeout() {
    let (_dir, store) = fresh().await;
    let mut conn = sqlite_pool(&store).acquire().await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(fk, 1);
    assert_eq!(busy, sqlite::BUSY_TIMEOUT.as_millis() as i64);
}

#[tokio::test]
async fn trial_params_has_one_row_per_declared_parameter() {
    let (_dir, store) = fresh().await;
    let trials = [default_trial("e", 0, "resnet"), default_trial("e", 1, "plain")];
    store.register("e", "", &trials).await.unwrap();
    let ids: Vec<i64> = store.summary(None).await.unwrap().iter().map(|r| r.trial).collect();
    let rows: Vec<(String, i64, String, String, String, String)> = sqlx::query_as(
        "SELECT experiment, trial, arch, name, typeof(value), CAST(value AS TEXT) FROM trial_params ORDER BY trial, name",
    )
    .fetch_all(sqlite_pool(&store))
    .await
    .unwrap();
    for (id, arch) in ids.iter().zip(["resnet", "plain"]) {
        let of: Vec<_> = rows.iter().filter(|r| r.1 == *id).collect();
        let mut declared: Vec<&str> = crate::plugins::find(arch)
            .unwrap()
            .params()
            .iter()
            .map(|p| p.name)
            .collect();
        declared.sort();
        let names: Vec<&str> = of.iter().map(|r| r.3.as_str()).collect();
        assert_eq!(names, declared, "{arch}");
        assert!(of.iter().all(|r| r.0 == "e" && r.2 == arch), "{of:?}");
    }
    let value = |id: i64, name: &str| {
        let r = rows.iter().find(|r| r.1 == id && r.3 == name).unwrap();
        (r.4.as_str(), r.5.as_str())
    };
    assert_eq!(value(ids[0], "depth"), ("integer", "20"));
    assert_eq!(value(ids[0], "shortcut"), ("text", "A"));
    assert_eq!(value(ids[0], "preact"), ("integer", "0"), "booleans read as 1 and 0");
    assert_eq!(value(ids[1], "width"), ("integer", "16"));
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_a_store_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.db");
    std::fs::write(&path, "these are my notes, not a database\n".repeat(200)).unwrap();
    match Store::open(&path).await {
        Err(e @ Error::Store { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains("not an SQLite database"), "{text}");
        }
        other => panic!("expected Error::Store, got {other:?}"),
    }
}

#[tokio::test]
async fn open_existing_does_not_create_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    match Store::open_existing(&path).await {
        Err(e @ Error::Store { .. }) => assert!(e.to_string().contains("runner run GRID"), "{e}"),
        other => panic!("expected Error::Store, got {other:?}"),
    }
    assert!(!path.exists());

    Store::open(&path).await.unwrap().close().await;
    let store = Store::open_existing(&path).await.unwrap();
    assert_eq!(store.location(), &Location::Sqlite(path.clone()));
    assert!(store.summary(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_location_that_cannot_be_created_is_a_store_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("runs.db");
    assert!(matches!(Store::open(&path).await, Err(Error::Store { .. })));
}

#[tokio::test]
async fn after_close_the_main_file_alone_holds_the_results() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let store = Store::open(&path).await.unwrap();
    store.register("e", "", &grid("e", 3)).await.unwrap();
    store.close().await;

    // Only the main file travels; whatever stayed in runs.db-wal would be lost.
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("runs.db");
    std::fs::copy(&path, &copy).unwrap();
    let again = Store::open_existing(&copy).await.unwrap();
    assert_eq!(again.summary(None).await.unwrap().len(), 3);
}

#[tokio::test]
async fn opening_an_up_to_date_file_does_not_wait_for_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let writer = Store::open(&path).await.unwrap();
    writer.register("e", "", &grid("e", 2)).await.unwrap();
    // A batch in the middle of a write transaction.
    let mut tx = sqlite_pool(&writer).begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("UPDATE trials SET status = 'running'")
        .execute(&mut *tx)
        .await
        .unwrap();

    let reader = Store::open_existing(&path).await.unwrap();
    let rows = reader.summary(None).await.unwrap();
    assert!(rows.iter().all(|r| r.status == "pending"));
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn a_refused_database_is_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let store = Store::open(&path).await.unwrap();
    store.register("e", "", &grid("e", 2)).await.unwrap();
    mark_as_from_a_newer_runner(&store).await;
    store.close().await;
    let before = std::fs::read(&path).unwrap();

    assert!(matches!(Store::open(&path).await, Err(Error::Store { .. })));
    assert!(std::fs::read(&path).unwrap() == before, "the refused file changed");
    // Nothing else either; SQLite's side files may outlive a pool connection that sqlx, on a
    // loaded machine, has not finished closing (they go when the process exits).
    let left = files_in(dir.path());
    assert!(left.iter().all(|f| f.starts_with("runs.db")), "{left:?}");
}

/// The names in `dir`, sorted.
fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn close_leaves_every_write_in_the_main_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let store = Store::open(&path).await.unwrap();
    let trials = grid("e", 2);
    store.register("e", "", &trials).await.unwrap();
    // A connection on its way back to the pool as the store closes.
    let _ = store.claim(&keys(&trials), "w", false, HOUR).await.unwrap();
    store.close().await;
    // Usually SQLite removes its side files at the last close. When a pool connection is
    // still closing (a loaded machine), they stay until the process exits, but the WAL has
    // been checkpointed into the main file and truncated: runs.db alone holds every write.
    let left = files_in(dir.path());
    assert!(left.iter().all(|f| f.starts_with("runs.db")), "{left:?}");
    let wal = dir.path().join("runs.db-wal");
    if wal.exists() {
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0, "WAL not checkpointed");
    }
    let alone = tempfile::tempdir().unwrap();
    let copy = alone.path().join("runs.db");
    std::fs::copy(&path, &copy).unwrap();
    let reopened = Store::open(&copy).await.unwrap();
    let rows = reopened.summary(None).await.unwrap();
    reopened.close().await;
    let mut status: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    status.sort();
    assert_eq!(status, ["pending", "running"]);
}

/// A regression test: the first summary after migration 0003 failed with "no column found for
/// name: arch_params" when it ran on a pooled connection that had read the schema before the
/// migration (SQLite prepares against a connection's cached schema; sqlx takes the column names
/// from that first preparation).
#[tokio::test]
async fn a_store_of_the_0002_schema_reads_its_trials_right_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("migrations");
    std::fs::create_dir(&old).unwrap();
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for name in ["0001_initial.sql", "0002_stale_running_is_interrupted.sql"] {
        std::fs::copy(here.join(name), old.join(name)).unwrap();
    }
    let path = dir.path().join("runs.db");
    let options = SqliteConnectOptions::new().filename(&path).create_if_missing(true);
    let pool = SqlitePool::connect_with(options).await.unwrap();
    Migrator::new(old.as_path()).await.unwrap().run(&pool).await.unwrap();
    sqlx::query("INSERT INTO experiments (name, grid_toml) VALUES ('old', '')")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO trials (experiment_id, key, ord, arch, config_json, params, mflops) VALUES (1, ?1, 0, 'resnet', ?2, 1, 1.0)")
        .bind("ab".repeat(32))
        .bind(config("old", "resnet", 20, 1))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    for _ in 0..2 {
        let store = Store::open_existing(&path).await.unwrap();
        let rows = store.summary(None).await.unwrap();
        assert_eq!(rows[0].param("depth"), Some(&Value::Int(20)));
        assert_eq!(rows[0].param("shortcut"), Some(&Value::Str("B".into())));
        store.close().await;
    }
}

// ---- PostgreSQL's own: opening, and what goes wrong there ----------------------------------

/// The message of the store error that opening `url` gives.
async fn refusal(url: &str) -> String {
    match Store::open(Location::parse(url)).await {
        Err(e @ Error::Store { .. }) => e.to_string(),
        other => panic!("expected Error::Store for {url}, got {other:?}"),
    }
}

#[tokio::test]
#[cfg_attr(
    not(runner_test_pg),
    ignore = "PostgreSQL: set RUNNER_TEST_PG=postgres://… (scripts/pg-local.sh) and rebuild"
)]
async fn postgres_bad_locations_are_store_errors_that_name_the_url_without_its_password() {
    let db = PgTestDb::required().await;
    // Wrong password: named, masked.
    let url = db.url.clone();
    let (user, host) = url["postgres://".len()..].split_once('@').unwrap();
    let user = user.split(':').next().unwrap();
    let wrong = format!("postgres://{user}:not-the-password@{host}");
    let text = refusal(&wrong).await;
    assert!(text.contains(&format!("postgres://{user}:***@{host}")), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
    assert!(text.contains("password"), "{text}");

    // No such database.
    let missing = db.sibling("runner_no_such_database");
    let text = refusal(&missing).await;
    assert!(text.contains("does not exist") && text.contains("createdb"), "{text}");

    // Nothing listens there.
    let text = refusal("postgres://u:secret@127.0.0.1:9/db").await;
    assert!(
        text.contains("cannot be reached") && text.contains("u:***@127.0.0.1:9/db"),
        "{text}"
    );

    // Not a URL this runner can read.
    let text = refusal("postgres://u:secret@host:notaport/db").await;
    assert!(
        text.contains("not a PostgreSQL URL") && !text.contains("secret"),
        "{text}"
    );

    // None of it wrote anything.
    let store = Store::open(Location::parse(&db.url)).await.unwrap();
    assert!(store.summary(None).await.unwrap().is_empty());
}

#[tokio::test]
#[cfg_attr(
    not(runner_test_pg),
    ignore = "PostgreSQL: set RUNNER_TEST_PG=postgres://… (scripts/pg-local.sh) and rebuild"
)]
async fn postgres_open_existing_does_not_create_the_tables() {
    let db = PgTestDb::required().await;
    let location = Location::parse(&db.url);
    match Store::open_existing(location.clone()).await {
        Err(e @ Error::Store { .. }) => assert!(e.to_string().contains("runner run GRID"), "{e}"),
        other => panic!("expected Error::Store, got {other:?}"),
    }
    let store = Store::open(location.clone()).await.unwrap();
    let tables: i64 = each_pool!(&store.pool, |pool| {
        sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('experiments', 'trials', 'metrics', 'checkpoints')"
    )
    .fetch_one(pool)
    .await
    .unwrap()
    });
    assert_eq!(tables, 4);
    store.close().await;
    assert!(Store::open_existing(location)
        .await
        .unwrap()
        .summary(None)
        .await
        .unwrap()
        .is_empty());
}

#[test]
fn a_location_is_a_postgres_url_or_a_path_and_shows_no_password() {
    let l = Location::parse("postgres://me:s3cret@db.example.org:5433/runs?password=x&sslmode=require");
    assert!(matches!(l, Location::Postgres(_)));
    assert_eq!(
        l.to_string(),
        "postgres://me:***@db.example.org:5433/runs?password=***&sslmode=require"
    );
    assert!(!format!("{l:?}").contains("s3cret"));
    assert!(matches!(Location::parse("postgresql://h/db"), Location::Postgres(_)));
    assert_eq!(Location::parse("sqlite://runs.db"), Location::Sqlite("runs.db".into()));
    assert_eq!(
        Location::parse("results/runs.db"),
        Location::Sqlite("results/runs.db".into())
    );
    assert_eq!(Location::parse("postgres://me@h/db").to_string(), "postgres://me@h/db");
}
