//! The command line: what each command takes, with help that teaches. Parsing only; the work
//! is done by the library functions these map to.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::store::Location;

/// `--db`, the same for every command.
const DB_HELP: &str = "The results store: an SQLite file, or a PostgreSQL database that runners on \
many hosts share (postgres://USER:PASSWORD@HOST:PORT/DATABASE)";

#[derive(Debug, Parser)]
#[command(
    name = "runner",
    version,
    about = "Train convolutional networks in batch experiments and compare them from one SQLite file",
    long_about = "runner expands a TOML grid of architectures and settings into trials, trains every \
trial (on the CPU, or a GPU with the `cuda` build), and records configurations, metrics and \
checkpoints in one SQLite file (runs.db) that `runner report` and plain SQL read.",
    after_help = "Examples:\n  runner run experiments/quick.toml        train the embedded default grid\n  \
runner run experiments/depth.toml --dry-run   list the planned trials without training\n  \
runner report --csv                       one row per trial\n  \
runner bench --arch resnet -p depth=56 -p shortcut=B   time training steps\n  \
runner list archs                         architectures and their parameters\n  \
runner db copy --from runs.db --to postgres://me@host/runs   move results between stores\n  \
sqlite3 runs.db 'select * from trial_summary'"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Expand a grid file and train every trial that is not done yet
    Run(RunArgs),
    /// Compare the recorded trials (a table, CSV, JSON or Markdown)
    Report(ReportArgs),
    /// Show one trial: its configuration, status and metric history
    Show(ShowArgs),
    /// Write a trial's checkpoint as a .safetensors file that PyTorch can load
    Export(ExportArgs),
    /// List what the runner knows (architectures and their parameters)
    List(ListArgs),
    /// Time training steps and evaluation batches on random data (images/s)
    Bench(BenchArgs),
    /// A web dashboard over the store: trials, live progress and training curves (read-only)
    Serve(ServeArgs),
    /// Work on whole stores: copy a grid's results between SQLite and PostgreSQL
    #[command(subcommand)]
    Db(DbCommand),
    /// Data sets: download CIFAR-10, CIFAR-100 or MNIST, checked and unpacked
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  runner serve                          http://127.0.0.1:8080/ over runs.db
  runner serve --db postgres://me@db.example.org/runs --addr 127.0.0.1:9000
  ssh -L 8080:127.0.0.1:8080 gpu-box    then open http://127.0.0.1:8080/ here

The page lists the experiments; each has a sortable table of its trials (status, progress as
step of steps, time left for running trials, best validation and test error, images/s, the
error of failed ones), its training curves (dashed: training error, bold: validation error, a
colour per depth, a panel per family), error against depth, and the curves of any trials you
tick, on one chart. It follows the store as runners write (a new trial or value appears within
a few seconds) without reloading.

Read-only: nothing is written to the store. It listens on 127.0.0.1 unless --addr says
otherwise, and has no login: to share it, prefer an SSH tunnel. The JSON the page reads is under
/api/ (see the README).")]
pub struct ServeArgs {
    #[arg(long, env = "RUNNER_DB", default_value = "runs.db", help = DB_HELP)]
    pub db: Location,
    /// Where to listen (IP:PORT; port 0 picks a free one, printed at start)
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Download a data set from its official location, check it and unpack it where the grids
    /// look for it
    #[command(after_help = "Examples:
  runner data fetch cifar10          data/cifar-10-batches-bin, what experiments/*.toml read
  runner data fetch mnist --dir ~/datasets
  runner data fetch cifar10 --from ~/Downloads/cifar-10-binary.tar.gz
                                     an archive already on disk (checked as a download is)
  runner data fetch cifar10 --url https://mirror.example.org/cifar-10-binary.tar.gz --sha256 HEX
                                     a mirror, checked against the SHA-256 you give

Sources (the files and MD5 sums torchvision checks):
  cifar10   https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz   -> DIR/cifar-10-batches-bin
  cifar100  https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz  -> DIR/cifar-100-binary
  mnist     https://ossci-datasets.s3.amazonaws.com/mnist/ (4 files)  -> DIR/mnist

The download grows in DIR/.fetch/FILE.part and resumes where it stopped, in this fetch (after a
dropped connection) or the next. Nothing reaches DIR/<folder> until every file is checked and
unpacked; a wrong checksum, a damaged archive or an entry that would leave the folder exits 2
and leaves DIR as it was. A data set already fetched is checked and left alone.")]
    Fetch(FetchArgs),
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// cifar10, cifar100 or mnist
    pub dataset: String,
    /// Where the data set's folder goes (created if missing)
    #[arg(long, default_value = "data")]
    pub dir: PathBuf,
    /// Use this archive (or, for mnist, a folder with its four .gz files) instead of downloading
    #[arg(long, value_name = "FILE", conflicts_with = "url")]
    pub from: Option<PathBuf>,
    /// Download from this mirror instead (for mnist: the folder URL the four files are under)
    #[arg(long)]
    pub url: Option<String>,
    /// The archive's SHA-256, checked instead of the published MD5 (a mirror's own file)
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Copy experiments with every trial, metric and checkpoint into another store
    #[command(after_help = "Examples:
  runner db copy --from runs.db --to postgres://me@db.example.org/runs
                     move a grid to PostgreSQL, then run it there from many hosts
  runner db copy --from postgres://me@db.example.org/runs --to results.db --experiment depth
                     take one experiment home as a single SQLite file

A half-done grid copies too: a trial that was running is copied as `interrupted`, and the next
`runner run` on the destination resumes it from its last checkpoint. The copy is one
transaction on the destination: counts and checkpoint sha256 are checked before it commits,
and an error leaves the destination as it was. A destination that already holds one of the
trials is refused.")]
    Copy(DbCopyArgs),
}

#[derive(Debug, Args)]
pub struct DbCopyArgs {
    /// The store to read: an SQLite file, or postgres://USER:PASSWORD@HOST:PORT/DATABASE
    #[arg(long, value_name = "DB")]
    pub from: Location,
    /// The store to write (an SQLite file is created if missing; a PostgreSQL database must exist)
    #[arg(long, value_name = "DB")]
    pub to: Location,
    /// Only this experiment (default: all of them)
    #[arg(long)]
    pub experiment: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  runner run experiments/quick.toml                  train every trial not done yet
  runner run experiments/depth.toml --dry-run        the planned trials; nothing trained or written
  runner run experiments/depth.toml --threads 1      several of these in several terminals share the grid
  runner run experiments/quick.toml --device cuda:0 --jobs 4
                                                     four trials at a time on one GPU
  RUNNER_DB=postgres://me:secret@db.example.org/runs runner run experiments/depth.toml --worker-host $(hostname)-$SLURM_ARRAY_TASK_ID
                                                     one worker of many, on any number of hosts

Stopping: Ctrl-C, SIGTERM or SIGUSR1 finish the current step, save a `last` checkpoint and mark
the trial `interrupted`; the same command continues it later, exactly. A second signal quits at
once.

Exit status: 0 every claimed trial trained, 1 some trial failed, 2 bad input (nothing written),
75 stopped by SIGTERM or SIGUSR1 (a cluster's stop: requeue the job), 130 Ctrl-C.")]
pub struct RunArgs {
    /// The grid file (TOML; see experiments/ for examples)
    pub grid: PathBuf,
    /// Print the planned trials and exit: nothing is trained or written
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: print the plan as CSV (arch, a column per parameter of the grid's
    /// architectures, seed, params, mflops, key)
    #[arg(long, requires = "dry_run")]
    pub csv: bool,
    #[arg(long, env = "RUNNER_DB", default_value = "runs.db", help = DB_HELP)]
    pub db: Location,
    /// CPU threads for training (default: all cores)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to train: cpu, or cuda:N with the cuda build; a list (cuda:0,cuda:1) spreads
    /// the --jobs over those devices
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Trials trained side by side in this runner, each on a thread (and a CUDA stream) of its
    /// own, sharing the device (one small net leaves most of a GPU idle). A trial's numbers do
    /// not depend on what trains beside it
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Also re-run trials that failed before
    #[arg(long)]
    pub retry_failed: bool,
    /// Train trials whose estimated peak memory is more than this process may use (its
    /// cgroup's limit, else the machine's available memory). Without it such a trial fails
    /// before it starts, with the estimate and the setting to lower, and the grid goes on; a
    /// grid whose first trial does not fit exits with status 2 before anything is written
    #[arg(long)]
    pub ignore_memory_limit: bool,
    /// Take over a `running` trial whose runner has sent no heartbeat for this many seconds
    /// (killed, or its container lost). Runners send one every 10 s; raise this if a loaded
    /// machine can stall a runner for longer, and give every runner of a file the same value. A
    /// killed runner of this host is noticed at once (its pid is gone), whatever the value.
    #[arg(long, value_name = "SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub stale_after: u64,
    /// The host name this runner records as its worker (`HOST:PID`; default: the machine's).
    /// Give each pod or task a distinct one where several share a host name. A runner of the
    /// same host name whose pid is gone is resumed at once; others after --stale-after
    #[arg(long, value_name = "NAME")]
    pub worker_host: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Markdown,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Seeds: trials that differ only in their seed are one line of the table and
of --markdown: `trials` lists them, `n` counts those done, the errors are their
mean ± std (sample), min and max; with --paper the test error is the papers'
`best (mean ± std)` and `diff` is our best minus the paper's. --per-seed shows
one line per trial instead. --csv and --json always have one record per trial,
with its group's figures beside it (seed_group, the group's first trial;
seed_group_done; best_val_error_mean/_std/_min/_max; test_error_mean/...).

Columns: experiment, trial, arch, then one per architecture parameter, then one
per [train] setting that differs within an experiment (train.optimizer.lr), then
params, status, steps, best_val_error, test_error, train_loss, wall_s,
images_per_s, mflops, seed, dataset, best_step, key, error (--csv; the table
shows fewer), then the paper's with --paper, then the seed group's. The
parameter columns depend on the trials reported: every parameter the
architectures among them declare, in `runner list archs` order, a shared name
once, empty where a trial's architecture has no such parameter (plain and
resnet trials: depth, width, shortcut, preact, block). --json puts them in an
`arch_params` object with the same keys in every row.

Charts (--plot DIR), one set per experiment:
  <experiment>-curves.svg    error (%) against iterations (He et al. 2015, Fig. 6):
                             a panel per network family, a colour per depth,
                             thin dashed = training, bold = validation error
  <experiment>-depth.svg     test error (bold) and best validation error (dashed)
                             against depth; seeds averaged, a band from min to max
  <experiment>-shortcut.svg  test error by shortcut option, a line per depth
                             (when the grid varies the shortcut)
  <experiment>-preact.svg    test error, original vs pre-activation units
                             (when the grid varies preact)
With --png, a .png beside each .svg. Charts with no data yet are skipped, with
a note on stderr. In <experiment>, characters other than letters, digits, '-',
'_' and '.' become '_'.

Examples:
  runner report --csv --experiment depth > depth.csv
  runner report --paper         how far each network is from the papers
  runner report --per-seed      every trial on its own line
  runner report --plot charts --png --markdown --paper > report.md
                                a document for a README or a lab notebook"
)]
pub struct ReportArgs {
    #[arg(long, env = "RUNNER_DB", default_value = "runs.db", help = DB_HELP)]
    pub db: Location,
    /// Only this experiment
    #[arg(long)]
    pub experiment: Option<String>,
    /// CSV with a header row (errors as fractions); its parameter columns depend on the
    /// architectures reported (see below)
    #[arg(long, conflicts_with_all = ["json", "markdown"])]
    pub csv: bool,
    /// A JSON array, one object per trial
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// A self-contained Markdown report: the table, the paper comparison with --paper, and links
    /// to the charts with --plot
    #[arg(long)]
    pub markdown: bool,
    /// Also draw charts (SVG) into DIR, created if missing; the files written are listed on
    /// stderr and below
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// With --plot: a PNG beside each SVG
    #[arg(long, requires = "plot")]
    pub png: bool,
    /// Add the published CIFAR-10 test error of the same network (He et al. 2015 Table 6;
    /// 2016 Table 3), our difference in percentage points, and how our recipe differs from the
    /// paper's (dataset, iterations, batch, schedule, augmentation)
    #[arg(long)]
    pub paper: bool,
    /// One line per trial in the table and --markdown, instead of one per group of trials that
    /// differ only in their seed
    #[arg(long)]
    pub per_seed: bool,
}

impl ReportArgs {
    pub fn format(&self) -> Format {
        if self.csv {
            Format::Csv
        } else if self.json {
            Format::Json
        } else if self.markdown {
            Format::Markdown
        } else {
            Format::Table
        }
    }
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Trial id, or a prefix (≥ 6 characters) of its key
    pub trial: String,
    #[arg(long, env = "RUNNER_DB", default_value = "runs.db", help = DB_HELP)]
    pub db: Location,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CheckpointArg {
    /// Weights and BN statistics of the validation-best evaluation
    Best,
    /// The latest resumable state
    Last,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Trial id, or a prefix (≥ 6 characters) of its key
    pub trial: String,
    #[arg(long, value_enum, default_value = "best")]
    pub kind: CheckpointArg,
    /// Output file (.safetensors)
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, env = "RUNNER_DB", default_value = "runs.db", help = DB_HELP)]
    pub db: Location,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(subcommand)]
    pub what: ListWhat,
}

#[derive(Debug, Subcommand)]
pub enum ListWhat {
    /// Each architecture plugin, its summary and its parameters with allowed values
    Archs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchOp {
    /// Whole training steps and evaluation batches of a model (--arch, --param NAME=VALUE)
    Model,
    /// Our convolution kernels against Candle's, per ResNet layer shape; with --device cuda:N,
    /// cuDNN's checked against the CPU (values and gradients, FAIL flagged) and timed against
    /// Candle's CUDA convolution
    Conv,
    /// Tuning aid: our convolution kernels on one thread and on all (--threads), per shape
    /// and pass
    ConvThreads,
    /// Tuning aid for a busy host: our convolution kernels on one thread in CPU time, with and
    /// without Winograd, as a share of a one-thread FMA loop's peak (try --batch 32)
    ConvTune,
    /// Tuning aid: the time of the stride-2 convolutions' phase-plane split and its inverse
    ConvPhases,
    /// Batch normalisation (train and eval, with and without ReLU) checked against Candle's on
    /// the CPU (values, gradients, running statistics; FAIL flagged) and timed against Candle's
    /// on --device
    Batchnorm,
    /// The fused residual op against the composed Candle ops, per ResNet stage shape
    Residual,
    /// The store's claims: --workers connections drain --trials empty trials of a throw-away
    /// experiment in --db (claims/s, and a check that no trial was claimed twice)
    Claims,
    /// `runner serve` on a throw-away store of --trials trials × --rows metric rows: each page
    /// and API route's answer time (first, median, p90, max) and size
    Serve,
}

#[derive(Debug, Args)]
#[command(
    after_help = "The model is the architecture's defaults (`runner list archs` shows each
architecture's parameters, their defaults and allowed values) with the
parameters given by --param changed. Values are read as the parameter's type:
an integer, true/false, or one of the listed choices.

Examples:
  runner bench --arch resnet --depth 56
  runner bench --arch resnet -p depth=110 -p shortcut=B -p preact=true
  runner bench --arch resnet -p block=bottleneck -p depth=164 --batch 64
  runner bench --arch plain -p width=32 --json
  runner bench --scaling                    ResNet-20/56/110 at batch 32, 64, 128
  runner bench --scaling --depths 20,32 --batches 64,256 --steps 4
  runner bench --op conv                    our convolution kernels against Candle's
  runner bench --op conv --device cuda:0    cuDNN's, checked against the CPU, against Candle's
  runner bench --op batchnorm --device cuda:0
  runner bench --op claims --db postgres://me@host/scratch --workers 8 --trials 1000
  runner bench --op serve --trials 200 --rows 2000 --steps 20"
)]
pub struct BenchArgs {
    /// What to time
    #[arg(long, value_enum, default_value = "model")]
    pub op: BenchOp,
    /// With --op conv*: only the layer shapes whose name contains this (e.g. "16->16", "1x1")
    #[arg(long, default_value = "")]
    pub shapes: String,
    /// The architecture to time (`runner list archs`)
    #[arg(long, default_value = "resnet")]
    pub arch: String,
    /// Set one of the architecture's parameters, e.g. `-p shortcut=B`; repeat for several.
    /// The others keep their defaults
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Shorthand for `--param depth=N`, for architectures that have a depth
    #[arg(long, value_name = "N")]
    pub depth: Option<i64>,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Timed steps (after warm-up)
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed warm-up steps
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// One JSON line instead of text
    #[arg(long)]
    pub json: bool,
    /// Also time the same model built from Candle's own ops (convolution, batch norm, residual
    /// addition), alternating with ours step by step, and print the ratio (the side-by-side
    /// comparison every kernel change should show)
    #[arg(long)]
    pub compare: bool,
    /// How the cost grows with depth and batch: one table of training images/s and peak memory
    /// for every --depths × --batches, each measured in a process of its own (so that each
    /// peak is its own)
    #[arg(long, conflicts_with_all = ["compare", "depth"])]
    pub scaling: bool,
    /// With --scaling: the depths
    #[arg(long, value_delimiter = ',', default_values_t = [20, 56, 110], requires = "scaling")]
    pub depths: Vec<i64>,
    /// With --scaling: the batch sizes
    #[arg(long, value_delimiter = ',', default_values_t = [32, 64, 128], requires = "scaling")]
    pub batches: Vec<usize>,
    /// With --op claims: the store to time (its throw-away experiment is deleted afterwards)
    #[arg(long, env = "RUNNER_DB", value_name = "DB")]
    pub db: Option<Location>,
    /// With --op claims: workers claiming at once, each with a connection of its own
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: u32,
    /// With --op claims: empty trials to claim (default 1000); with --op serve: trials in the
    /// store (default 200)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub trials: Option<u32>,
    /// With --op serve: metric rows per trial (five per evaluation)
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub rows: u32,
}
