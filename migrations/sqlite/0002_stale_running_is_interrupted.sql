-- trial_summary, redefined with one change: a `running` trial whose runner has not sent a
-- heartbeat for 120 seconds shows as `interrupted`. Its runner was killed or its machine lost
-- (a live runner refreshes its heartbeat every 10 seconds at most); the next `runner run` of its
-- grid resumes it from its `last` checkpoint. The `trials` table keeps the raw status: that is
-- what runners claim on. 120 s is the default of `runner run --stale-after`.
--
-- The columns are those of 0001_initial.sql, documented there.
DROP VIEW trial_summary;

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
