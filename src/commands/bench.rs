//! `runner bench`: the yardstick for every speed change. Times full training steps (forward,
//! loss, backward, SGD) and evaluation batches of one model on random CIFAR-shaped data, after
//! a warm-up, and prints the medians.
//!
//! Compare two builds or two settings in the same session, alternating, on the same machine:
//! the numbers of one run alone say little on a shared host.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use candle_core::Tensor;

use super::run::parse_device;
use crate::arch::{self, Architecture, InputShape, Params, Value};
use crate::cli::{BenchArgs, BenchOp};
use crate::nn::bench::{conv, median};
use crate::nn::ParamStore;
use crate::rng::Rng;
use crate::train::config::OptimizerConfig;
use crate::train::optim::Sgd;
use crate::{plugins, Error};

const CLASSES: usize = 10;
/// Bytes in a MiB, for the memory figures.
const MIB: f64 = (1u64 << 20) as f64;

pub fn bench(args: &BenchArgs) -> Result<i32> {
    let process = crate::memory::resident_bytes().unwrap_or(0) as f64;
    if args.steps == 0 || args.batch == 0 {
        return Err(Error::Usage("--steps and --batch must be at least 1".into()).into());
    }
    let device = parse_device(&args.device)?;
    match args.op {
        BenchOp::Model => {}
        BenchOp::Conv if !device.is_cpu() => {
            print!("{}", crate::nn::bench::device::conv_report(&device, args.batch)?);
            return Ok(0);
        }
        BenchOp::ConvThreads | BenchOp::ConvTune | BenchOp::ConvPhases if !device.is_cpu() => {
            return Err(Error::Usage(
                "--op conv-threads, conv-tune and conv-phases time the CPU kernels: use --device cpu".into(),
            )
            .into())
        }
        BenchOp::Conv | BenchOp::ConvThreads | BenchOp::ConvTune | BenchOp::ConvPhases => {
            let (batch, only) = (args.batch, args.shapes.as_str());
            let table = match args.op {
                BenchOp::ConvThreads => conv::threads_report(batch, only)?,
                BenchOp::ConvTune => conv::tune_report(batch, only)?,
                BenchOp::ConvPhases => conv::phases_report(batch, only)?,
                _ => conv::report(batch, only)?,
            };
            print!("{table}");
            return Ok(0);
        }
        BenchOp::Batchnorm => {
            print!("{}", crate::nn::bench::device::batchnorm_report(&device, args.batch)?);
            return Ok(0);
        }
        BenchOp::Residual => {
            print!("{}", crate::nn::bench::residual::report(&device, args.batch)?);
            return Ok(0);
        }
        BenchOp::Claims => return claims(args),
        BenchOp::Serve => return crate::serve::bench(args, args.trials.unwrap_or(200)),
    }
    let a = plugins::find(&args.arch).ok_or_else(|| {
        Error::Usage(format!(
            "unknown architecture `{}`: choose one of {}",
            args.arch,
            plugins::names().join(", ")
        ))
    })?;
    if args.scaling {
        return scaling(a, args);
    }
    let params = model_params(a, args.depth, &args.params)?;
    let shape = InputShape::CIFAR;
    let cost = arch::cost(a, &params, shape, CLASSES)?;
    // no data set: one batch, counted as the input
    let estimate = crate::memory::Estimate::new(&cost, shape, args.batch, 0, process);

    let store = ParamStore::new(1);
    let model = a.build(&params, shape, CLASSES, store.var_builder(&device))?;
    let mut sgd = Sgd::new(store.trainable(), &OptimizerConfig::default());
    let mut rng = Rng::new(7);
    let n = args.batch * shape.channels * shape.height * shape.width;
    let x = Tensor::from_vec(
        (0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(),
        (args.batch, shape.channels, shape.height, shape.width),
        &device,
    )?;
    let y = Tensor::from_vec(
        (0..args.batch)
            .map(|_| rng.below(CLASSES as u64) as u32)
            .collect::<Vec<_>>(),
        args.batch,
        &device,
    )?;

    let train_step = |sgd: &mut Sgd| -> Result<()> {
        let logits = model.forward_t(&x, true)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let grads = loss.backward()?;
        sgd.step(&grads, 0.01)?;
        // Reading the loss waits for the device, so the time covers the whole step.
        loss.to_scalar::<f32>()?;
        Ok(())
    };
    let eval_step = || -> Result<()> {
        model.forward_t(&x, false)?.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    };
    if !args.json {
        eprintln!(
            "{} {} ({} parameters, {:.1} MFLOPs/image), batch {}, {} threads, {} warm-up + {} timed steps",
            a.name(),
            params
                .0
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            cost.params,
            cost.mflops,
            args.batch,
            candle_core::utils::get_num_threads(),
            args.warmup,
            args.steps
        );
    }
    // Variants timed in turn, step by step, so a busy host slows them alike: ours, and with
    // --compare the same model on Candle's own ops.
    let variants: &[bool] = if args.compare { &[false, true] } else { &[false] };
    let mut train_s = alternate(variants, args.warmup, args.steps, || {
        train_step(&mut sgd).context("training step")
    })?;
    let mut eval_s = alternate(variants, args.warmup, args.steps, || {
        eval_step().context("evaluation batch")
    })?;
    let step = median(&mut train_s[0]);
    let eval = median(&mut eval_s[0]);
    let reference = args.compare.then(|| (median(&mut train_s[1]), median(&mut eval_s[1])));
    let b = args.batch as f64;
    let rss = peak_rss_mib();
    let gpu = crate::nn::device_memory_peak(&device).map(|b| b as f64 / (1 << 20) as f64);
    if args.json {
        let mut line = serde_json::json!({
            "arch": a.name(),
            "params": params,
            "trainable": cost.params,
            "mflops": cost.mflops,
            "batch": args.batch,
            "threads": candle_core::utils::get_num_threads(),
            "device": args.device,
            "steps": args.steps,
            "train_step_ms": step * 1e3,
            "train_images_per_s": b / step,
            "eval_batch_ms": eval * 1e3,
            "eval_images_per_s": b / eval,
            "peak_rss_mib": rss,
            "estimated_peak_mib": estimate.total() / MIB,
            "peak_gpu_mib": gpu,
            "cpu": cpu_model(),
        });
        if let Some((rs, re)) = reference {
            line["candle_ops_train_images_per_s"] = (b / rs).into();
            line["candle_ops_eval_images_per_s"] = (b / re).into();
        }
        println!("{line}");
    } else {
        println!(
            "training   {:>8.1} images/s   step {:>8.1} ms (median of {})",
            b / step,
            step * 1e3,
            args.steps
        );
        println!("evaluation {:>8.1} images/s  batch {:>8.1} ms", b / eval, eval * 1e3);
        if let Some((rs, re)) = reference {
            println!(
                "with Candle's own ops, alternating: training {:.1} images/s, evaluation {:.1} images/s; ours is {:.2}× / {:.2}×",
                b / rs,
                b / re,
                rs / step,
                re / eval
            );
        }
        if let Some(r) = rss {
            println!(
                "peak resident memory {r:.0} MiB (estimated before the model was built: {:.0} MiB)",
                estimate.total() / MIB
            );
        }
        if let Some(g) = gpu {
            println!("peak GPU memory {g:.0} MiB (the device's allocation pool)");
        }
        if let Some(c) = cpu_model() {
            println!("cpu: {c}");
        }
    }
    Ok(0)
}

/// `--scaling`: every depth × batch timed by a `runner bench --json` child of its own (a
/// process's peak memory is a high-water mark, so one process could not measure several),
/// then one table.
fn scaling(a: &dyn Architecture, args: &BenchArgs) -> Result<i32> {
    if args.depths.is_empty() || args.batches.is_empty() || args.batches.contains(&0) {
        return Err(Error::Usage("--depths and --batches need at least one value each, batches ≥ 1".into()).into());
    }
    // every model checked before the first is timed
    for &d in &args.depths {
        model_params(a, Some(d), &args.params).map_err(|e| match e {
            Error::Usage(m) => Error::Usage(format!("--depths {d}: {}", m.trim_start_matches("--depth: "))),
            other => other,
        })?;
    }
    let exe = std::env::current_exe().context("finding the runner binary to time each size in")?;
    let mut cells = Vec::new();
    for &depth in &args.depths {
        for &batch in &args.batches {
            eprintln!("{}-{depth}, batch {batch} …", a.name());
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["bench", "--arch", a.name(), "--json", "--device", &args.device]);
            cmd.args(["--depth", &depth.to_string(), "--batch", &batch.to_string()]);
            cmd.args(["--steps", &args.steps.to_string(), "--warmup", &args.warmup.to_string()]);
            if let Some(t) = args.threads {
                cmd.args(["--threads", &t.to_string()]);
            }
            for p in &args.params {
                cmd.args(["--param", p]);
            }
            let out = cmd.output().context("running a bench child")?;
            if !out.status.success() {
                anyhow::bail!(
                    "{}-{depth} at batch {batch} failed: {}",
                    a.name(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let line: serde_json::Value =
                serde_json::from_slice(&out.stdout).context("reading a bench child's JSON line")?;
            let field = |k: &str| line[k].as_f64();
            let cell = ScalingCell {
                depth,
                batch,
                train_images_per_s: field("train_images_per_s").unwrap_or(f64::NAN),
                peak_rss_mib: field("peak_rss_mib"),
                estimated_mib: field("estimated_peak_mib"),
            };
            if args.json {
                println!("{line}");
            }
            cells.push(cell);
        }
    }
    if !args.json {
        print!("{}", scaling_table(a.name(), &args.depths, &args.batches, &cells));
        if let Some(c) = cpu_model() {
            println!("cpu: {c}");
        }
    }
    Ok(0)
}

/// One size of `--scaling`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ScalingCell {
    pub depth: i64,
    pub batch: usize,
    pub train_images_per_s: f64,
    pub peak_rss_mib: Option<f64>,
    /// The memory estimate of the same size (`runner run --dry-run`'s).
    pub estimated_mib: Option<f64>,
}

/// Depths down, batches across, each cell `images/s (MiB/estimated MiB)`.
pub(super) fn scaling_table(arch: &str, depths: &[i64], batches: &[usize], cells: &[ScalingCell]) -> String {
    let mut out = format!("{arch}: training images/s (peak resident MiB/estimated MiB)\n");
    out.push_str(&format!("{:>6}", "depth"));
    for b in batches {
        out.push_str(&format!("{:>22}", format!("batch {b}")));
    }
    out.push('\n');
    for &d in depths {
        out.push_str(&format!("{d:>6}"));
        for &b in batches {
            let text = match cells.iter().find(|c| c.depth == d && c.batch == b) {
                Some(c) => match (c.peak_rss_mib, c.estimated_mib) {
                    (Some(m), Some(e)) => format!("{:.1} ({m:.0}/{e:.0})", c.train_images_per_s),
                    (Some(m), None) => format!("{:.1} ({m:.0})", c.train_images_per_s),
                    _ => format!("{:.1}", c.train_images_per_s),
                },
                None => "-".to_string(),
            };
            out.push_str(&format!("{text:>22}"));
        }
        out.push('\n');
    }
    out
}

/// The parameters of the model to time: `--param NAME=VALUE` each read as the type `arch`
/// declares for NAME, `--depth N` as `--param depth=N`, defaults for the rest, all checked by
/// [`arch::resolve`]. A usage error (exit 2) names the parameter and the values it takes.
pub(super) fn model_params(arch: &dyn Architecture, depth: Option<i64>, given: &[String]) -> Result<Params, Error> {
    let specs = arch.params();
    let known = || {
        if specs.is_empty() {
            format!("`{}` has no parameters", arch.name())
        } else {
            format!(
                "the parameters of `{}` are: {} (`runner list archs`)",
                arch.name(),
                specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
            )
        }
    };
    let mut values = BTreeMap::new();
    for item in given {
        let Some((name, text)) = item.split_once('=') else {
            return Err(Error::Usage(format!(
                "--param `{item}`: expected NAME=VALUE, e.g. --param depth=20; {}",
                known()
            )));
        };
        let name = name.trim();
        let Some(spec) = specs.iter().find(|s| s.name == name) else {
            return Err(Error::Usage(format!(
                "--param {item}: `{}` has no parameter `{name}`; {}",
                arch.name(),
                known()
            )));
        };
        let v = spec
            .parse(text)
            .map_err(|m| Error::Usage(format!("--param {item}: {m}")))?;
        if values.insert(name.to_string(), v).is_some() {
            return Err(Error::Usage(format!("--param {name}=… is given twice: give it once")));
        }
    }
    if let Some(d) = depth {
        if !specs.iter().any(|s| s.name == "depth") {
            return Err(Error::Usage(format!(
                "--depth {d}: `{}` has no parameter `depth`; {}; set them with --param NAME=VALUE",
                arch.name(),
                known()
            )));
        }
        if values.contains_key("depth") {
            return Err(Error::Usage(format!(
                "--depth {d} and --param depth=… both set the depth: give one"
            )));
        }
        values.insert("depth".to_string(), Value::Int(d));
    }
    arch::resolve(arch, &values).map_err(|e| {
        let flag = if e.param == "depth" && depth.is_some() {
            "--depth".to_string()
        } else {
            format!("--param {}", e.param)
        };
        Error::Usage(format!("{flag}: {}", e.message))
    })
}

/// Seconds per call of `f` for each variant (false: our ops, true: Candle's own), the
/// variants taking turns call by call (see [`crate::nn::bench::alternate`]); the first
/// `warmup` rounds are not kept.
fn alternate(
    variants: &[bool],
    warmup: usize,
    steps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<Vec<f64>>> {
    let times = crate::nn::bench::alternate(
        variants.len(),
        warmup,
        steps,
        |v| {
            crate::nn::use_reference_ops(variants[v]);
            Ok(())
        },
        |_| f(),
    );
    crate::nn::use_reference_ops(false);
    times
}

/// The process's peak resident set (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// `--op claims`: registers `--trials` empty trials under a throw-away experiment, lets
/// `--workers` stores (a connection pool each, as separate processes would have) claim them
/// all at once, and prints claims per second and how many trials were claimed more than once
/// (there must be none). The experiment is deleted afterwards, whatever happened.
fn claims(args: &BenchArgs) -> Result<i32> {
    use crate::store::{NewTrial, Store};
    use sha2::{Digest, Sha256};

    let Some(db) = &args.db else {
        return Err(Error::Usage(
            "--op claims needs --db (or RUNNER_DB): a scratch store, e.g. postgres://USER@HOST/scratch".into(),
        )
        .into());
    };
    let experiment = format!("bench-claims-{}", std::process::id());
    let count = args.trials.unwrap_or(1000);
    let trials: Vec<NewTrial> = (0..i64::from(count))
        .map(|i| {
            let config_json = serde_json::json!({"experiment": experiment, "arch": "none", "trial": i}).to_string();
            NewTrial {
                key: hex::encode(Sha256::digest(config_json.as_bytes())),
                arch: "none".into(),
                config_json,
                params: 0,
                mflops: 0.0,
                ord: i,
            }
        })
        .collect();
    let keys: Vec<String> = trials.iter().map(|t| t.key.clone()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let store = Store::open(db).await?;
        store.register(&experiment, "", &trials).await?;
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for w in 0..args.workers {
            let (db, keys) = (db.clone(), keys.clone());
            tasks.push(tokio::spawn(async move {
                let store = Store::open(db).await?;
                let worker = format!("bench:{w}");
                let mut mine = Vec::new();
                while let Some(c) = store
                    .claim(&keys, &worker, false, std::time::Duration::from_secs(3600))
                    .await?
                {
                    mine.push(c.trial_id);
                }
                store.close().await;
                Ok::<_, Error>(mine)
            }));
        }
        let mut claimed = Vec::new();
        let mut failure = None;
        for t in tasks {
            match t.await {
                Ok(Ok(mine)) => claimed.extend(mine),
                Ok(Err(e)) => failure = Some(e),
                Err(e) => failure = Some(Error::Usage(format!("a claiming worker panicked: {e}"))),
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        store.delete_experiment(&experiment).await?;
        store.close().await;
        if let Some(e) = failure {
            return Err(e.into());
        }
        let distinct: std::collections::HashSet<i64> = claimed.iter().copied().collect();
        let twice = claimed.len() - distinct.len();
        println!(
            "claims on {db}: {} workers, {} trials: {} claims in {seconds:.2} s = {:.0} claims/s; \
             claimed twice: {twice}; never claimed: {}",
            args.workers,
            count,
            claimed.len(),
            claimed.len() as f64 / seconds,
            trials.len() - distinct.len()
        );
        Ok(if twice == 0 && distinct.len() == trials.len() {
            0
        } else {
            1
        })
    })
}
