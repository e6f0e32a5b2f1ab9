-- The PostgreSQL claim statement, side by side: ordering by array_position() (the first version)
-- against the landed join on unnest(...) WITH ORDINALITY (src/store/write.rs), alternating, 5
-- rounds of 1,000 claims on a 1,000-trial table, inside one DO block (the statement alone, no
-- commits). Run on a scratch database:  psql postgres://USER@HOST/scratch -f bench/claims-statement.sql
DROP TABLE IF EXISTS ctrials;
CREATE TABLE ctrials(id bigint PRIMARY KEY, key text UNIQUE, status text, worker text, heartbeat_at text, attempts bigint DEFAULT 0);
INSERT INTO ctrials SELECT i, md5(i::text) || md5((i + 1)::text), 'pending', NULL, NULL, 0 FROM generate_series(1, 1000) i;
CREATE TEMP TABLE results(round int, variant text, ms_per_claim float8);
DO $$
DECLARE
  keys text[] := (SELECT array_agg(key ORDER BY id) FROM ctrials);
  t0 timestamptz; r int; v text; i int;
BEGIN
  FOR r IN 1..5 LOOP
    FOREACH v IN ARRAY (CASE WHEN r % 2 = 1 THEN ARRAY['array_position', 'unnest'] ELSE ARRAY['unnest', 'array_position'] END) LOOP
      UPDATE ctrials SET status = 'pending', worker = NULL;
      t0 := clock_timestamp();
      FOR i IN 1..1000 LOOP
        IF v = 'array_position' THEN
          UPDATE ctrials t SET status = 'running', worker = 'w', attempts = t.attempts + 1
          FROM (SELECT id FROM ctrials WHERE key = ANY(keys) AND status = 'pending'
                ORDER BY array_position(keys, key) LIMIT 1 FOR UPDATE SKIP LOCKED) old
          WHERE t.id = old.id;
        ELSE
          UPDATE ctrials t SET status = 'running', worker = 'w', attempts = t.attempts + 1
          FROM (SELECT c.id FROM ctrials c JOIN unnest(keys) WITH ORDINALITY AS k(key, n) ON k.key = c.key
                WHERE c.status = 'pending' ORDER BY k.n LIMIT 1 FOR UPDATE OF c SKIP LOCKED) old
          WHERE t.id = old.id;
        END IF;
      END LOOP;
      INSERT INTO results VALUES (r, v, extract(epoch FROM clock_timestamp() - t0) * 1000 / 1000);
    END LOOP;
  END LOOP;
END $$;
SELECT round, max(ms_per_claim) FILTER (WHERE variant = 'array_position') AS array_position_ms,
       max(ms_per_claim) FILTER (WHERE variant = 'unnest') AS unnest_ms,
       max(ms_per_claim) FILTER (WHERE variant = 'array_position') / max(ms_per_claim) FILTER (WHERE variant = 'unnest') AS ratio
FROM results GROUP BY round ORDER BY round;
SELECT count(*) FILTER (WHERE status <> 'running') AS unclaimed, max(attempts) FROM ctrials;
DROP TABLE ctrials;
