"""Which QuickTest rows an export works on, and what each already holds.

Default: rows with an ``mlflow_run_id`` and no history (the rows ``deploy.sh
teardown-mlflow`` refuses for); ``--all`` adds rows with a history;
``--quicktest ID`` names rows; ``--verify-only`` takes the rows whose history
came from MLflow; ``--repair`` the rows whose last verification was a mismatch.
Each row comes with its open accepted loss and its last verification
(:mod:`.records`).

Example::

    rows = select_rows(settings, ExportOptions(source, select_all=True))
    [(r.id, r.has_history, r.history_source) for r in rows]
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ingest.config import Settings
from metrics_ingest.mlflow_export import records
from metrics_ingest.mlflow_export.records import Decision, Verification

# As deploy.sh's teardown check: the rows whose history only MLflow holds.
# (No '{}' literal: the text goes through psycopg2.sql.SQL.format.)
NO_HISTORY = "(training_history_json IS NULL OR training_history_json IN ('null'::jsonb, jsonb_build_object()))"


@dataclasses.dataclass(frozen=True)
class QuickTestRow:
    """The parts of a QuickTest row the export needs.

    ``history_source``: the ``source`` entry of a history the function ingested
    from a file (None: no history, or the old Django cache).
    """

    id: int
    run_id: str
    path: str | None  # gcs_artifacts_path; None: no such row
    has_history: bool = False
    history_source: dict[str, Any] | None = None
    accepted: Decision | None = None
    verification: Verification | None = None
    from_mlflow: bool = False  # the history has the `mlflow` key: an export wrote it

    def folder(self) -> tuple[str, str] | None:
        """(bucket, folder) of ``gs://BUCKET/FOLDER``, trailing slash ignored; None if not a gs:// path."""
        if not self.path or not self.path.startswith("gs://"):
            return None
        bucket, _, folder = self.path[len("gs://") :].partition("/")
        folder = folder.rstrip("/")
        return (bucket, folder) if bucket and folder else None

    @property
    def mismatched(self) -> bool:
        """Whether the last verification of this row (for its current run) was a mismatch."""
        v = self.verification
        return v is not None and v.verification == "mismatch" and v.mlflow_run_id == self.run_id


def connect(settings: Settings) -> Any:
    import psycopg2

    return psycopg2.connect(settings.database_url or "", connect_timeout=settings.db_connect_timeout)


def select_rows(settings: Settings, options: Any) -> list[QuickTestRow]:
    """The rows to work on, by id (see the module docstring for the rules)."""
    from psycopg2 import sql

    columns = sql.SQL(
        "SELECT id, btrim(coalesce(mlflow_run_id, '')), gcs_artifacts_path, NOT " + NO_HISTORY + ","
        " CASE WHEN jsonb_typeof(training_history_json) = 'object' THEN training_history_json -> 'source' END,"
        " coalesce(jsonb_typeof(training_history_json) = 'object' AND training_history_json ? 'mlflow', false)"
        " FROM {} "
    ).format(sql.Identifier(*settings.quicktest_table_name))
    conn = connect(settings)
    try:
        with conn, conn.cursor() as cur:
            ids = list(options.quicktest_ids)
            if options.repair and not ids:
                ids = records.mismatched_ids(conn)
            if ids or options.repair:
                where, params = sql.SQL("WHERE id = ANY(%s)"), (ids,)
            elif options.verify_only:
                where = sql.SQL("WHERE jsonb_typeof(training_history_json) = 'object' AND training_history_json ? 'mlflow'")
                params = ()
            else:
                condition = "" if options.select_all else " AND " + NO_HISTORY
                where, params = sql.SQL("WHERE btrim(coalesce(mlflow_run_id, '')) <> ''" + condition), ()
            cur.execute(columns + where + sql.SQL(" ORDER BY id"), params)
            found = cur.fetchall()
            row_ids = [int(r[0]) for r in found]
            decisions = records.open_decisions(conn, row_ids)
            checks = records.verifications(conn, row_ids)
    finally:
        conn.close()
    rows = []
    for row_id, run_id, path, history, source, from_mlflow in found:
        decision = decisions.get(row_id)
        rows.append(QuickTestRow(
            int(row_id), run_id, path, bool(history), source if isinstance(source, dict) else None,
            decision if decision is not None and decision.mlflow_run_id == run_id else None,
            checks.get(row_id), bool(from_mlflow),
        ))
    if ids:
        known = {row.id for row in rows}
        rows += [QuickTestRow(i, "", None) for i in sorted(set(ids) - known)]
        rows.sort(key=lambda r: r.id)
    return rows


def unrepaired_mismatches(settings: Settings) -> list[int]:
    """Rows whose last verification was a mismatch (a plain export names them: --repair is the way out)."""
    conn = connect(settings)
    try:
        with conn:
            return records.mismatched_ids(conn)
    finally:
        conn.close()


def read_histories(settings: Settings, ids: list[int], conn: Any = None) -> dict[int, Any]:
    """The rows' ``training_history_json`` as the platform reads it (jsonb, parsed).

    ``conn``: a connection to reuse (one transaction is used and ended); None opens and closes one.
    """
    from psycopg2 import sql

    own = conn is None
    if own:
        conn = connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT id, training_history_json FROM {} WHERE id = ANY(%s)").format(
                    sql.Identifier(*settings.quicktest_table_name)
                ),
                (ids,),
            )
            return dict(cur.fetchall())
    finally:
        if own:
            conn.close()
