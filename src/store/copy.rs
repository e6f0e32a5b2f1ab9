//! `runner db copy`: every experiment (or one) of a store, with its trials, metrics and
//! checkpoints, into another store of either kind, in one transaction there, checked as it goes.

use sha2::{Digest, Sha256};

use super::write::{UPSERT_CHECKPOINT, UPSERT_METRIC};
use super::{MetricRow, Store};
use crate::{Error, Result};

#[derive(Debug, Clone, sqlx::FromRow)]
struct ExperimentRow {
    id: i64,
    name: String,
    grid_toml: String,
    created_at: String,
}

/// Every column of a trial, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
struct TrialRow {
    id: i64,
    key: String,
    ord: i64,
    arch: String,
    config_json: String,
    params: i64,
    mflops: f64,
    status: String,
    worker: Option<String>,
    heartbeat_at: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
    error: Option<String>,
    best_val_error: Option<f64>,
    best_step: Option<i64>,
    test_error: Option<f64>,
    steps: Option<i64>,
    train_loss: Option<f64>,
    wall_s: Option<f64>,
    images_per_s: Option<f64>,
    attempts: i64,
    total_steps: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct CheckpointRow {
    kind: String,
    step: i64,
    sha256: String,
    bytes: Vec<u8>,
}

/// What a copy moved, for its closing line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    pub experiments: usize,
    pub trials: usize,
    pub metrics: usize,
    pub checkpoints: usize,
    pub checkpoint_bytes: usize,
    /// Trials that were `running` in the source: copied as `interrupted`, to be resumed from
    /// their `last` checkpoint by a runner on the destination.
    pub were_running: usize,
}

const TRIAL_COLUMNS: &str = "id, key, ord, arch, config_json, params, mflops, status, worker, heartbeat_at, \
     started_at, finished_at, error, best_val_error, best_step, test_error, steps, train_loss, wall_s, \
     images_per_s, attempts, total_steps";

impl Store {
    /// Copies every experiment of this store (or only `experiment`) into `to`: experiments by
    /// name (one that `to` already has receives the trials), trials with every column, metrics,
    /// and checkpoints (each one's sha256 checked against its bytes as read and as written back).
    /// A trial `running` here is copied `interrupted`. All in one transaction on `to`: an error
    /// leaves `to` as it was. Refused before anything is written when `to` already holds one of
    /// the trials (their keys are unique).
    pub async fn copy_to(&self, to: &Store, experiment: Option<&str>) -> Result<Copied> {
        let experiments: Vec<ExperimentRow> = on_db!(self, |pool| sqlx::query_as(
            "SELECT id, name, grid_toml, created_at FROM experiments WHERE $1 IS NULL OR name = $1 ORDER BY id"
        )
        .bind(experiment)
        .fetch_all(pool))?;
        if let Some(name) = experiment {
            if experiments.is_empty() {
                // The same message as `report --experiment`.
                self.summary(Some(name)).await?;
            }
        }
        let mut trials = Vec::new();
        for e in &experiments {
            let rows: Vec<TrialRow> = on_db!(self, |pool| sqlx::query_as(&format!(
                "SELECT {TRIAL_COLUMNS} FROM trials WHERE experiment_id = $1 ORDER BY id"
            ))
            .bind(e.id)
            .fetch_all(pool))?;
            trials.push(rows);
        }
        let keys: Vec<String> = trials.iter().flatten().map(|t| t.key.clone()).collect();
        let present: Vec<String> = on_db!(to, |pool| async {
            let mut present = Vec::new();
            for chunk in keys.chunks(500) {
                let list = (1..=chunk.len())
                    .map(|i| format!("${i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!("SELECT key FROM trials WHERE key IN ({list})");
                let mut q = sqlx::query_scalar::<_, String>(&sql);
                for k in chunk {
                    q = q.bind(k);
                }
                present.extend(q.fetch_all(pool).await?);
            }
            Ok::<_, sqlx::Error>(present)
        })?;
        if let Some(first) = present.first() {
            return Err(to.fail(format!(
                "already holds {} of the {} trials to copy (trial key {}…): copy into a store without them, \
                 or choose another --experiment",
                present.len(),
                keys.len(),
                &first[..first.len().min(12)]
            )));
        }

        let mut copied = Copied::default();
        each_pool!(&to.pool, |pool, d| {
            let mut tx = pool.begin_with(d.begin).await.map_err(|e| to.error(e))?;
            for (e, rows) in experiments.iter().zip(&trials) {
                let (experiment_id,): (i64,) = sqlx::query_as(
                    r#"
                    INSERT INTO experiments (name, grid_toml, created_at) VALUES ($1, $2, $3)
                    ON CONFLICT (name) DO UPDATE SET name = excluded.name
                    RETURNING id
                    "#,
                )
                .bind(&e.name)
                .bind(&e.grid_toml)
                .bind(&e.created_at)
                .fetch_one(&mut *tx)
                .await
                .map_err(|err| to.error(err))?;
                copied.experiments += 1;
                for t in rows {
                    let status = if t.status == "running" {
                        "interrupted"
                    } else {
                        t.status.as_str()
                    };
                    copied.were_running += usize::from(t.status == "running");
                    let (trial_id,): (i64,) = sqlx::query_as(
                        r#"
                        INSERT INTO trials (experiment_id, key, ord, arch, config_json, params, mflops, status,
                            worker, heartbeat_at, started_at, finished_at, error, best_val_error, best_step,
                            test_error, steps, train_loss, wall_s, images_per_s, attempts, total_steps)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                            $19, $20, $21, $22)
                        RETURNING id
                        "#,
                    )
                    .bind(experiment_id)
                    .bind(&t.key)
                    .bind(t.ord)
                    .bind(&t.arch)
                    .bind(&t.config_json)
                    .bind(t.params)
                    .bind(t.mflops)
                    .bind(status)
                    .bind(&t.worker)
                    .bind(&t.heartbeat_at)
                    .bind(&t.started_at)
                    .bind(&t.finished_at)
                    .bind(&t.error)
                    .bind(t.best_val_error)
                    .bind(t.best_step)
                    .bind(t.test_error)
                    .bind(t.steps)
                    .bind(t.train_loss)
                    .bind(t.wall_s)
                    .bind(t.images_per_s)
                    .bind(t.attempts)
                    .bind(t.total_steps)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|err| to.error(err))?;

                    let metrics = self.metrics(t.id).await?;
                    for m in &metrics {
                        sqlx::query(UPSERT_METRIC)
                            .bind(trial_id)
                            .bind(m.step)
                            .bind(m.epoch)
                            .bind(&m.split)
                            .bind(&m.name)
                            .bind(m.value)
                            .execute(&mut *tx)
                            .await
                            .map_err(|err| to.error(err))?;
                    }
                    let written: Vec<MetricRow> = sqlx::query_as(
                        "SELECT step, epoch, split, name, value FROM metrics WHERE trial_id = $1 ORDER BY step, split, name",
                    )
                    .bind(trial_id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|err| to.error(err))?;
                    if written != metrics {
                        return Err(to.fail(format!(
                            "the metrics of trial {} read back differently ({} rows written, {} read): nothing copied",
                            t.id,
                            metrics.len(),
                            written.len()
                        )));
                    }
                    copied.metrics += metrics.len();

                    let checkpoints = self.checkpoint_rows(t.id).await?;
                    for c in &checkpoints {
                        if hex::encode(Sha256::digest(&c.bytes)) != c.sha256 {
                            return Err(self.fail(format!(
                                "the {} checkpoint of trial {} does not match its sha256 (damaged): nothing copied",
                                c.kind, t.id
                            )));
                        }
                        sqlx::query(UPSERT_CHECKPOINT)
                            .bind(trial_id)
                            .bind(&c.kind)
                            .bind(c.step)
                            .bind(&c.sha256)
                            .bind(&c.bytes)
                            .execute(&mut *tx)
                            .await
                            .map_err(|err| to.error(err))?;
                        let back: Vec<u8> =
                            sqlx::query_scalar("SELECT bytes FROM checkpoints WHERE trial_id = $1 AND kind = $2")
                                .bind(trial_id)
                                .bind(&c.kind)
                                .fetch_one(&mut *tx)
                                .await
                                .map_err(|err| to.error(err))?;
                        if hex::encode(Sha256::digest(&back)) != c.sha256 {
                            return Err(to.fail(format!(
                                "the {} checkpoint of trial {} read back with another sha256: nothing copied",
                                c.kind, t.id
                            )));
                        }
                        copied.checkpoints += 1;
                        copied.checkpoint_bytes += c.bytes.len();
                    }
                    copied.trials += 1;
                }
            }
            tx.commit().await.map_err(|e| to.error(e))?;
        });
        Ok(copied)
    }

    /// Every checkpoint of a trial, as stored (not checked: the caller checks).
    async fn checkpoint_rows(&self, trial_id: i64) -> Result<Vec<CheckpointRow>> {
        on_db!(self, |pool| sqlx::query_as(
            "SELECT kind, step, sha256, bytes FROM checkpoints WHERE trial_id = $1 ORDER BY kind"
        )
        .bind(trial_id)
        .fetch_all(pool))
    }
}

/// `runner db copy`'s refusal to copy a store onto itself: the same URL, or two paths of one
/// existing file (`runs.db` and `./runs.db`, a link to it).
pub fn same_store(from: &super::Location, to: &super::Location) -> Option<Error> {
    use super::Location::Sqlite;
    let same = match (from, to) {
        (Sqlite(a), Sqlite(b)) => match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        },
        _ => from == to,
    };
    same.then(|| Error::Usage(format!("--from and --to are the same store ({from})")))
}
