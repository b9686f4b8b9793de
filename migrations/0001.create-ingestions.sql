-- One record per matching finalize event: what the function did with it.
-- Idempotency lives here: at most one 'ingested' record per object generation
-- (forced re-ingestions, `replay --force`, are recorded beside it).
CREATE TABLE training_metrics_ingestions (
    id            bigserial PRIMARY KEY,
    bucket        text NOT NULL,
    object_name   text NOT NULL,
    generation    bigint NOT NULL,
    event_id      text NULL,
    quicktest_id  bigint NULL,
    outcome       text NOT NULL
                  CHECK (outcome IN ('ingested', 'duplicate', 'superseded', 'no_matching_row', 'rejected')),
    reason        text NULL,
    size_bytes    bigint NULL,
    epochs        integer NULL,
    duration_ms   double precision NOT NULL DEFAULT 0,
    forced        boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX training_metrics_ingestions_one_ingested
    ON training_metrics_ingestions (bucket, object_name, generation)
    WHERE outcome = 'ingested' AND NOT forced;

-- "What happened to this object?" and the newest ingested generation.
CREATE INDEX training_metrics_ingestions_object
    ON training_metrics_ingestions (bucket, object_name, generation);

-- "What happened to this QuickTest?"
CREATE INDEX training_metrics_ingestions_quicktest
    ON training_metrics_ingestions (quicktest_id, created_at)
    WHERE quicktest_id IS NOT NULL;
