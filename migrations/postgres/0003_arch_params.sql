-- trial_summary without a column per resnet parameter, and trial_params, as in
-- migrations/sqlite/0003_arch_params.sql (which documents every column).
--
--   arch_params     the architecture's parameters as JSON text, as the runner wrote them:
--                   '{"depth":20,"width":16}'. Read one with (arch_params::jsonb ->> 'depth').
--
-- Example: psql "$RUNNER_DB" -c "select arch, arch_params::jsonb ->> 'depth' as depth,
--                                test_error from trial_summary where status = 'done'"
DROP VIEW trial_summary;

CREATE VIEW trial_summary AS
SELECT
    e.name                                           AS experiment,
    t.id                                             AS trial,
    substr(t.key, 1, 12)                             AS key,
    t.ord                                            AS ord,
    t.arch                                           AS arch,
    -- json rather than jsonb: the text keeps the runner's key order and spacing.
    (t.config_json::json -> 'params')::text          AS arch_params,
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

-- trial_params: one row per trial and parameter. `value` is text here ('20', 'B', 'true');
-- `value::bigint` for a number.
CREATE VIEW trial_params AS
SELECT
    e.name                                           AS experiment,
    t.id                                             AS trial,
    t.arch                                           AS arch,
    p.key                                            AS name,
    p.value                                          AS value
FROM trials t
JOIN experiments e ON e.id = t.experiment_id
CROSS JOIN json_each_text(t.config_json::json -> 'params') p;
