"""The export's own records (migration 0003): accepted losses, last verifications, replaced histories.

Every statement is whole, values are parameters and the platform's table is
named through ``psycopg2.sql.Identifier``. The platform's columns are never
written here, except ``training_history_json`` by :func:`restore_history`
(the one column the product owns), putting back what ``--all`` replaced.

Example::

    with conn:
        decision = record_accept_loss(conn, 42, "0a1b...", "MLflow lost the run in 2024")
    open_decisions(conn, [42])[42].reason
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
from typing import Any

from psycopg2 import sql

TABLES = ("mlflow_export_decisions", "mlflow_export_verifications", "mlflow_export_replaced_histories")


@dataclasses.dataclass(frozen=True)
class Decision:
    """An operator's accepted loss for one row (who, when, why)."""

    id: int
    quicktest_id: int
    mlflow_run_id: str
    reason: str
    decided_by: str
    decided_at: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "mlflow_run_id": self.mlflow_run_id,
            "reason": self.reason,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at.isoformat(),
        }


@dataclasses.dataclass(frozen=True)
class Verification:
    """A row's newest verification and the file generation it saw."""

    quicktest_id: int
    mlflow_run_id: str
    verification: str
    reason: str | None
    bucket: str | None
    object_name: str | None
    generation: int | None


def operator() -> str:
    """Who runs this: the OS user (the database role is added in SQL as ``current_user``)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "unknown"


_DECISION_COLUMNS = "id, quicktest_id, mlflow_run_id, reason, decided_by, decided_at"


def record_accept_loss(conn: Any, quicktest_id: int, run_id: str, reason: str) -> Decision:
    """Record the decision (in the caller's transaction) and return it."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO mlflow_export_decisions (quicktest_id, mlflow_run_id, decision, reason, decided_by)"
            " VALUES (%s, %s, 'accept_loss', %s, %s || ' (database role ' || current_user || ')')"
            f" RETURNING {_DECISION_COLUMNS}",
            (quicktest_id, run_id, reason, operator()),
        )
        return Decision(*cur.fetchone())


def open_decisions(conn: Any, ids: list[int]) -> dict[int, Decision]:
    """The newest decision per row that is not superseded and still names the row's run."""
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT DISTINCT ON (quicktest_id) {_DECISION_COLUMNS} FROM mlflow_export_decisions"
            " WHERE quicktest_id = ANY(%s) AND superseded_at IS NULL ORDER BY quicktest_id, id DESC",
            (ids,),
        )
        return {row[1]: Decision(*row) for row in cur.fetchall()}


def supersede(conn: Any, quicktest_id: int, export_run_id: str) -> int:
    """Mark the row's open decisions superseded by a successful export; how many."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE mlflow_export_decisions SET superseded_at = now(), superseded_by = %s"
            " WHERE quicktest_id = %s AND superseded_at IS NULL",
            (f"export-mlflow run {export_run_id}", quicktest_id),
        )
        return cur.rowcount


def record_verification(conn: Any, export_run_id: str, quicktest_id: int, run_id: str, verification: str,
                        reason: str | None, source: Any) -> None:
    """Keep the row's newest verification (``source``: the row's ``source`` entry, the file it came from)."""
    source = source if isinstance(source, dict) else {}
    generation = source.get("generation")
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO mlflow_export_verifications"
            " (quicktest_id, mlflow_run_id, verification, reason, bucket, object_name, generation, export_run_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (quicktest_id) DO UPDATE SET mlflow_run_id = EXCLUDED.mlflow_run_id,"
            " verification = EXCLUDED.verification, reason = EXCLUDED.reason, bucket = EXCLUDED.bucket,"
            " object_name = EXCLUDED.object_name, generation = EXCLUDED.generation,"
            " export_run_id = EXCLUDED.export_run_id, checked_at = now()",
            (quicktest_id, run_id, verification, reason, source.get("bucket"), source.get("object"),
             int(generation) if str(generation or "").isdigit() else None, export_run_id),
        )


def verifications(conn: Any, ids: list[int]) -> dict[int, Verification]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT quicktest_id, mlflow_run_id, verification, reason, bucket, object_name, generation"
            " FROM mlflow_export_verifications WHERE quicktest_id = ANY(%s)",
            (ids,),
        )
        return {row[0]: Verification(*row) for row in cur.fetchall()}


def mismatched_ids(conn: Any) -> list[int]:
    """The rows whose newest verification was a mismatch."""
    with conn.cursor() as cur:
        cur.execute("SELECT quicktest_id FROM mlflow_export_verifications WHERE verification = 'mismatch' ORDER BY 1")
        return [row[0] for row in cur.fetchall()]


def keep_history(conn: Any, table: tuple[str, ...], quicktest_id: int, export_run_id: str) -> int | None:
    """Copy the row's current history (jsonb's text form) before it is replaced; the copy's id, or None
    when the row holds no history."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "INSERT INTO mlflow_export_replaced_histories (quicktest_id, mlflow_run_id, history, export_run_id)"
                " SELECT id, mlflow_run_id, training_history_json::text, %s FROM {} WHERE id = %s"
                " AND training_history_json IS NOT NULL RETURNING id"
            ).format(sql.Identifier(*table)),
            (export_run_id, quicktest_id),
        )
        found = cur.fetchone()
        return None if found is None else found[0]


def restore_history(conn: Any, table: tuple[str, ...], quicktest_id: int) -> tuple[int, dt.datetime] | None:
    """Put the newest unrestored copy back into the row (in the caller's transaction); (copy id,
    replaced_at), or None when there is none."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, history, replaced_at FROM mlflow_export_replaced_histories"
            " WHERE quicktest_id = %s AND restored_at IS NULL ORDER BY id DESC LIMIT 1 FOR UPDATE",
            (quicktest_id,),
        )
        found = cur.fetchone()
        if found is None:
            return None
        copy_id, history, replaced_at = found
        cur.execute(
            sql.SQL("UPDATE {} SET training_history_json = %s::jsonb WHERE id = %s").format(sql.Identifier(*table)),
            (history, quicktest_id),
        )
        cur.execute("UPDATE mlflow_export_replaced_histories SET restored_at = now() WHERE id = %s", (copy_id,))
        return copy_id, replaced_at
