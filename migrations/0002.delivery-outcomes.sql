-- depends: 0001.create-ingestions
-- Delivery (bounded attempts, same bytes, one record per event):
-- * outcomes 'unchanged' (same bytes as the generation the row holds: decided
--   from the event's md5Hash/crc32c, nothing downloaded) and 'expired' (an event
--   older than MAX_EVENT_AGE that would have been retried, acknowledged instead);
-- * the hashes the event gave for the generation, kept with every record (an
--   'ingested' record says which bytes the row holds);
-- * at most one record per event and object generation: a retried database step
--   whose first commit went through (its acknowledgement lost) adds nothing, and
--   a redelivered event finds its earlier outcome.
ALTER TABLE training_metrics_ingestions
    ADD COLUMN md5_hash text NULL,
    ADD COLUMN crc32c   text NULL;

ALTER TABLE training_metrics_ingestions DROP CONSTRAINT training_metrics_ingestions_outcome_check;
ALTER TABLE training_metrics_ingestions ADD CONSTRAINT training_metrics_ingestions_outcome_check
    CHECK (outcome IN ('ingested', 'duplicate', 'superseded', 'no_matching_row', 'rejected', 'unchanged', 'expired'));

-- The second records the old code could write that way go; the first of each event stays.
DELETE FROM training_metrics_ingestions later
 USING training_metrics_ingestions first
 WHERE later.event_id = first.event_id
   AND later.bucket = first.bucket
   AND later.object_name = first.object_name
   AND later.generation = first.generation
   AND later.id > first.id;

CREATE UNIQUE INDEX training_metrics_ingestions_one_per_event
    ON training_metrics_ingestions (event_id, bucket, object_name, generation)
    WHERE event_id IS NOT NULL;
