"""The export's read pre-check on MLflow's database: every table and column it reads is readable.

Run once after the source's own check and before any row, so a read-only role
without its grants is one line and exit 2 (``SetupError``), not one ``failed``
row per run. Each probe is the export's own read with ``LIMIT 0``: it asks
PostgreSQL exactly the privileges the real queries need, and reads no data.

Example::

    check_reads(SqlSource(url))   # SetupError("... cannot read table metrics ...", 2)
"""

from __future__ import annotations

from typing import Any

from metrics_ingest.batch import SetupError, first_line

# What metrics_ingest.mlflow_export.sql reads, table by table.
READS = {
    "runs": "run_uuid, experiment_id, name, status, lifecycle_stage, start_time, end_time",
    "params": "run_uuid, key, value",
    "tags": "run_uuid, key, value",
    "metrics": "run_uuid, key, step, timestamp, value, is_nan",
}

SETTING = "--mlflow-database-url"
GRANT_HINT = (
    "grant the role SELECT on runs, params, tags and metrics "
    "(docs/mlflow-runbook.md, 'A read-only role on MLflow's database')"
)


def check_reads(source: Any) -> None:
    """Raise SetupError (exit 2) naming the first table the source's role cannot read; a REST source
    (no database) passes."""
    url = getattr(source, "url", None)
    if url is None or not hasattr(source, "connect_timeout"):
        return
    import psycopg2
    from psycopg2 import errorcodes

    from ingest.redact import connection_error, dsn_secrets, scrub

    try:
        conn = psycopg2.connect(url, connect_timeout=source.connect_timeout)
    except psycopg2.Error as exc:  # libpq may quote the connection string: shown through ingest.redact only
        raise SetupError(
            f"cannot connect to the MLflow database ({SETTING}): {connection_error(exc, url, SETTING)}"
        ) from None
    try:
        conn.set_session(readonly=True)
        for table, columns in READS.items():
            try:
                with conn, conn.cursor() as cur:
                    cur.execute(f"SELECT {columns} FROM {table} LIMIT 0")  # names: our constants above
            except psycopg2.Error as exc:
                if exc.pgcode == errorcodes.INSUFFICIENT_PRIVILEGE:
                    raise SetupError(
                        f"{SETTING}: the role cannot read table {table} (permission denied); {GRANT_HINT}",
                        2,
                    ) from None
                detail = scrub(first_line(exc), dsn_secrets(url))
                raise SetupError(f"cannot read table {table} of the MLflow database: {detail}") from None
    finally:
        conn.close()
