-- The results store of `runner`: one SQLite file (runs.db by default) holding every
-- experiment, every trial, its metrics and its checkpoints.
--
-- This file has shipped once it is in a release: never edit it (sqlx stores its checksum and
-- refuses a database whose applied migrations differ); add 0002_*.sql instead.
--
-- Times are UTC text in ISO 8601 with milliseconds ('2026-11-27T21:35:00.123Z'), so they sort
-- as text and julianday() reads them.

-- One row per grid file name ([experiment] name); re-running a grid updates grid_toml.
CREATE TABLE experiments (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    grid_toml   TEXT    NOT NULL,           -- the grid file as last run, verbatim
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- One row per trial: a point of the grid. `key` is the sha256 of the trial's canonical
-- config_json (which includes the experiment name), so re-running a grid finds its trials again
-- and two runners on one file never create duplicates.
CREATE TABLE trials (
    id              INTEGER PRIMARY KEY,
    experiment_id   INTEGER NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    key             TEXT    NOT NULL UNIQUE,
    ord             INTEGER NOT NULL,       -- position in the expanded grid, for listing
    arch            TEXT    NOT NULL,
    config_json     TEXT    NOT NULL,       -- the fully resolved configuration (see trial_summary)
    params          INTEGER NOT NULL,       -- trainable parameters
    mflops          REAL    NOT NULL,       -- forward pass, one image, in MFLOPs
    status          TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'done', 'failed', 'interrupted')),
    -- Who runs it and when it last said so: a `running` trial whose heartbeat is stale lost its
    -- worker and may be claimed by another.
    worker          TEXT,
    heartbeat_at    TEXT,
    started_at      TEXT,
    finished_at     TEXT,
    error           TEXT,                   -- why it failed (status 'failed')
    -- Model selection is on the validation split; test_error is that of the best checkpoint.
    best_val_error  REAL,                   -- fraction, 0.0875 = 8.75 %
    best_step       INTEGER,
    test_error      REAL,                   -- fraction
    -- Progress, rewritten at every record.
    steps           INTEGER,                -- iterations done
    train_loss      REAL,
    wall_s          REAL,                   -- training time so far, seconds
    images_per_s    REAL,
    attempts        INTEGER NOT NULL DEFAULT 0  -- times claimed
);

CREATE INDEX trials_experiment ON trials(experiment_id, ord);
CREATE INDEX trials_status ON trials(status);

-- Long format, one row per value: (step 400, 'val', 'error', 0.12). A resumed trial rewrites
-- the steps after its last checkpoint, hence the primary key.
CREATE TABLE metrics (
    trial_id    INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
    step        INTEGER NOT NULL,
    epoch       REAL    NOT NULL,
    split       TEXT    NOT NULL,           -- 'train', 'val', 'test'
    name        TEXT    NOT NULL,           -- 'loss', 'error', 'lr', ...
    value       REAL    NOT NULL,
    PRIMARY KEY (trial_id, step, split, name)
) WITHOUT ROWID;

-- At most one of each kind per trial, written in the same transaction as the metrics that
-- justify it. 'best': weights and BN statistics (safetensors) of the lowest validation error;
-- 'last': everything needed to resume (weights, optimizer state, schedule position, RNG state).
CREATE TABLE checkpoints (
    trial_id    INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
    kind        TEXT    NOT NULL CHECK (kind IN ('best', 'last')),
    step        INTEGER NOT NULL,
    sha256      TEXT    NOT NULL,           -- hex digest of bytes
    bytes       BLOB    NOT NULL,
    PRIMARY KEY (trial_id, kind)
);

-- trial_summary: one row per trial, what `runner report` prints.
--
--   experiment      experiment name
--   trial           trial id (`runner show 12`)
--   key             first 12 hex characters of the trial key (`runner show 3fa2c1`)
--   ord             position in the grid
--   arch            architecture plugin ('plain', 'resnet')
--   depth, shortcut, preact, block, width
--                   architecture parameters from config_json; NULL where the architecture
--                   has no such parameter (plain nets: no shortcut, preact or block)
--   seed            training seed
--   dataset         dataset kind ('cifar10', 'synthetic', ...)
--   params          trainable parameters
--   mflops          forward pass for one image, MFLOPs
--   status          pending | running | done | failed | interrupted
--   steps           iterations done
--   best_val_error  lowest validation error (fraction) and the step it was reached at
--   best_step
--   test_error      test error (fraction) of the best-validation checkpoint
--   train_loss      last recorded training loss
--   wall_s          training time, seconds
--   images_per_s    training throughput
--   error           why the trial failed
--   started_at, finished_at   UTC, ISO 8601
--
-- Example: sqlite3 runs.db "select arch, depth, test_error from trial_summary where status = 'done'"
CREATE VIEW trial_summary AS
SELECT
    e.name                                           AS experiment,
    t.id                                             AS trial,
    substr(t.key, 1, 12)                             AS key,
    t.ord                                            AS ord,
    t.arch                                           AS arch,
    json_extract(t.config_json, '$.params.depth')    AS depth,
    json_extract(t.config_json, '$.params.shortcut') AS shortcut,
    json_extract(t.config_json, '$.params.preact')   AS preact,
    json_extract(t.config_json, '$.params.block')    AS block,
    json_extract(t.config_json, '$.params.width')    AS width,
    json_extract(t.config_json, '$.seed')            AS seed,
    json_extract(t.config_json, '$.dataset.kind')    AS dataset,
    t.params                                         AS params,
    t.mflops                                         AS mflops,
    t.status                                         AS status,
    t.steps                                          AS steps,
    t.best_val_error                                 AS best_val_error,
    t.best_step                                      AS best_step,
    t.test_error                                     AS test_error,
    t.train_loss                                     AS train_loss,
    t.wall_s                                         AS wall_s,
    t.images_per_s                                   AS images_per_s,
    t.error                                          AS error,
    t.started_at                                     AS started_at,
    t.finished_at                                    AS finished_at
FROM trials t
JOIN experiments e ON e.id = t.experiment_id;
