"""Settling rows by hand: an accepted loss (``--accept-loss``) and a restore (``--restore``).

Neither reads MLflow. ``accept_loss`` records, per row, who accepted that its
MLflow history is lost, when and why (``mlflow_export_decisions``); deploy.sh
teardown-mlflow's check then lists the row apart instead of refusing for it.
``restore`` puts back the history an export replaced (``--all``), from the
copy kept in ``mlflow_export_replaced_histories``.

Example::

    for line in accept_loss(settings, [42], "the run was deleted from MLflow in 2024"):
        print(line)
"""

from __future__ import annotations

from typing import Any

from ingest.config import Settings
from metrics_ingest.batch import UsageError
from metrics_ingest.mlflow_export import records
from metrics_ingest.mlflow_export.rows import NO_HISTORY, connect


def accept_loss(settings: Settings, ids: list[int], reason: str) -> list[dict[str, Any]]:
    """Record the decision for each row (one transaction); raises UsageError for a row that is not at
    risk (no such row, no mlflow_run_id, or a history already there) so nothing is recorded for a typo."""
    from psycopg2 import sql

    if not ids:
        raise UsageError("--accept-loss needs the rows it settles: --quicktest ID (repeatable)")
    if not reason.strip():
        raise UsageError("--accept-loss needs --reason TEXT: why this history may be lost (kept with who and when)")
    conn = connect(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT id, btrim(coalesce(mlflow_run_id, '')), " + NO_HISTORY + " FROM {} WHERE id = ANY(%s)")
                .format(sql.Identifier(*settings.quicktest_table_name)),
                (ids,),
            )
            found = {row[0]: row for row in cur.fetchall()}
            for i in ids:
                if i not in found:
                    raise UsageError(f"--accept-loss: no QuickTest row with id {i}; nothing recorded")
                if not found[i][1]:
                    raise UsageError(f"--accept-loss: row {i} has no mlflow_run_id (nothing to lose); nothing recorded")
                if not found[i][2]:
                    raise UsageError(f"--accept-loss: row {i} already has a history (not at risk); nothing recorded")
            decisions = [records.record_accept_loss(conn, i, found[i][1], reason.strip()) for i in ids]
    finally:
        conn.close()
    return [{"quicktest_id": d.quicktest_id, **d.to_dict()} for d in decisions]


def restore(settings: Settings, ids: list[int]) -> list[dict[str, Any]]:
    """Put each row's newest replaced history back (one transaction per row); what was restored.

    Raises UsageError when ``ids`` is empty; a row without a kept copy is reported, not an error."""
    if not ids:
        raise UsageError("--restore needs the rows to restore: --quicktest ID (repeatable)")
    results = []
    conn = connect(settings)
    try:
        for i in ids:
            with conn:
                done = records.restore_history(conn, settings.quicktest_table_name, i)
            results.append({
                "quicktest_id": i,
                "restored": done is not None,
                "copy_id": None if done is None else done[0],
                "replaced_at": None if done is None else done[1].isoformat(),
            })
    finally:
        conn.close()
    return results
