"""What every export worker shares: options, settings, the storage client, one database connection per
thread, the phase timings, and the record of each verification.

Example::

    context = Context(options, settings, client, report)
    context.histories([42])[42]["mlflow"]["run_id"]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ingest.config import Settings
from metrics_ingest.mlflow_export import records
from metrics_ingest.mlflow_export.model import MlflowRun
from metrics_ingest.mlflow_export.options import ExportOptions
from metrics_ingest.mlflow_export.report import ExportReport
from metrics_ingest.mlflow_export.rows import QuickTestRow, read_histories


class Context:
    """What every worker shares: options, settings, the storage client, one database connection per thread."""

    def __init__(self, options: ExportOptions, settings: Settings, client: Any, report: ExportReport) -> None:
        self.options = options
        self.settings = settings
        self.client = client
        self.run_id = report.run_id
        self.report = report
        self._lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[Any] = []

    def conn(self) -> Any:
        """This thread's own connection (a connect per row costs more than the work)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            import psycopg2

            conn = self._local.conn = psycopg2.connect(
                self.settings.database_url or "", connect_timeout=self.settings.db_connect_timeout
            )
            with self._lock:
                self._connections.append(conn)
        return conn

    def db(self, work: Callable[[Any], Any]) -> Any:
        """``work(conn)`` in one transaction on this thread's connection; a dropped connection is closed
        so that the next row opens a new one."""
        import psycopg2

        conn = self.conn()
        try:
            with conn:
                return work(conn)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            conn.close()
            raise

    def histories(self, ids: list[int]) -> dict[int, Any]:
        import psycopg2

        conn = self.conn()
        try:
            return read_histories(self.settings, ids, conn)  # its own transaction on this connection
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def timed(self, phase: str, started: float) -> None:
        with self._lock:
            self.report.timings[phase] += time.perf_counter() - started

    def record(self, row: QuickTestRow, run: MlflowRun, verification: str, reason: str | None, history: Any) -> None:
        """Keep the verification; a verified export supersedes an accepted loss."""

        def work(conn: Any) -> None:
            source = history.get("source") if isinstance(history, dict) else None
            records.record_verification(conn, self.run_id, row.id, run.run_id, verification, reason, source)
            if verification == "verified":
                records.supersede(conn, row.id, self.run_id)

        self.db(work)

    def existing_blob(self, row: QuickTestRow, name: str | None = None) -> Any:
        """The folder's metrics file (or ``name``) as GCS has it now, or None."""
        bucket, folder = row.folder()  # type: ignore[misc]
        return self.client.bucket(bucket).get_blob(
            f"{folder}/{name or self.settings.metrics_filename}", timeout=self.settings.gcs_timeout
        )


def blob_uri(blob: Any) -> str:
    return f"gs://{blob.bucket.name}/{blob.name}#{blob.generation}"
