-- Drops the export's records: accepted losses, verifications and the kept copies
-- of replaced histories (restore what you need first: `export-mlflow --restore`).
DROP TABLE IF EXISTS mlflow_export_replaced_histories;
DROP TABLE IF EXISTS mlflow_export_verifications;
DROP TABLE IF EXISTS mlflow_export_decisions;
