-- trial_summary, redefined as in migrations/sqlite/0002_stale_running_is_interrupted.sql: a
-- `running` trial whose runner has not sent a heartbeat for 120 seconds (by the server's clock,
-- which every runner's heartbeat is written with) shows as `interrupted`.
DROP VIEW trial_summary;

CREATE VIEW trial_summary AS
SELECT
    e.name                                           AS experiment,
    t.id                                             AS trial,
    substr(t.key, 1, 12)                             AS key,
    t.ord                                            AS ord,
    t.arch                                           AS arch,
    (t.config_json::jsonb #>> '{params,depth}')::bigint AS depth,
    t.config_json::jsonb #>> '{params,shortcut}'     AS shortcut,
    (t.config_json::jsonb #>> '{params,preact}')::boolean AS preact,
    t.config_json::jsonb #>> '{params,block}'        AS block,
    (t.config_json::jsonb #>> '{params,width}')::bigint AS width,
    (t.config_json::jsonb ->> 'seed')::bigint        AS seed,
    t.config_json::jsonb #>> '{dataset,kind}'        AS dataset,
    t.params                                         AS params,
    t.mflops                                         AS mflops,
    CASE
        WHEN t.status = 'running'
             AND (t.heartbeat_at IS NULL
                  OR now() - t.heartbeat_at::timestamptz > interval '120 seconds')
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
