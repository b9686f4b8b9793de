"""Where the report's runs come from: a local file, a folder of them (an
``export-mlflow --output-dir``), a ``gs://`` object, or a QuickTest row.

Each loader returns :class:`~metrics_ingest.report._runs.Run` objects with
their provenance filled in; a source that cannot be drawn raises
``ReportError`` (one line, exit 2), one that cannot be reached
``SourceUnavailable`` (exit 1).

Example::

    runs = load_sources(["review/", "gs://ml-artifacts/quick_tests/42"], quicktests=[7], settings=Settings.from_env())
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ingest.config import Settings
from metrics_ingest.report._runs import ReportError, Run, SourceUnavailable, run_from_bytes, run_from_document

_ROW = "SELECT training_history_json FROM {} WHERE id = %s"
# The row's latest ingestion record: what the function last did for it.
_LATEST_INGESTION = (
    "SELECT outcome, reason, bucket, object_name, generation, created_at"
    " FROM training_metrics_ingestions WHERE quicktest_id = %s ORDER BY id DESC LIMIT 1"
)


def load_sources(sources: Sequence[str], *, quicktests: Sequence[int] = (), settings: Settings) -> list[Run]:
    """Every run of every source, in the order given (``quicktests`` after ``sources``)."""
    runs: list[Run] = []
    for source in sources:
        if source.startswith("gs://"):
            runs.append(load_gcs(source, settings))
        else:
            runs.extend(load_local(source, settings))
    for quicktest_id in quicktests:
        runs.append(load_quicktest(quicktest_id, settings))
    return runs


def load_local(source: str, settings: Settings) -> list[Run]:
    """A ``training_metrics.json`` file, or every one under a folder (one run each, sorted by path)."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob(settings.metrics_filename) if p.is_file())
        if not files:
            raise ReportError(f"{source}: no {settings.metrics_filename} in this folder or below it")
        return [_local_file(p, settings, label=_folder_label(p, path)) for p in files]
    if not path.exists():
        raise ReportError(f"{source}: no such file or folder")
    return [_local_file(path, settings, label=_folder_label(path, None))]


def _folder_label(file: Path, root: Path | None) -> str:
    """``quick_tests/42`` for ``review/ml-artifacts/quick_tests/42/training_metrics.json``."""
    folder = file.parent
    if root is not None and folder != root:
        parts = folder.relative_to(root).parts
    else:
        parts = folder.resolve().parts[1:]
    return "/".join(parts[-2:]) or file.name


def _local_file(path: Path, settings: Settings, *, label: str) -> Run:
    try:
        size = path.stat().st_size
        if size > settings.max_metrics_bytes:
            raise ReportError(f"{path}: {size:,} bytes, over MAX_METRICS_BYTES ({settings.max_metrics_bytes:,})")
        data = path.read_bytes()
    except OSError as exc:
        raise ReportError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    run = run_from_bytes(data, label=label, where=str(path), provenance=[("file", str(path))])
    _add_mlflow(run)
    return run


def _add_mlflow(run: Run) -> None:
    """An exported run is named by MLflow's run name, and its MLflow facts are shown."""
    facts = run.document.get("mlflow")
    if not isinstance(facts, dict):
        return
    if facts.get("run_name"):
        run.label = f"{facts['run_name']} ({run.label})"
    for key in ("run_id", "experiment_id", "run_name", "status", "start_time", "end_time"):
        if facts.get(key) is not None:
            run.provenance.append((f"mlflow {key}", str(facts[key])))
    tags = facts.get("tags") or {}
    if tags:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(tags.items())[:20])
        more = f" (+{len(tags) - 20} more)" if len(tags) > 20 else ""
        run.provenance.append(("mlflow tags", shown + more))


def load_gcs(uri: str, settings: Settings) -> Run:
    """``gs://BUCKET/OBJECT``, or ``gs://BUCKET/FOLDER`` holding the metrics file."""
    from google.api_core import exceptions as gcs_errors
    from google.auth import exceptions as auth_errors

    from ingest.gcs import client

    bucket_name, _, name = uri[len("gs://"):].partition("/")
    if not bucket_name or not name:
        raise ReportError(f"{uri}: expected gs://BUCKET/OBJECT or gs://BUCKET/FOLDER")
    try:
        bucket = client().bucket(bucket_name)
        blob = None if name.endswith("/") else bucket.get_blob(name, timeout=settings.gcs_timeout)
        if blob is None and not name.endswith(settings.metrics_filename):
            name = f"{name.rstrip('/')}/{settings.metrics_filename}"
            blob = bucket.get_blob(name, timeout=settings.gcs_timeout)
        if blob is None:
            raise ReportError(f"{uri}: no such object (gs://{bucket_name}/{name})")
        if (blob.size or 0) > settings.max_metrics_bytes:
            raise ReportError(f"gs://{bucket_name}/{name}: {blob.size:,} bytes, over MAX_METRICS_BYTES")
        # Exactly the generation just looked up: a concurrent upload cannot mix two files.
        data = bucket.blob(name, generation=blob.generation).download_as_bytes(timeout=settings.gcs_timeout)
    except gcs_errors.NotFound:
        raise ReportError(f"{uri}: no such bucket or object") from None
    except (gcs_errors.GoogleAPIError, auth_errors.GoogleAuthError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SourceUnavailable(f"{uri}: cannot read it from GCS: {first[:200]}") from None
    where = f"gs://{bucket_name}/{name}"
    return run_from_bytes(
        data, label=f"gs://{bucket_name}/{name.rsplit('/', 1)[0]}", where=where,
        provenance=[("object", where), ("generation", str(blob.generation)), ("updated", str(blob.updated or ""))],
    )


def load_quicktest(quicktest_id: int, settings: Settings) -> Run:
    """The history in a QuickTest row, with its source and the row's latest ingestion record."""
    import psycopg2
    import psycopg2.extras
    from psycopg2 import sql

    from ingest.db import translate

    table = ".".join(settings.quicktest_table_name)
    try:
        conn = psycopg2.connect(settings.database_url or "", connect_timeout=settings.db_connect_timeout)
    except psycopg2.Error as exc:
        raise SourceUnavailable(f"--quicktest {quicktest_id}: {translate(exc, settings)}") from None
    try:
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql.SQL(_ROW).format(sql.Identifier(*settings.quicktest_table_name)), (quicktest_id,))
            row = cur.fetchone()
            if row is None:
                raise ReportError(f"--quicktest {quicktest_id}: no such row in {table}")
            history = row["training_history_json"]
            cur.execute(_LATEST_INGESTION, (quicktest_id,))
            record = cur.fetchone()
    except psycopg2.Error as exc:
        raise SourceUnavailable(f"--quicktest {quicktest_id}: {translate(exc, settings)}") from None
    finally:
        conn.close()
    if history is None:
        raise ReportError(f"--quicktest {quicktest_id}: the row has no training history yet")
    return quicktest_run(quicktest_id, history, record, table)


def quicktest_run(quicktest_id: int, history: Any, record: dict[str, Any] | None, table: str) -> Run:
    """A row's history as a run: its source, generation and the row's latest ingestion record shown."""
    return run_from_document(
        history, label=f"QuickTest {quicktest_id}", where=f"QuickTest {quicktest_id}'s history",
        provenance=_row_provenance(history, record, table),
    )


def _row_provenance(history: Any, record: dict[str, Any] | None, table: str) -> list[tuple[str, str]]:
    facts = [("row", table)]
    source = history.get("source") if isinstance(history, dict) else None
    if isinstance(source, dict):
        name = source.get("object") or source.get("name") or ""
        facts.append(("source", f"gs://{source.get('bucket', '')}/{name}"))
        facts.append(("generation", str(source.get("generation", ""))))
    if isinstance(history, dict) and history.get("ingested_at"):
        facts.append(("ingested at", str(history["ingested_at"])))
    if record is None:
        facts.append(("latest ingestion", "none recorded for this row"))
    else:
        outcome = f"{record['outcome']} (generation {record['generation']}, {record['created_at']:%Y-%m-%d %H:%M:%S %Z})"
        if record.get("reason"):
            outcome += f": {record['reason']}"
        facts.append(("latest ingestion", outcome))
    return facts


def default_output(cwd: str | os.PathLike[str] = ".") -> Path:
    """Where the page goes without ``-o``."""
    return Path(cwd) / "metrics_report.html"
