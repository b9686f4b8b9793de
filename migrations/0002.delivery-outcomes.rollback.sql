-- Back to 0001: the records of the new outcomes cannot be kept under its constraint.
DROP INDEX IF EXISTS training_metrics_ingestions_one_per_event;
DELETE FROM training_metrics_ingestions WHERE outcome IN ('unchanged', 'expired');
ALTER TABLE training_metrics_ingestions DROP CONSTRAINT training_metrics_ingestions_outcome_check;
ALTER TABLE training_metrics_ingestions ADD CONSTRAINT training_metrics_ingestions_outcome_check
    CHECK (outcome IN ('ingested', 'duplicate', 'superseded', 'no_matching_row', 'rejected'));
ALTER TABLE training_metrics_ingestions DROP COLUMN md5_hash, DROP COLUMN crc32c;
