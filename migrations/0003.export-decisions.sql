-- The MLflow export's own records (the platform's table is never altered):
-- operators' decisions, the last verification of each exported row, and every
-- history `export-mlflow --all` replaced, kept restorably.

-- `export-mlflow --accept-loss --quicktest ID --reason TEXT`: who accepted that a
-- row's MLflow history is lost, when and why. deploy.sh teardown-mlflow's check
-- honours the newest one per row that is not superseded (a later successful
-- export of the row supersedes it).
CREATE TABLE mlflow_export_decisions (
    id             bigserial PRIMARY KEY,
    quicktest_id   bigint NOT NULL,
    mlflow_run_id  text NOT NULL,
    decision       text NOT NULL CHECK (decision IN ('accept_loss')),
    reason         text NOT NULL CHECK (btrim(reason) <> ''),
    decided_by     text NOT NULL,
    decided_at     timestamptz NOT NULL DEFAULT now(),
    superseded_at  timestamptz NULL,
    superseded_by  text NULL
);

CREATE INDEX mlflow_export_decisions_open
    ON mlflow_export_decisions (quicktest_id) WHERE superseded_at IS NULL;

-- The newest verification of each row (exports and --verify-only): `--repair`
-- takes the rows whose last one was a mismatch, and the generation it saw.
CREATE TABLE mlflow_export_verifications (
    quicktest_id   bigint PRIMARY KEY,
    mlflow_run_id  text NOT NULL,
    verification   text NOT NULL CHECK (verification IN ('verified', 'mismatch')),
    reason         text NULL,
    bucket         text NULL,
    object_name    text NULL,
    generation     bigint NULL,
    export_run_id  text NOT NULL,
    checked_at     timestamptz NOT NULL DEFAULT now()
);

-- What `export-mlflow --all` replaced: the row's training_history_json as
-- PostgreSQL printed it (jsonb's text form: restoring it gives back the same
-- jsonb, byte for byte). `export-mlflow --restore --quicktest ID` puts the newest
-- unrestored one back.
CREATE TABLE mlflow_export_replaced_histories (
    id             bigserial PRIMARY KEY,
    quicktest_id   bigint NOT NULL,
    mlflow_run_id  text NULL,
    history        text NOT NULL,
    export_run_id  text NOT NULL,
    replaced_at    timestamptz NOT NULL DEFAULT now(),
    restored_at    timestamptz NULL
);

CREATE INDEX mlflow_export_replaced_histories_quicktest
    ON mlflow_export_replaced_histories (quicktest_id, id);
