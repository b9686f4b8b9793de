-- DEV/TEST ONLY. Never applied by `metrics-ingest migrate`.
-- Mirrors the platform's Django model QuickTest (app ml_platform), so local
-- runs and tests have the table the function writes to. In production the
-- table belongs to Django and already exists.
CREATE TABLE IF NOT EXISTS ml_platform_quicktest (
    id                     bigserial PRIMARY KEY,
    name                   varchar(255) NOT NULL DEFAULT '',
    status                 varchar(32)  NOT NULL DEFAULT 'pending',
    gcs_artifacts_path     varchar(500) NOT NULL DEFAULT '',
    mlflow_run_id          varchar(255) NOT NULL DEFAULT '',
    training_history_json  jsonb NULL,
    created_at             timestamptz  NOT NULL DEFAULT now(),
    updated_at             timestamptz  NOT NULL DEFAULT now()
);
