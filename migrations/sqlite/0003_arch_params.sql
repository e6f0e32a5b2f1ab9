-- trial_summary, redefined so that it names no architecture's parameters: 0001 and 0002 had a
-- column per parameter of the resnet plugin (depth, shortcut, preact, block, width), so another
-- architecture's parameters were missing from it. They are now one column, `arch_params`, a
-- JSON object; and the view `trial_params` lists them one row per parameter. The stale-heartbeat
-- rule of 0002 is kept as it was.
--
-- trial_summary: one row per trial, what `runner report` prints.
--
--   experiment      experiment name
--   trial           trial id (`runner show 12`)
--   key             first 12 hex characters of the trial key (`runner show 3fa2c1`)
--   ord             position in the grid
--   arch            architecture plugin ('plain', 'resnet', ...; `runner list archs`)
--   arch_params     the architecture's parameters as a JSON object, every parameter the plugin
--                   declares with its defaults filled in: '{"depth":20,"width":16}' for a plain
--                   net. Read one with json_extract(arch_params, '$.depth'): NULL where the
--                   architecture has no such parameter; booleans read as 1 and 0.
--   seed            training seed
--   dataset         dataset kind ('cifar10', 'synthetic', ...)
--   params          trainable parameters
--   mflops          forward pass for one image, MFLOPs
--   status          pending | running | done | failed | interrupted; a `running` trial without
--                   a heartbeat for 120 s reads as `interrupted` (see 0002)
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
-- Example: sqlite3 runs.db "select arch, json_extract(arch_params, '$.depth') as depth, test_error
--                           from trial_summary where status = 'done'"
DROP VIEW trial_summary;

CREATE VIEW trial_summary AS
SELECT
    e.name                                           AS experiment,
    t.id                                             AS trial,
    substr(t.key, 1, 12)                             AS key,
    t.ord                                            AS ord,
    t.arch                                           AS arch,
    json_extract(t.config_json, '$.params')          AS arch_params,
    json_extract(t.config_json, '$.seed')            AS seed,
    json_extract(t.config_json, '$.dataset.kind')    AS dataset,
    t.params                                         AS params,
    t.mflops                                         AS mflops,
    CASE
        WHEN t.status = 'running'
             AND (t.heartbeat_at IS NULL
                  OR (julianday('now') - julianday(t.heartbeat_at)) * 86400.0 > 120)
        THEN 'interrupted'
        ELSE t.status
    END                                              AS status,
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

-- trial_params: the architecture parameters in long format, one row per trial and parameter
-- (every parameter the trial's plugin declares), for joins and group-bys in SQL.
--
--   experiment      experiment name
--   trial           trial id, as in trial_summary
--   arch            architecture plugin
--   name            parameter name ('depth', 'shortcut', ...)
--   value           its value: an integer, text, or 1/0 for true/false
--
-- Example: the test error by depth, whatever the architecture:
--   sqlite3 runs.db "select p.arch, p.value as depth, s.test_error
--                      from trial_params p join trial_summary s using (trial)
--                     where p.name = 'depth' order by p.arch, p.value"
CREATE VIEW trial_params AS
SELECT
    e.name                                           AS experiment,
    t.id                                             AS trial,
    t.arch                                           AS arch,
    p.key                                            AS name,
    p.value                                          AS value
FROM trials t
JOIN experiments e ON e.id = t.experiment_id
JOIN json_each(t.config_json, '$.params') p;
