//! Running the real binary in a temp dir.

use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};

use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteRow};
use sqlx::{ConnectOptions, Connection};

pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            tmp: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    /// Runs `runner ARGS` in this directory.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(args)
            .current_dir(self.path())
            .output()
            .expect("run the runner binary");
        Run(out)
    }

    /// Starts `runner ARGS` in this directory and leaves it running; read its output with
    /// [`Running::wait_for`].
    pub fn spawn(&self, args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(args)
            .current_dir(self.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the runner binary");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Every file of the directory with the sha256 of its bytes: equal snapshots mean nothing
    /// was created, removed or changed.
    pub fn snapshot(&self) -> Vec<(String, String)> {
        self.files()
            .into_iter()
            .map(|name| {
                let p = self.path().join(&name);
                let digest = if p.is_file() {
                    hex::encode(Sha256::digest(std::fs::read(&p).expect("read file")))
                } else {
                    "(directory)".to_string()
                };
                (name, digest)
            })
            .collect()
    }

    /// Every file name in the directory (to check that nothing was written).
    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
}

/// The text of `runner report --csv ARGS` in `dir`.
pub fn report_csv(dir: &Dir, args: &[&str]) -> String {
    let r = dir.run(&[&["report", "--csv"], args].concat());
    assert_eq!(r.code(), 0, "{}", r.stderr());
    r.stdout()
}

/// `runner report --csv` in `dir`: its header and rows, split at commas (no cell holds one).
pub fn csv_rows(dir: &Dir) -> (Vec<String>, Vec<Vec<String>>) {
    let out = report_csv(dir, &[]);
    let mut lines = out.lines();
    let header = lines.next().expect("a header").split(',').map(String::from).collect();
    (
        header,
        lines.map(|l| l.split(',').map(String::from).collect()).collect(),
    )
}

/// The repository's own file (e.g. `experiments/quick.toml`).
pub fn repo_file(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

/// A runner started with [`Dir::spawn`].
pub struct Running {
    pub child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every stdout line read so far.
    pub seen: Vec<String>,
}

impl Running {
    /// Reads stdout until the `n`-th line (counted from now) that contains `text`; panics with
    /// what was read if the runner ends first.
    pub fn wait_for(&mut self, text: &str, n: usize) {
        let mut found = 0;
        while found < n {
            match self.lines.next() {
                Some(Ok(line)) => {
                    found += line.contains(text) as usize;
                    self.seen.push(line);
                }
                _ => panic!(
                    "the runner ended before line {n} with `{text}`; its output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// SIGKILL: no handler runs, nothing is flushed or closed.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("kill the runner");
        self.child.wait().expect("reap the runner");
        self.seen
    }

    /// Waits for the end; the rest of stdout is appended to `seen`.
    pub fn finish(mut self) -> (i32, Vec<String>, String) {
        for line in self.lines.by_ref() {
            self.seen.push(line.expect("runner output"));
        }
        let out = self.child.wait_with_output().expect("wait for the runner");
        (
            out.status.code().unwrap_or(-1),
            self.seen,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Rows of `sql` on the database at `path`, through a plain connection (no migrations, no
/// runner code): what `sqlite3` would see.
pub fn query<T>(path: &Path, sql: &str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, SqliteRow> + Send + Unpin,
{
    block_on(async {
        let mut conn = connect(path).await;
        let rows = sqlx::query_as::<_, T>(sql)
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        conn.close().await.expect("close");
        rows
    })
}

/// Runs statements on the database at `path` (to fake what another runner left behind).
pub fn execute(path: &Path, sql: &str) {
    block_on(async {
        let mut conn = connect(path).await;
        sqlx::raw_sql(sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        conn.close().await.expect("close");
    });
    // Callers compare the directory before and after a command: wait until SQLite's last
    // close has removed the -wal and -shm files (no other process has the file open here).
    let side = |ext: &str| path.with_file_name(format!("{}-{ext}", path.file_name().unwrap().to_string_lossy()));
    for _ in 0..1000 {
        if !side("wal").exists() && !side("shm").exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!(
        "{}: -wal/-shm still there 10 s after the last connection closed",
        path.display()
    );
}

/// `PRAGMA integrity_check`: "ok" for an intact file.
pub fn integrity(path: &Path) -> String {
    query::<(String,)>(path, "PRAGMA integrity_check")
        .into_iter()
        .map(|r| r.0)
        .collect::<Vec<_>>()
        .join("; ")
}

async fn connect(path: &Path) -> sqlx::SqliteConnection {
    SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(std::time::Duration::from_secs(30))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// Evaluations of [`grid`]'s trials are this many steps apart.
pub const EVAL_EVERY: u32 = 4;

/// A tiny synthetic grid: the `archs` × `seeds` depth-8 nets, `iterations` steps of 16 of 256
/// images, an evaluation every 4 steps and a `last` checkpoint every `checkpoint_every`
/// evaluations.
pub fn grid(name: &str, archs: &str, seeds: &str, iterations: u32, checkpoint_every: u32) -> String {
    format!(
        "[experiment]\nname = \"{name}\"\n\n\
         [dataset]\nkind = \"synthetic\"\ntrain = 256\ntest = 64\nvalidation = 64\naugment = [\"pad-crop:4\", \"hflip\"]\n\n\
         [train]\niterations = {iterations}\nbatch_size = 16\neval_every = {EVAL_EVERY}\ncheckpoint_every = {checkpoint_every}\n\
         optimizer = {{ kind = \"sgd\", lr = 0.05 }}\n\n\
         [grid]\narch = [{archs}]\ndepth = [8]\nseed = [{seeds}]\n"
    )
}

/// A directory where `grid_text` (as `g.toml`) was trained without interruption: the reference
/// that interrupted, killed or taken-over runs of the same grid must match.
pub fn uninterrupted(grid_text: &str) -> Dir {
    let whole = Dir::new();
    whole.write("g.toml", grid_text);
    let r = whole.run(&["run", "g.toml"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    whole
}

/// How many lines of all `outputs` start trial `id` ("[i/n] trial ID: …").
pub fn starts(outputs: &[Vec<String>], id: i64) -> usize {
    outputs
        .iter()
        .flatten()
        .filter(|l| l.starts_with('[') && l.contains(&format!("] trial {id}: ")))
        .count()
}

/// The six files of CIFAR-10's binary version (the fixtures' layout).
pub const CIFAR10_FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];
