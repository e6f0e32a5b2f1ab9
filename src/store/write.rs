//! Everything that changes the database: registering a grid, claiming trials, recording their
//! progress and their end. Each public function is one transaction (IMMEDIATE on SQLite) or
//! one statement, retried by `retry!` while the database is busy.

use std::collections::HashMap;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Checkpoint, CheckpointKind, Claim, NewTrial, Outcome, Pool, Record, Store};
use crate::{Error, Result};

/// The condition a write of one runner's to its trial needs: no other runner holds the trial
/// now (a trial this runner released on Ctrl-C still takes its last checkpoint and outcome).
/// Parameter $2 is the writing worker.
const NOT_TAKEN_OVER: &str = "NOT (status = 'running' AND worker IS DISTINCT FROM $2)";

/// One metric value; a value of the same step, split and name (a resumed trial recording again)
/// is replaced. Parameters: trial_id, step, epoch, split, name, value.
pub(super) const UPSERT_METRIC: &str = "INSERT INTO metrics (trial_id, step, epoch, split, name, value) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (trial_id, step, split, name) DO UPDATE SET epoch = excluded.epoch, value = excluded.value";

/// A trial's checkpoint of one kind, replacing the one it had. Parameters: trial_id, kind, step,
/// sha256, bytes.
pub(super) const UPSERT_CHECKPOINT: &str = "INSERT INTO checkpoints (trial_id, kind, step, sha256, bytes) \
     VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (trial_id, kind) DO UPDATE SET step = excluded.step, sha256 = excluded.sha256, bytes = excluded.bytes";

/// Which trials may be claimed: parameter `$n` says whether failed ones may, `$n+1` is
/// `--stale-after` in seconds. A template for [`Dialect::sql`].
fn claimable(n: usize) -> String {
    format!(
        "(status IN ('pending', 'interrupted') \
          OR (status = 'failed' AND ${n}) \
          OR (status = 'running' AND (heartbeat_at IS NULL OR {{heartbeat_age_s}} > ${})))",
        n + 1
    )
}

/// The rest of a claim, in its transaction `$tx`, once `$chosen` (the trial's id, key, previous
/// status and worker) is this worker's (status `running`, its worker, heartbeat and attempt
/// count already set) or `None` (nothing to claim: rolled back): resume from a sound `last`
/// checkpoint, dropping the metrics past it, or drop everything an earlier attempt recorded;
/// then commit. Evaluates to the function's `sqlx::Result<Option<Claim>>`.
macro_rules! complete_claim {
    ($tx:ident, $d:ident, $chosen:expr) => {{
        let Some((trial_id, key, previous_status, previous_worker)) = $chosen else {
            $tx.rollback().await?;
            return Ok(None);
        };
        let trial_id: i64 = trial_id;
        let last: Option<(i64, String, Vec<u8>)> =
            sqlx::query_as("SELECT step, sha256, bytes FROM checkpoints WHERE trial_id = $1 AND kind = 'last'")
                .bind(trial_id)
                .fetch_optional(&mut *$tx)
                .await?;
        let resume = last
            .map(|(step, sha256, bytes)| Checkpoint {
                kind: CheckpointKind::Last,
                step,
                sha256,
                bytes,
            })
            .filter(|c| hex::encode(Sha256::digest(&c.bytes)) == c.sha256);
        if let Some(ckpt) = &resume {
            // The steps after the checkpoint will be trained again and recorded again.
            sqlx::query("DELETE FROM metrics WHERE trial_id = $1 AND step > $2")
                .bind(trial_id)
                .bind(ckpt.step)
                .execute(&mut *$tx)
                .await?;
            sqlx::query(&$d.sql(
                r#"
                UPDATE trials SET
                    started_at = coalesce(started_at, {now}),
                    finished_at = NULL, error = NULL, test_error = NULL, steps = $2
                WHERE id = $1
                "#,
            ))
            .bind(trial_id)
            .bind(ckpt.step)
            .execute(&mut *$tx)
            .await?;
        } else {
            sqlx::query("DELETE FROM metrics WHERE trial_id = $1")
                .bind(trial_id)
                .execute(&mut *$tx)
                .await?;
            sqlx::query("DELETE FROM checkpoints WHERE trial_id = $1")
                .bind(trial_id)
                .execute(&mut *$tx)
                .await?;
            sqlx::query(&$d.sql(
                r#"
                UPDATE trials SET
                    started_at = {now}, finished_at = NULL, error = NULL,
                    best_val_error = NULL, best_step = NULL, test_error = NULL,
                    steps = NULL, train_loss = NULL, wall_s = NULL, images_per_s = NULL
                WHERE id = $1
                "#,
            ))
            .bind(trial_id)
            .execute(&mut *$tx)
            .await?;
        }
        $tx.commit().await?;
        Ok(Some(Claim {
            trial_id,
            key,
            resume,
            previous_status,
            previous_worker,
        }))
    }};
}

/// One evaluation point in one transaction on `$pool` (see [`Store::record`]): the number of
/// trial rows updated, 0 when another runner holds the trial.
macro_rules! record_tx {
    ($pool:ident, $d:ident, $trial_id:expr, $worker:expr, $rec:expr) => {
        async {
            let mut tx = $pool.begin_with($d.begin).await?;
            // First, so that a trial another runner holds gets nothing of this one's.
            let updated = sqlx::query(&$d.sql(&format!(
                r#"
            UPDATE trials SET
                steps = $3,
                train_loss = coalesce($4, train_loss),
                images_per_s = coalesce($5, images_per_s),
                wall_s = $6,
                heartbeat_at = {{now}}
            WHERE id = $1 AND {NOT_TAKEN_OVER}
            "#
            )))
            .bind($trial_id)
            .bind($worker)
            .bind($rec.step)
            .bind($rec.train_loss)
            .bind($rec.images_per_s)
            .bind($rec.wall_s)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                tx.rollback().await?;
                return Ok(0);
            }
            for m in &$rec.metrics {
                sqlx::query(UPSERT_METRIC)
                    .bind($trial_id)
                    .bind($rec.step)
                    .bind($rec.epoch)
                    .bind(&m.split)
                    .bind(&m.name)
                    .bind(m.value)
                    .execute(&mut *tx)
                    .await?;
            }
            // The slot decides the kind, whatever the checkpoint says.
            let checkpoints = $rec
                .best
                .as_ref()
                .map(|(_, c)| (CheckpointKind::Best, c))
                .into_iter()
                .chain($rec.last.as_ref().map(|c| (CheckpointKind::Last, c)));
            for (kind, c) in checkpoints {
                sqlx::query(UPSERT_CHECKPOINT)
                    .bind($trial_id)
                    .bind(kind.as_str())
                    .bind(c.step)
                    .bind(&c.sha256)
                    .bind(&c.bytes)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some((val_error, c)) = &$rec.best {
                sqlx::query("UPDATE trials SET best_val_error = $2, best_step = $3 WHERE id = $1")
                    .bind($trial_id)
                    .bind(val_error)
                    .bind(c.step)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(updated)
        }
    };
}

impl Store {
    /// Inserts the experiment (or updates its grid_toml) and the trials that are not there yet
    /// (by key), in one transaction; returns the experiment id. Existing trials keep their status
    /// and results; only their `ord` follows the grid, so that listings match the file as it is now.
    pub async fn register(&self, experiment: &str, grid_toml: &str, trials: &[NewTrial]) -> Result<i64> {
        on_db!(self, |pool, d| async {
            let mut tx = pool.begin_with(d.begin).await?;
            let (id,): (i64,) = sqlx::query_as(
                r#"
                INSERT INTO experiments (name, grid_toml) VALUES ($1, $2)
                ON CONFLICT (name) DO UPDATE SET grid_toml = excluded.grid_toml
                RETURNING id
                "#,
            )
            .bind(experiment)
            .bind(grid_toml)
            .fetch_one(&mut *tx)
            .await?;
            for t in trials {
                sqlx::query(
                    r#"
                    INSERT INTO trials (experiment_id, key, ord, arch, config_json, params, mflops)
                    VALUES ($1, $2, $3, $4, $5, $6, $7)
                    ON CONFLICT (key) DO UPDATE SET ord = excluded.ord
                        WHERE trials.experiment_id = excluded.experiment_id
                    "#,
                )
                .bind(id)
                .bind(&t.key)
                .bind(t.ord)
                .bind(&t.arch)
                .bind(&t.config_json)
                .bind(t.params)
                .bind(t.mflops)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(id)
        })
    }

    /// Claims the next trial to run among `keys`, in their order: a `pending` or `interrupted`
    /// one, a `failed` one if `retry_failed`, or a `running` one whose heartbeat is older than
    /// `stale_after` (its worker died). Marks it running for `worker` with a fresh heartbeat and
    /// counts the attempt. With a `last` checkpoint the trial resumes: metrics past that step are
    /// dropped and the checkpoint returned. Without one (or with one whose digest does not
    /// match) it starts over: its metrics, checkpoints and results are dropped.
    pub async fn claim(
        &self,
        keys: &[String],
        worker: &str,
        retry_failed: bool,
        stale_after: Duration,
    ) -> Result<Option<Claim>> {
        let stale_s = stale_after.as_secs_f64();
        match &self.pool {
            Pool::Sqlite(pool) => retry!(self, claim_sqlite(pool, keys, worker, retry_failed, stale_s)),
            Pool::Postgres(pool) => retry!(self, claim_postgres(pool, keys, worker, retry_failed, stale_s)),
        }
    }

    /// Says that `worker` is still running the trial. Fails if another worker has taken the
    /// trial over (this one's heartbeat went stale): the caller should stop training it.
    pub async fn heartbeat(&self, trial_id: i64, worker: &str) -> Result<()> {
        self.touch(trial_id, worker, None).await
    }

    /// A heartbeat that also records how many steps the trial trains for in all (its runner
    /// knows once the data is loaded): what progress and time-left figures are computed from.
    pub async fn started(&self, trial_id: i64, worker: &str, total_steps: i64) -> Result<()> {
        self.touch(trial_id, worker, Some(total_steps)).await
    }

    async fn touch(&self, trial_id: i64, worker: &str, total_steps: Option<i64>) -> Result<()> {
        let updated = on_db!(self, |pool, d| async {
            sqlx::query(&d.sql(
                "UPDATE trials SET heartbeat_at = {now}, total_steps = coalesce($3, total_steps) \
                 WHERE id = $1 AND worker = $2 AND status = 'running'",
            ))
            .bind(trial_id)
            .bind(worker)
            .bind(total_steps)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        if updated > 0 {
            return Ok(());
        }
        // Finished or released in the meantime: nothing to keep alive.
        match self.not_updated(trial_id, worker).await? {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Why a write of `worker`'s to the trial touched no row: another runner holds it now
    /// ([`Error::TakenOver`]) or there is no such trial; `None` when neither.
    async fn not_updated(&self, trial_id: i64, worker: &str) -> Result<Option<Error>> {
        let owner: Option<(String, Option<String>)> = on_db!(self, |pool| sqlx::query_as(
            "SELECT status, worker FROM trials WHERE id = $1"
        )
        .bind(trial_id)
        .fetch_optional(pool))?;
        Ok(match owner {
            None => Some(self.no_trial(trial_id)),
            Some((status, Some(other))) if status == "running" && other != worker => Some(Error::TakenOver {
                trial: trial_id,
                by: other,
            }),
            Some(_) => None,
        })
    }

    /// Writes one evaluation point in one transaction: the metrics (replacing those of the same
    /// step, which a resumed trial records again), a new best checkpoint with its validation
    /// error, the last checkpoint, the trial's progress and its heartbeat. Nothing is written
    /// if another runner has taken the trial over ([`Error::TakenOver`]).
    pub async fn record(&self, trial_id: i64, worker: &str, rec: &Record) -> Result<()> {
        let updated = on_db!(self, |pool, d| record_tx!(pool, d, trial_id, worker, rec))?;
        if updated == 0 {
            return Err(self
                .not_updated(trial_id, worker)
                .await?
                .unwrap_or_else(|| self.no_trial(trial_id)));
        }
        Ok(())
    }

    /// Records how the attempt ended. `Interrupted` leaves the results so far in place for a
    /// later run to resume from. Nothing is written if another runner has taken the trial over
    /// ([`Error::TakenOver`]): the last word on a trial belongs to its owner.
    pub async fn finish(&self, trial_id: i64, worker: &str, outcome: &Outcome) -> Result<()> {
        let set = match outcome {
            Outcome::Done { .. } => "status = 'done', test_error = $3, wall_s = $4, error = NULL",
            Outcome::Failed { .. } => "status = 'failed', error = $3, wall_s = $4",
            Outcome::Interrupted => "status = 'interrupted'",
        };
        let finished = match outcome {
            Outcome::Interrupted => "",
            _ => ", finished_at = {now}",
        };
        let sql = format!("UPDATE trials SET {set}{finished} WHERE id = $1 AND {NOT_TAKEN_OVER}");
        let updated = on_db!(self, |pool, d| async {
            let sql = d.sql(&sql);
            let query = sqlx::query(&sql).bind(trial_id).bind(worker);
            let query = match outcome {
                Outcome::Done { test_error, wall_s } => query.bind(*test_error).bind(*wall_s),
                Outcome::Failed { error, wall_s } => query.bind(error.as_str()).bind(*wall_s),
                Outcome::Interrupted => query,
            };
            query.execute(pool).await.map(|r| r.rows_affected())
        })?;
        if updated == 0 {
            return Err(self
                .not_updated(trial_id, worker)
                .await?
                .unwrap_or_else(|| self.no_trial(trial_id)));
        }
        Ok(())
    }

    /// Marks the trial interrupted if `worker` is still running it (the Ctrl-C path), so that the
    /// next run resumes it at once instead of waiting for its heartbeat to go stale.
    pub async fn release(&self, trial_id: i64, worker: &str) -> Result<()> {
        on_db!(self, |pool| async {
            sqlx::query("UPDATE trials SET status = 'interrupted' WHERE id = $1 AND worker = $2 AND status = 'running'")
                .bind(trial_id)
                .bind(worker)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// Deletes an experiment with its trials, metrics and checkpoints (`runner bench --op claims`
    /// cleans up after itself with it).
    pub async fn delete_experiment(&self, name: &str) -> Result<()> {
        on_db!(self, |pool| async {
            sqlx::query("DELETE FROM experiments WHERE name = $1")
                .bind(name)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    pub(super) fn no_trial(&self, trial_id: i64) -> Error {
        self.fail(format!("has no trial {trial_id}"))
    }
}

/// SQLite: every claimable trial of the file (a few thousand at most), then the first in `keys`
/// order, taken in the same IMMEDIATE transaction: no other writer runs in between.
async fn claim_sqlite(
    pool: &sqlx::SqlitePool,
    keys: &[String],
    worker: &str,
    retry_failed: bool,
    stale_s: f64,
) -> sqlx::Result<Option<Claim>> {
    let d = &super::SQLITE;
    let mut tx = pool.begin_with(d.begin).await?;
    let open_trials: Vec<(i64, String, String, Option<String>)> = sqlx::query_as(&d.sql(&format!(
        "SELECT id, key, status, worker FROM trials WHERE {}",
        claimable(1)
    )))
    .bind(retry_failed)
    .bind(stale_s)
    .fetch_all(&mut *tx)
    .await?;
    let by_key: HashMap<&str, (i64, &str, &Option<String>)> = open_trials
        .iter()
        .map(|(id, key, status, worker)| (key.as_str(), (*id, status.as_str(), worker)))
        .collect();
    let found = keys.iter().find_map(|k| {
        by_key
            .get(k.as_str())
            .map(|&(id, status, worker)| (id, k.clone(), status.to_string(), worker.clone()))
    });
    if let Some((trial_id, ..)) = &found {
        sqlx::query(&d.sql(
            "UPDATE trials SET status = 'running', worker = $2, heartbeat_at = {now}, attempts = attempts + 1 WHERE id = $1",
        ))
        .bind(trial_id)
        .bind(worker)
        .execute(&mut *tx)
        .await?;
    }
    complete_claim!(tx, d, found)
}

/// PostgreSQL: the claim is one statement. The trial is chosen and locked by `FOR UPDATE SKIP
/// LOCKED`, so two workers claiming at the same moment never get the same trial (the second
/// skips the row the first holds, and a row claimed since its snapshot fails the re-checked
/// condition); the rest happens in its transaction, before anyone else sees the trial.
async fn claim_postgres(
    pool: &sqlx::PgPool,
    keys: &[String],
    worker: &str,
    retry_failed: bool,
    stale_s: f64,
) -> sqlx::Result<Option<Claim>> {
    let d = &super::POSTGRES;
    let mut tx = pool.begin_with(d.begin).await?;
    let claimed: Option<(i64, String, String, Option<String>)> = sqlx::query_as(&d.sql(&format!(
        r#"
        UPDATE trials t SET
            status = 'running', worker = $2, heartbeat_at = {{now}}, attempts = t.attempts + 1
        FROM (
            -- The keys with their positions, joined by hash: ordering by array_position() would
            -- scan the array once per trial (20 ms a claim for a grid of 1,000).
            SELECT c.id, c.status, c.worker
            FROM trials c
            JOIN unnest($1::text[]) WITH ORDINALITY AS k(key, n) ON k.key = c.key
            WHERE {}
            ORDER BY k.n
            LIMIT 1
            FOR UPDATE OF c SKIP LOCKED
        ) old
        WHERE t.id = old.id
        RETURNING t.id, t.key, old.status, old.worker
        "#,
        claimable(3)
    )))
    .bind(keys)
    .bind(worker)
    .bind(retry_failed)
    .bind(stale_s)
    .fetch_optional(&mut *tx)
    .await?;
    complete_claim!(tx, d, claimed)
}
