//! `runner bench --op serve`: how fast the dashboard answers on a big store. Fills a throw-away
//! SQLite store the way runners do (claims, one record per evaluation, finishes) with
//! `--trials` trials of `--rows` metric rows each, serves it on a free port of 127.0.0.1, and
//! times every page and API route, the routes taking turns round by round.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::{router, App};
use crate::cli::BenchArgs;
use crate::store::{Checkpoint, CheckpointKind, Metric, NewTrial, Outcome, Record, Store};
use crate::Error;

/// Values per evaluation, as the trainer records them: train loss, error and learning rate,
/// validation loss and error.
const PER_EVALUATION: usize = 5;
const EXPERIMENT: &str = "bench-serve";

pub fn bench(args: &BenchArgs, trials: u32) -> Result<i32> {
    if args.rows < PER_EVALUATION as u32 {
        return Err(Error::Usage(format!("--rows must be at least {PER_EVALUATION} (one evaluation)")).into());
    }
    let dir = std::env::temp_dir().join(format!("runner-bench-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run(args, trials, &dir.join("runs.db"));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(args: &BenchArgs, trials: u32, db: &std::path::Path) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let evaluations = args.rows as usize / PER_EVALUATION;
    let started = Instant::now();
    let (store, ids) = rt.block_on(fill(db, trials, evaluations))?;
    let fill_s = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(db.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    eprintln!(
        "store: {trials} trials × {} metric rows ({:.0} MiB), filled in {fill_s:.1} s",
        evaluations * PER_EVALUATION,
        size as f64 / (1 << 20) as f64
    );

    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = Arc::new(App::new(store.clone()));
    rt.spawn(async move { axum::serve(listener, router(app)).await });

    let (a, b) = (ids[0], ids[ids.len() / 2]);
    let routes = [
        "/".to_string(),
        format!("/experiments/{EXPERIMENT}"),
        "/api/version".into(),
        "/api/experiments".into(),
        format!("/api/experiments/{EXPERIMENT}/trials"),
        format!("/api/experiments/{EXPERIMENT}/charts"),
        format!("/api/trials/{a}"),
        format!("/api/trials/{a}/metrics"),
        format!("/api/compare?trials={a},{b}"),
    ];
    let agent = ureq::AgentBuilder::new().build();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); routes.len()];
    let mut first = vec![0.0; routes.len()];
    let mut bytes = vec![0usize; routes.len()];
    for round in 0..args.warmup + args.steps {
        // Each round starts at another route, so none is always timed first.
        for k in 0..routes.len() {
            let i = (k + round) % routes.len();
            let t = Instant::now();
            let body = agent
                .get(&format!("{base}{}", routes[i]))
                .call()
                .with_context(|| format!("GET {}", routes[i]))?
                .into_string()?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if round == 0 {
                first[i] = ms;
            }
            if round >= args.warmup {
                times[i].push(ms);
            }
            bytes[i] = body.len();
        }
    }
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "route", "first ms", "median ms", "p90 ms", "max ms", "KiB"
    );
    for (i, route) in routes.iter().enumerate() {
        let mut t = times[i].clone();
        t.sort_by(f64::total_cmp);
        let at = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize];
        println!(
            "{:<36} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            route,
            first[i],
            at(0.5),
            at(0.9),
            at(1.0),
            bytes[i] as f64 / 1024.0
        );
    }
    println!(
        "({} rounds after {} warm-up; {} trials × {} metric rows; HTTP/1.1 on 127.0.0.1, one client)",
        args.steps,
        args.warmup,
        trials,
        evaluations * PER_EVALUATION
    );
    rt.block_on(store.close());
    Ok(0)
}

/// A store with one experiment of `trials` trials (ResNets of five depths, seeds, a tenth
/// running, a twentieth failed, the rest done), each with `evaluations` records.
async fn fill(db: &std::path::Path, trials: u32, evaluations: usize) -> Result<(Store, Vec<i64>)> {
    let store = Store::open(db).await?;
    let depths = [20, 32, 44, 56, 110];
    let new: Vec<NewTrial> = (0..i64::from(trials))
        .map(|i| {
            let depth = depths[i as usize % depths.len()];
            let config_json = serde_json::json!({
                "arch": "resnet",
                "dataset": {"kind": "cifar10", "train": 45000, "validation": 5000, "test": 10000},
                "experiment": EXPERIMENT,
                "params": {"block": "basic", "depth": depth, "preact": false, "shortcut": "A", "width": 16},
                "seed": i / depths.len() as i64,
                "train": {"batch_size": 128, "iterations": 64000, "optimizer": {"kind": "sgd", "lr": 0.1}},
            })
            .to_string();
            NewTrial {
                key: hex::encode(Sha256::digest(config_json.as_bytes())),
                arch: "resnet".into(),
                config_json,
                params: 270_000 * depth / 20,
                mflops: 41.0 * depth as f64 / 20.0,
                ord: i,
            }
        })
        .collect();
    let keys: Vec<String> = new.iter().map(|t| t.key.clone()).collect();
    store.register(EXPERIMENT, "", &new).await?;
    let worker = "bench:1";
    let total = 64_000i64;
    let every = total / evaluations as i64;
    let best = Checkpoint::new(CheckpointKind::Best, 0, vec![0; 64]);
    let mut ids = Vec::new();
    let mut n = 0;
    while let Some(claim) = store
        .claim(&keys, worker, false, std::time::Duration::from_secs(3600))
        .await?
    {
        let id = claim.trial_id;
        ids.push(id);
        store.started(id, worker, total).await?;
        let running = n % 10 == 9;
        let recorded = if running { evaluations / 2 } else { evaluations };
        for e in 1..=recorded {
            let step = e as i64 * every;
            let x = step as f64 / total as f64;
            let error = 0.08 + 0.8 * (-5.0 * x).exp() + 0.01 * ((e * 7 + n) % 5) as f64;
            let metric = |split: &str, name: &str, value: f64| Metric {
                split: split.into(),
                name: name.into(),
                value,
            };
            store
                .record(
                    id,
                    worker,
                    &Record {
                        step,
                        epoch: step as f64 / 352.0,
                        metrics: vec![
                            metric("train", "loss", error * 3.0),
                            metric("train", "error", error - 0.03),
                            metric("train", "lr", 0.1),
                            metric("val", "loss", error * 3.2),
                            metric("val", "error", error),
                        ],
                        best: (e == recorded).then(|| (error, best.clone())),
                        last: None,
                        train_loss: Some(error * 3.0),
                        images_per_s: Some(2000.0),
                        wall_s: step as f64 / 15.0,
                    },
                )
                .await?;
        }
        if !running {
            let outcome = if n % 20 == 18 {
                Outcome::Failed {
                    error: "diverged at step 1201 (loss = NaN)".into(),
                    wall_s: 80.0,
                }
            } else {
                Outcome::Done {
                    test_error: Some(0.08),
                    wall_s: total as f64 / 15.0,
                }
            };
            store.finish(id, worker, &outcome).await?;
        }
        n += 1;
    }
    Ok((store, ids))
}
