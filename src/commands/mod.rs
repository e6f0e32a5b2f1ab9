//! What each command does, from parsed arguments to printed output and an exit code.

use std::io::Write;

use anyhow::Result;

use crate::arch::{ParamKind, Value};
use crate::cli::{Cli, Command, DataCommand, DbCommand, FetchArgs, ListWhat, RunArgs};
use crate::{data, grid, memory, plugins, report};

mod bench;
mod plan;
mod progress;
mod results;
mod run;

#[cfg(test)]
mod tests;

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    keep_freed_memory();
    short_idle_spin();
    match cli.command {
        Command::List(l) => match l.what {
            ListWhat::Archs => {
                print!("{}", list_archs());
                Ok(0)
            }
        },
        Command::Run(args) if args.dry_run => dry_run(&args),
        Command::Run(args) => {
            set_threads(args.threads)?;
            run::run(&args)
        }
        Command::Report(args) => results::report(&args),
        Command::Show(args) => results::show(&args),
        Command::Export(args) => results::export(&args),
        Command::Db(DbCommand::Copy(args)) => results::copy(&args),
        Command::Data(DataCommand::Fetch(args)) => fetch(&args),
        Command::Serve(args) => crate::serve::serve(&args),
        Command::Bench(args) => {
            set_threads(args.threads)?;
            bench::bench(&args)
        }
    }
}

/// `--threads N`: the thread count of Candle's CPU kernels and of our own (rayon). Called
/// before any worker thread exists, which is when changing the environment is sound.
fn set_threads(threads: Option<usize>) -> Result<()> {
    let Some(n) = threads else { return Ok(()) };
    if n == 0 {
        return Err(crate::Error::Usage("--threads must be at least 1".into()).into());
    }
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    // An error here means a pool already exists (a library user set one up); theirs stands.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    Ok(())
}

/// Candle's element-wise ops run on their own thread pool, whose threads spin 25,000 times
/// after each op before they sleep: on a 2-core machine that spin took ~4% of a training
/// step's samples and the cores from our convolution threads, which start right after. A
/// short spin keeps the hand-off quick without that. Called before any thread exists (when
/// changing the environment is sound); a value the user set stands.
fn short_idle_spin() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        std::env::set_var(VAR, "1000");
    }
}

/// A training step frees and reallocates the same large activation buffers every time. By
/// default glibc hands freed blocks above its mmap/trim thresholds back to the kernel, and the
/// next step faults in fresh zeroed pages: ~820k page faults in a 7-step ResNet-20 bench, ~15%
/// of its CPU time. Keeping freed memory in the heap cuts that tenfold at no cost in peak size.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any worker thread exists.
    unsafe {
        // 32 MiB is the largest threshold glibc accepts on 64-bit; larger blocks stay mmapped.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// `runner list archs`: every plugin, its summary, and its parameters with allowed values.
pub fn list_archs() -> String {
    let mut s = String::new();
    for a in plugins::ALL {
        s.push_str(&format!("{}\n    {}\n", a.name(), a.summary()));
        for p in a.params() {
            let allowed = match p.kind {
                ParamKind::Choice(_) | ParamKind::Bool => format!("[{}]", p.allowed()),
                ParamKind::Int { .. } | ParamKind::Float { .. } => format!("({})", p.allowed()),
            };
            s.push_str(&format!(
                "    {:<10} default {:<6} {}\n    {:<10} {}\n",
                p.name,
                p.default.value().to_string(),
                allowed,
                "",
                p.doc
            ));
        }
        s.push('\n');
    }
    s
}

/// `runner data fetch`: the data set in place, or the reason it is not.
fn fetch(args: &FetchArgs) -> Result<i32> {
    use data::fetch::{self, Fetched, Options};
    let source = fetch::source(&args.dataset)?;
    let opts = Options {
        from: args.from.clone(),
        url: args.url.clone(),
        sha256: args.sha256.clone(),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    match fetch::fetch(source, &args.dir, &opts)? {
        Fetched::Present(folder) => println!(
            "{} is already in {} (complete, fetched before): nothing to do",
            source.name(),
            folder.display()
        ),
        Fetched::Unchecked(folder) => println!(
            "{} has the files of {} (not from `runner data fetch`, so not checked against the published \
             checksums): nothing to do",
            folder.display(),
            source.name()
        ),
        Fetched::Written { folder, bytes } => println!(
            "{} in {} ({:.1} MiB fetched, checksums checked)",
            source.name(),
            folder.display(),
            bytes as f64 / (1u64 << 20) as f64
        ),
    }
    Ok(0)
}

/// `runner run GRID --dry-run`: validate everything and print the plan.
fn dry_run(args: &RunArgs) -> Result<i32> {
    let process = memory::resident_bytes().unwrap_or(0) as f64;
    let g = grid::load(&args.grid)?;
    let base = run::grid_dir(&g.path);
    // A plan is useful before the data is downloaded: say what is missing, plan with the
    // size the kind always has, and leave the hard error to `runner run`.
    let size = match data::check(&g.trials[0].dataset, &base) {
        Ok(found) => found,
        Err(e @ crate::Error::Data { .. }) => match data::nominal_size(&g.trials[0].dataset) {
            Some(nominal) => {
                eprintln!("warning: {e}\nwarning: planning with the usual size of this data set; `runner run` needs the files");
                nominal
            }
            None => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    let planned = plan::plan(&g, size, process)?;
    let limit = memory::Limit::of_this_process();
    let mut out = std::io::stdout().lock();
    // The architectures' parameters between `arch` and the fixed columns, as `runner report`
    // puts them.
    const FIXED: [&str; 6] = ["arch", "seed", "params", "mflops", "memory", "key"];
    let params = report::param_columns(g.trials.iter().map(|t| (t.arch.name(), &t.params)), plugins::ALL);
    // Then the `train.*` settings the grid gives, in the order they first appear.
    let mut settings: Vec<&str> = Vec::new();
    for (name, _) in g.trials.iter().flat_map(|t| &t.settings) {
        if !settings.contains(&name.as_str()) {
            settings.push(name);
        }
    }
    let get = |t: &'_ grid::TrialSpec, name: &str| -> Option<Value> {
        match grid::is_setting(name) {
            true => t.settings.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
            false => t.params.get(name).cloned(),
        }
    };
    let value = |t: &grid::TrialSpec, name: &str| get(t, name).map(|v| v.to_string()).unwrap_or_default();
    let names: Vec<(String, &str)> = params
        .iter()
        .map(|n| (report::param_title(n, &FIXED), n.as_str()))
        .chain(settings.iter().map(|n| (n.to_string(), *n)))
        .collect();
    // (column, width in the table; negative = left-aligned): parameters and settings as wide
    // as their widest value, numbers right-aligned.
    let mut cols: Vec<(String, i32)> = vec![("arch".to_string(), -7)];
    for (title, name) in &names {
        let width = g
            .trials
            .iter()
            .map(|t| value(t, name).chars().count())
            .chain([title.chars().count()])
            .max()
            .unwrap_or(0) as i32;
        let numeric = g.trials.iter().filter_map(|t| get(t, name)).all(|v| v.is_number());
        cols.push((title.clone(), if numeric { width } else { -width }));
    }
    cols.extend(
        [("seed", 4), ("params", 11), ("mflops", 8), ("memory", 9), ("key", -12)].map(|(c, w)| (c.to_string(), w)),
    );
    let line = |cells: &[String]| -> String {
        if args.csv {
            return cells.iter().map(|c| report::csv_field(c)).collect::<Vec<_>>().join(",");
        }
        let padded: Vec<String> = cells
            .iter()
            .zip(&cols)
            .map(|(c, (_, w))| {
                if *w < 0 {
                    format!("{c:<0$}", w.unsigned_abs() as usize)
                } else {
                    format!("{c:>0$}", *w as usize)
                }
            })
            .collect();
        padded.join(" ").trim_end().to_string()
    };
    if !args.csv {
        writeln!(
            out,
            "experiment {}: {} trials on {} images, {} classes",
            g.name,
            g.trials.len(),
            size.shape,
            size.classes
        )?;
    }
    let titles: Vec<String> = cols.iter().map(|(c, _)| c.clone()).collect();
    writeln!(out, "{}", line(&titles))?;
    let mut over = 0;
    for (t, p) in g.trials.iter().zip(&planned) {
        let fits = limit
            .as_ref()
            .is_none_or(|l| plan::refusal(&g, t, &p.memory, l, 0.0).is_none());
        over += usize::from(!fits);
        let mut cells = vec![t.arch.name().to_string()];
        cells.extend(names.iter().map(|(_, name)| value(t, name)));
        cells.extend([
            t.train.seed.to_string(),
            p.cost.params.to_string(),
            format!("{:.2}", p.cost.mflops),
            match args.csv {
                true => format!("{:.0}", p.memory.total() / (1u64 << 20) as f64),
                false => format!("{}{}", memory::human(p.memory.total()), if fits { "" } else { "!" }),
            },
            t.key[..12].to_string(),
        ]);
        writeln!(out, "{}", line(&cells))?;
    }
    if let (Some(l), false) = (&limit, args.csv) {
        writeln!(
            out,
            "memory: each trial's estimated peak (weights, activations at its batch size, data, this process); {}",
            match over {
                0 => format!("all fit the {} this process may use ({})", memory::human(l.bytes as f64), l.source),
                n => format!(
                    "{n} marked ! need more than the {} this process may use ({}): `runner run` refuses them unless given --ignore-memory-limit",
                    memory::human(l.bytes as f64),
                    l.source
                ),
            }
        )?;
    }
    Ok(0)
}
