-- The ingestion's statements, each written whole; ingest.store loads them once.
--
-- Parameters are psql variables, so a statement can be pasted into psql as it
-- stands (prefix EXPLAIN to see its plan), after, for example:
--   \set quicktest_table ml_platform_quicktest
--   \set bucket ml-artifacts
--   \set object_name quick_tests/42/training_metrics.json
--   \set path gs://ml-artifacts/quick_tests/42
--   \set path_slash gs://ml-artifacts/quick_tests/42/
--   \set generation 1700000000000000
--   \set event_id e1
--   \set md5_hash 1B2M2Y8AsgTpgAmY7PhCfg==
--   \set crc32c AAAAAA==
--   \set force false
--   \set record true
--   ... and the record's own columns (size_bytes, epochs, duration_ms, payload).
-- ingest.store turns :'name' into psycopg2's %(name)s (a value, sent as a
-- parameter) and :"quicktest_table" into the quoted QUICKTEST_TABLE (one or two
-- identifiers). Each statement is one round trip.
--
-- Both decisions read the same facts:
--   q       the QuickTest row of the object's folder (at most one);
--   prior   this very event's record, if it was already settled (a redelivery,
--           or a retried step whose first commit went through unacknowledged):
--           the event is then a 'duplicate', and nothing is recorded again;
--   newest  the newest generation the row holds by the log: 'ingested', or
--           'unchanged' (the same bytes under a newer generation: for the
--           generation guard it counts as written, so a generation between the
--           two never overwrites it), with the hashes of its bytes;
--   g       one line: the row, whether this generation is done, and `current`,
--           the newest generation (from the log; only when the log knows
--           nothing of the object, from the row's own `source`, read once:
--           OFFSET 0 keeps the jsonb from being read for each reference).


-- name: check
-- What the database alone decides before any download: no row, this event
-- already settled, a duplicate, a newer generation already in the row, or the
-- same bytes as the generation the row holds ('unchanged'); recorded by the
-- same statement when :'record'. No locks.
WITH q AS (
    SELECT id FROM :"quicktest_table"
     WHERE gcs_artifacts_path IN (:'path', :'path_slash')
     ORDER BY id DESC LIMIT 1
), prior AS (
    SELECT outcome, reason FROM training_metrics_ingestions
     WHERE event_id = :'event_id' AND bucket = :'bucket' AND object_name = :'object_name'
       AND generation = :'generation'
     ORDER BY id LIMIT 1
), newest AS (
    SELECT generation, md5_hash, crc32c FROM training_metrics_ingestions
     WHERE bucket = :'bucket' AND object_name = :'object_name' AND outcome IN ('ingested', 'unchanged')
     ORDER BY generation DESC LIMIT 1
), g AS MATERIALIZED (
    SELECT q.id,
           EXISTS (SELECT 1 FROM training_metrics_ingestions
                    WHERE bucket = :'bucket' AND object_name = :'object_name' AND generation = :'generation'
                      AND outcome IN ('ingested', 'unchanged')) AS this_one,
           coalesce((SELECT generation FROM newest),
                    (SELECT CASE WHEN s ->> 'bucket' = :'bucket' AND s ->> 'object' = :'object_name'
                                  AND s ->> 'generation' ~ '^[0-9]{1,19}$'
                                 THEN (s ->> 'generation')::numeric END
                       FROM (SELECT x.training_history_json -> 'source' AS s FROM :"quicktest_table" x
                              WHERE x.id = q.id OFFSET 0) y)) AS current,
           CASE WHEN :'md5_hash'::text IS NOT NULL AND (SELECT md5_hash FROM newest) IS NOT NULL
                THEN (SELECT md5_hash FROM newest) = :'md5_hash'::text
                WHEN :'crc32c'::text IS NOT NULL AND (SELECT crc32c FROM newest) IS NOT NULL
                THEN (SELECT crc32c FROM newest) = :'crc32c'::text
                ELSE false END AS same_bytes,
           (SELECT generation FROM newest) AS hashed_generation
      FROM (SELECT 1) one LEFT JOIN q ON true
), d AS (
    SELECT g.id, g.current, g.this_one OR g.current = :'generation' AS done, p.outcome IS NOT NULL AS settled,
           CASE WHEN p.outcome IS NOT NULL THEN 'duplicate'
                WHEN g.id IS NULL THEN 'no_matching_row'
                WHEN (g.this_one OR g.current = :'generation') AND NOT :'force'::boolean THEN 'duplicate'
                WHEN g.current > :'generation' THEN 'superseded'
                WHEN g.same_bytes AND g.hashed_generation = g.current AND NOT :'force'::boolean THEN 'unchanged'
           END AS outcome,
           CASE WHEN p.outcome IS NOT NULL THEN 'this event was already handled: ' || p.outcome
                WHEN g.id IS NULL THEN :'no_row'
                WHEN (g.this_one OR g.current = :'generation') AND NOT :'force'::boolean THEN :'duplicate'
                WHEN g.current > :'generation' THEN 'the row already holds newer generation ' || g.current
                WHEN g.same_bytes AND g.hashed_generation = g.current AND NOT :'force'::boolean
                THEN 'the same bytes as generation ' || g.current || ', which the row holds (not downloaded)'
           END AS reason
      FROM g LEFT JOIN prior p ON true
), rec AS (
    INSERT INTO training_metrics_ingestions
           (bucket, object_name, generation, event_id, quicktest_id, outcome, reason,
            size_bytes, epochs, duration_ms, forced, md5_hash, crc32c)
    SELECT :'bucket', :'object_name', :'generation', :'event_id', d.id, d.outcome, d.reason,
           :'size_bytes', NULL, :'duration_ms', false, :'md5_hash', :'crc32c'
      FROM d
     WHERE d.outcome IS NOT NULL AND NOT d.settled AND :'record'::boolean
        ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT id, current, done, outcome, reason, settled FROM d;


-- name: write
-- The guarded write, two statements in one round trip (one implicit
-- transaction). The first locks the row; the second takes its snapshot after
-- the lock is granted, so it sees every earlier writer's commit (one statement
-- could not: its snapshot would predate the lock wait). The second decides
-- (settled before / no row / superseded / duplicate / ingested), inserts the
-- event's one record (ON CONFLICT DO NOTHING: the unique indexes on ingested
-- generations and on events), updates the row only when an 'ingested' record
-- went in and, should the ingested index refuse it, records 'duplicate'
-- instead. The last column tells the platform: one pg_notify on NOTIFY_CHANNEL
-- per updated row (payload: quicktest_id, generation as a string, status,
-- epochs, outcome), none for any other outcome or when the channel is empty;
-- a NOTIFY is delivered at commit, so a rolled-back write tells nobody.
SELECT id FROM :"quicktest_table"
 WHERE gcs_artifacts_path IN (:'path', :'path_slash')
 ORDER BY id DESC LIMIT 1
   FOR UPDATE;
WITH q AS (
    SELECT id FROM :"quicktest_table"
     WHERE gcs_artifacts_path IN (:'path', :'path_slash')
     ORDER BY id DESC LIMIT 1
), prior AS (
    SELECT outcome, reason FROM training_metrics_ingestions
     WHERE event_id = :'event_id' AND bucket = :'bucket' AND object_name = :'object_name'
       AND generation = :'generation'
     ORDER BY id LIMIT 1
), g AS MATERIALIZED (
    SELECT q.id,
           coalesce((SELECT max(generation) FROM training_metrics_ingestions
                      WHERE bucket = :'bucket' AND object_name = :'object_name'
                        AND outcome IN ('ingested', 'unchanged')),
                    (SELECT CASE WHEN s ->> 'bucket' = :'bucket' AND s ->> 'object' = :'object_name'
                                  AND s ->> 'generation' ~ '^[0-9]{1,19}$'
                                 THEN (s ->> 'generation')::numeric END
                       FROM (SELECT x.training_history_json -> 'source' AS s FROM :"quicktest_table" x
                              WHERE x.id = q.id OFFSET 0) y)) AS current
      FROM (SELECT 1) one LEFT JOIN q ON true
), d AS (
    SELECT g.id, g.current, g.current = :'generation' AS forced, p.outcome IS NOT NULL AS settled,
           CASE WHEN p.outcome IS NOT NULL THEN 'duplicate'
                WHEN g.id IS NULL THEN 'no_matching_row'
                WHEN g.current IS NULL OR :'generation' > g.current THEN 'ingested'
                WHEN :'generation' < g.current THEN 'superseded'
                WHEN NOT :'force'::boolean THEN 'duplicate'
                ELSE 'ingested'
           END AS outcome,
           'this event was already handled: ' || p.outcome AS prior_reason
      FROM g LEFT JOIN prior p ON true
), e AS (
    SELECT d.*,
           CASE WHEN d.settled THEN d.prior_reason
                WHEN d.outcome = 'no_matching_row' THEN :'no_row'
                WHEN d.outcome = 'duplicate' THEN :'duplicate'
                WHEN d.outcome = 'superseded' THEN 'the row already holds newer generation ' || d.current
           END AS reason
      FROM d
), rec AS (
    INSERT INTO training_metrics_ingestions
           (bucket, object_name, generation, event_id, quicktest_id, outcome, reason,
            size_bytes, epochs, duration_ms, forced, md5_hash, crc32c)
    SELECT :'bucket', :'object_name', :'generation', :'event_id', e.id, e.outcome, e.reason,
           :'size_bytes', :'epochs', :'duration_ms', e.outcome = 'ingested' AND coalesce(e.forced, false),
           :'md5_hash', :'crc32c'
      FROM e
     WHERE NOT e.settled
        ON CONFLICT DO NOTHING
    RETURNING outcome
), upd AS (
    UPDATE :"quicktest_table" SET training_history_json = :'payload'::jsonb
     WHERE id = (SELECT id FROM e) AND EXISTS (SELECT 1 FROM rec WHERE outcome = 'ingested')
    RETURNING id
), dup AS (
    INSERT INTO training_metrics_ingestions
           (bucket, object_name, generation, event_id, quicktest_id, outcome, reason,
            size_bytes, epochs, duration_ms, forced, md5_hash, crc32c)
    SELECT :'bucket', :'object_name', :'generation', :'event_id', e.id, 'duplicate', :'duplicate',
           :'size_bytes', :'epochs', :'duration_ms', false, :'md5_hash', :'crc32c'
      FROM e
     WHERE e.outcome = 'ingested' AND NOT e.settled AND NOT EXISTS (SELECT 1 FROM rec)
        ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT e.id,
       CASE WHEN EXISTS (SELECT 1 FROM dup) THEN 'duplicate' ELSE e.outcome END,
       CASE WHEN EXISTS (SELECT 1 FROM dup) THEN :'duplicate' ELSE e.reason END,
       coalesce(e.forced, false),
       (SELECT count(*) FROM upd),
       e.settled,
       (SELECT count(pg_notify(:'channel', json_build_object(
                   'quicktest_id', upd.id, 'generation', :'generation'::text, 'status', :'status'::text,
                   'epochs', :'epochs'::integer, 'outcome', 'ingested')::text))
          FROM upd WHERE :'channel' <> '') AS notified
  FROM e;


-- name: record
-- An outcome decided without writing the row (rejected, gone, expired), once per event.
INSERT INTO training_metrics_ingestions
       (bucket, object_name, generation, event_id, quicktest_id, outcome, reason,
        size_bytes, epochs, duration_ms, forced, md5_hash, crc32c)
VALUES (:'bucket', :'object_name', :'generation', :'event_id', :'quicktest_id', :'outcome', :'reason',
        :'size_bytes', :'epochs', :'duration_ms', :'forced'::boolean, :'md5_hash', :'crc32c')
    ON CONFLICT DO NOTHING;
