//! Reading results back: the summary that reports print, one trial in detail, its metrics and
//! checkpoints. Plain statements; they run while a runner is writing (SQLite's WAL; PostgreSQL's
//! snapshots).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use sqlx::FromRow;

use super::{Checkpoint, CheckpointKind, ExperimentStatus, MetricRow, RunningTrial, Store, SummaryRow, TrialDetail};
use crate::{Error, Result};

/// The fewest key characters accepted to name a trial: short prefixes would match by accident.
const MIN_PREFIX: usize = 6;

/// What `trial` adds to the summary row.
#[derive(sqlx::FromRow)]
struct DetailColumns {
    full_key: String,
    ord: i64,
    config_json: String,
    worker: Option<String>,
    heartbeat_at: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
    attempts: i64,
    total_steps: Option<i64>,
}

/// The columns of a [`TrialDetail`]: the summary's and the trial's own.
const DETAIL: &str =
    "SELECT s.*, t.key AS full_key, t.config_json, t.worker, t.heartbeat_at, t.attempts, t.total_steps \
     FROM trial_summary s JOIN trials t ON t.id = s.trial";

/// Trial statuses as `trial_summary` gives them.
const STATUSES: [&str; 5] = ["pending", "running", "done", "failed", "interrupted"];

impl Store {
    /// One row per trial from the `trial_summary` view, experiments in the order they were first
    /// run and trials in grid order. An experiment that is not in the file is a usage error.
    pub async fn summary(&self, experiment: Option<&str>) -> Result<Vec<SummaryRow>> {
        if let Some(name) = experiment {
            let known = self.experiments().await?;
            if !known.iter().any(|k| k == name) {
                let known = if known.is_empty() {
                    "none yet".to_string()
                } else {
                    known.join(", ")
                };
                return Err(Error::Usage(format!(
                    "no experiment `{name}` in {} (experiments: {known})",
                    self.location
                )));
            }
        }
        on_db!(self, |pool| async {
            sqlx::query_as::<_, SummaryRow>(
                r#"
                SELECT s.* FROM trial_summary s
                JOIN trials t ON t.id = s.trial
                WHERE $1 IS NULL OR s.experiment = $1
                ORDER BY t.experiment_id, s.ord, s.trial
                "#,
            )
            .bind(experiment)
            .fetch_all(pool)
            .await
        })
    }

    /// A trial by id (`12`) or by a prefix of its key (at least 6 hex characters).
    pub async fn trial(&self, which: &str) -> Result<TrialDetail> {
        let which = which.trim();
        let usage = || {
            Error::Usage(format!(
                "`{which}` names no trial: give a trial id or at least {MIN_PREFIX} hex characters of its key \
                 (see `runner report`)"
            ))
        };
        if !which.is_empty() && which.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(id) = which.parse::<i64>() {
                if let Some(detail) = self.trial_by_id(id).await? {
                    return Ok(detail);
                }
            }
            // Digits can also be a key prefix.
            if which.len() < MIN_PREFIX {
                return Err(Error::Usage(format!("no trial {which} in {}", self.location)));
            }
        }
        if which.len() < MIN_PREFIX || !which.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(usage());
        }
        let prefix = which.to_ascii_lowercase();
        let prefix = prefix.as_str();
        let matches: Vec<(i64, String)> = on_db!(self, |pool| async {
            sqlx::query_as("SELECT id, key FROM trials WHERE substr(key, 1, length($1)) = $1 ORDER BY id LIMIT 6")
                .bind(prefix)
                .fetch_all(pool)
                .await
        })?;
        match matches.as_slice() {
            [] => Err(Error::Usage(format!(
                "no trial with a key starting `{which}` in {}",
                self.location
            ))),
            [(id, _)] => self.trial_by_id(*id).await?.ok_or_else(|| self.no_trial(*id)),
            several => {
                let list: Vec<String> = several
                    .iter()
                    .take(5)
                    .map(|(id, key)| format!("{id} ({})", &key[..key.len().min(12)]))
                    .collect();
                Err(Error::Usage(format!(
                    "`{which}` matches several trials: {}{}; give more characters or the id",
                    list.join(", "),
                    if several.len() > 5 { ", ..." } else { "" }
                )))
            }
        }
    }

    /// A trial by id; `None` when there is none.
    pub async fn trial_by_id(&self, id: i64) -> Result<Option<TrialDetail>> {
        let sql = format!("{DETAIL} WHERE s.trial = $1");
        let row: Option<TrialDetail> = on_db!(self, |pool| async {
            let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
            row.map(|row| detail(&row)).transpose()
        })?;
        Ok(row)
    }

    /// Every trial of an experiment in detail, in grid order (an empty list for a name that is
    /// not in the store).
    pub async fn details(&self, experiment: &str) -> Result<Vec<TrialDetail>> {
        let sql = format!("{DETAIL} WHERE s.experiment = $1 ORDER BY s.ord, s.trial");
        on_db!(self, |pool| async {
            let rows = sqlx::query(&sql).bind(experiment).fetch_all(pool).await?;
            rows.iter().map(detail).collect::<sqlx::Result<Vec<_>>>()
        })
    }

    /// The stored configuration of every trial (of one experiment, or all), by trial id: one
    /// statement, however many trials.
    pub async fn configs(&self, experiment: Option<&str>) -> Result<BTreeMap<i64, String>> {
        let rows: Vec<(i64, String)> = on_db!(self, |pool| sqlx::query_as(
            r#"
            SELECT t.id, t.config_json FROM trials t JOIN experiments e ON e.id = t.experiment_id
            WHERE $1 IS NULL OR e.name = $1
            "#
        )
        .bind(experiment)
        .fetch_all(pool))?;
        Ok(rows.into_iter().collect())
    }

    /// Every experiment, in the order they were first run, with its trials counted by status.
    pub async fn experiment_statuses(&self) -> Result<Vec<ExperimentStatus>> {
        let rows: Vec<(String, String, Option<String>, i64)> = on_db!(self, |pool| sqlx::query_as(
            r#"
            SELECT e.name, e.created_at, s.status, count(s.trial)
            FROM experiments e LEFT JOIN trial_summary s ON s.experiment = e.name
            GROUP BY e.id, e.name, e.created_at, s.status
            ORDER BY e.id
            "#
        )
        .fetch_all(pool))?;
        let mut out: Vec<ExperimentStatus> = Vec::new();
        for (name, created_at, status, n) in rows {
            if out.last().is_none_or(|e| e.name != name) {
                out.push(ExperimentStatus {
                    name,
                    created_at,
                    trials: 0,
                    status: STATUSES.iter().map(|s| (s.to_string(), 0)).collect(),
                });
            }
            let e = out.last_mut().expect("pushed above");
            if let Some(status) = status {
                e.trials += n;
                *e.status.entry(status).or_default() += n;
            }
        }
        Ok(out)
    }

    /// The training and validation error of each trial named, by trial id, each in step order:
    /// what the training curves are drawn from. Unknown ids have none.
    pub async fn error_curves(&self, trials: &[i64]) -> Result<BTreeMap<i64, Vec<MetricRow>>> {
        let mut out: BTreeMap<i64, Vec<MetricRow>> = BTreeMap::new();
        for chunk in trials.chunks(500) {
            let list = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT trial_id, step, epoch, split, name, value FROM metrics \
                 WHERE trial_id IN ({list}) AND name = 'error' AND split IN ('train', 'val') \
                 ORDER BY trial_id, step, split"
            );
            let rows: Vec<(i64, i64, f64, String, String, f64)> = on_db!(self, |pool| {
                let mut q = sqlx::query_as(&sql);
                for id in chunk {
                    q = q.bind(id);
                }
                q.fetch_all(pool)
            })?;
            for (trial, step, epoch, split, name, value) in rows {
                out.entry(trial).or_default().push(MetricRow {
                    step,
                    epoch,
                    split,
                    name,
                    value,
                });
            }
        }
        Ok(out)
    }

    /// A text that changes whenever anything a results page shows does: experiments added or
    /// removed, a trial claimed, recorded, finished or gone silent. Cheap (one pass over
    /// `trials`), for pages that poll.
    pub async fn version(&self) -> Result<String> {
        let row: (i64, i64, i64, i64, String, String, i64) = on_db!(self, |pool| sqlx::query_as(
            r#"
            SELECT
                (SELECT count(*) FROM experiments),
                (SELECT count(*) FROM trials),
                (SELECT CAST(coalesce(sum(coalesce(steps, 0) + attempts), 0) AS BIGINT) FROM trials),
                (SELECT count(*) FROM trials WHERE status IN ('done', 'failed')),
                (SELECT coalesce(max(heartbeat_at), '') FROM trials),
                (SELECT coalesce(max(created_at), '') FROM experiments),
                (SELECT count(*) FROM trial_summary WHERE status = 'interrupted')
            "#
        )
        .fetch_one(pool))?;
        let (experiments, trials, progress, ended, heartbeat, created, silent) = row;
        Ok(format!(
            "{experiments}.{trials}.{progress}.{ended}.{silent}.{heartbeat}.{created}"
        ))
    }

    /// The trial's checkpoint of this kind, its digest checked.
    pub async fn checkpoint(&self, trial_id: i64, kind: CheckpointKind) -> Result<Option<Checkpoint>> {
        let row: Option<(i64, String, Vec<u8>)> = on_db!(self, |pool| async {
            sqlx::query_as("SELECT step, sha256, bytes FROM checkpoints WHERE trial_id = $1 AND kind = $2")
                .bind(trial_id)
                .bind(kind.as_str())
                .fetch_optional(pool)
                .await
        })?;
        let Some((step, sha256, bytes)) = row else {
            return Ok(None);
        };
        if hex::encode(Sha256::digest(&bytes)) != sha256 {
            return Err(self.fail(format!(
                "the {} checkpoint of trial {trial_id} is damaged (its sha256 does not match)",
                kind.as_str()
            )));
        }
        Ok(Some(Checkpoint {
            kind,
            step,
            sha256,
            bytes,
        }))
    }

    /// Every recorded value of the trial, by step, split and name.
    pub async fn metrics(&self, trial_id: i64) -> Result<Vec<MetricRow>> {
        on_db!(self, |pool| async {
            sqlx::query_as::<_, MetricRow>(
                "SELECT step, epoch, split, name, value FROM metrics WHERE trial_id = $1 ORDER BY step, split, name",
            )
            .bind(trial_id)
            .fetch_all(pool)
            .await
        })
    }

    /// Every trial whose status is `running`, with its worker and the age of its heartbeat
    /// (stale or not): the runner uses it to resume trials whose runner is gone, and to say which
    /// trials other runners are busy with.
    pub async fn running(&self) -> Result<Vec<RunningTrial>> {
        let rows: Vec<(i64, String, Option<String>, Option<f64>)> = on_db!(self, |pool, d| async {
            sqlx::query_as(
                &d.sql("SELECT id, key, worker, {heartbeat_age_s} FROM trials WHERE status = 'running' ORDER BY id"),
            )
            .fetch_all(pool)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(trial_id, key, worker, heartbeat_age_s)| RunningTrial {
                trial_id,
                key,
                worker,
                heartbeat_age_s,
            })
            .collect())
    }

    /// Experiment names, in the order they were first run.
    pub async fn experiments(&self) -> Result<Vec<String>> {
        on_db!(self, |pool| async {
            sqlx::query_scalar::<_, String>("SELECT name FROM experiments ORDER BY id")
                .fetch_all(pool)
                .await
        })
    }
}

/// A [`TrialDetail`] from a row of the [`DETAIL`] statement.
fn detail<'r, R: sqlx::Row>(row: &'r R) -> sqlx::Result<TrialDetail>
where
    SummaryRow: FromRow<'r, R>,
    DetailColumns: FromRow<'r, R>,
{
    let more = DetailColumns::from_row(row)?;
    Ok(TrialDetail {
        summary: SummaryRow::from_row(row)?,
        key: more.full_key,
        ord: more.ord,
        config_json: more.config_json,
        worker: more.worker,
        heartbeat_at: more.heartbeat_at,
        started_at: more.started_at,
        finished_at: more.finished_at,
        attempts: more.attempts,
        total_steps: more.total_steps,
    })
}
