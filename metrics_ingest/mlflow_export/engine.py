"""The export: select QuickTest rows, read their MLflow runs, write, ingest, verify.

For each selected row (``mlflow_run_id`` set): read the run (a group of runs
at a time from the source), build the schema-v1 document
(:mod:`.mapping`), upload it to the row's folder as ``training_metrics.json``
with ``if_generation_match=0`` (an existing file is never overwritten), ingest
that generation at once through the function's own pipeline
(``ingest.pipeline.ingest_object``), then compare the row with MLflow point by
point (:mod:`.verify`).

Outcomes per row: ``exported``, ``exists`` (the folder already has a file,
left as it is; where the row still lacks a history that file is ingested, as
replay would), ``missing_run`` (MLflow does not know the run id), ``failed``;
and ``verified`` / ``mismatch`` for each exported row. With ``--verify-only``
each row is ``verified``, ``mismatch``, ``missing_run`` or ``failed``.

Each row is one upload and one pipeline transaction, and Ctrl-C lets the rows
in flight finish: every row ends untouched or complete. A row whose file was
uploaded but rejected by the pipeline gets its file removed again (only that
generation), so a rerun starts clean.

Example::

    report = run_export(ExportOptions(source=SqlSource(url), workers=4))
    print(format_summary(report))
    raise SystemExit(report.exit_status)
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import os
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ingest.config import Settings
from ingest.errors import TransientError
from ingest.objects import ObjectRef
from ingest.pipeline import IngestResult, ingest_object
from metrics_ingest.mlflow_export.mapping import MappingError, NameRules, Plan, build_document, document_problem, dumps
from metrics_ingest.mlflow_export.model import MlflowRun, Source, SourceError
from metrics_ingest.mlflow_export.verify import verify_document
from metrics_ingest.replay import Progress, UsageError, InterruptFlag

OUTCOMES = ("exported", "exists", "missing_run", "failed")
VERIFICATIONS = ("verified", "mismatch")
DRY_RUN_LABELS = {"exported": "would export", "exists": "exists", "missing_run": "missing_run", "failed": "failed"}
GOOD_INGEST = ("ingested", "duplicate", "superseded")


@dataclasses.dataclass(frozen=True)
class QuickTestRow:
    """The parts of a QuickTest row the export needs."""

    id: int
    run_id: str
    path: str | None  # gcs_artifacts_path; None: no such row
    has_history: bool = False

    def folder(self) -> tuple[str, str] | None:
        """(bucket, folder) of ``gs://BUCKET/FOLDER``, trailing slash ignored; None if not a gs:// path."""
        if not self.path or not self.path.startswith("gs://"):
            return None
        bucket, _, folder = self.path[len("gs://") :].partition("/")
        folder = folder.rstrip("/")
        return (bucket, folder) if bucket and folder else None


@dataclasses.dataclass
class RowOutcome:
    """One row's fate.

    Example::

        outcome.outcome, outcome.verification, outcome.reason   # 'exported', 'verified', None
    """

    row: QuickTestRow
    outcome: str
    reason: str | None = None
    verification: str | None = None
    destination: str | None = None
    ingest_outcome: str | None = None
    epochs: int | None = None
    points: int | None = None
    duplicates: int | None = None
    non_finite: int | None = None
    lifecycle_stage: str | None = None
    placements: list[str] | None = None
    duration_ms: float | None = None

    @property
    def ok(self) -> bool:
        """Done: exported and verified, already there (and not contradicting MLflow), or verified."""
        if self.outcome == "exported":
            return self.verification == "verified"
        if self.outcome == "exists":
            return self.verification != "mismatch"
        return self.outcome == "verified"

    def to_dict(self) -> dict[str, Any]:
        data = {
            "quicktest_id": self.row.id,
            "mlflow_run_id": self.row.run_id,
            "gcs_artifacts_path": self.row.path,
        }
        data.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "row"})
        if data["duration_ms"] is not None:
            data["duration_ms"] = round(data["duration_ms"], 3)
        return data


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What to export and how.

    Args:
        source: where MLflow is read (``SqlSource`` or ``RestSource``).
        rules: the name rules (default ``NameRules.default()``).
        select_all: also rows that have a history but no file in their folder (default False).
        quicktest_ids: only these rows (default: the selection rule).
        output_dir: write files under this folder instead of GCS and rows (default None).
        dry_run: decide and describe, write nothing (default False).
        verify_only: compare rows with MLflow, write nothing (default False).
        workers: rows processed in parallel (default 4).
        settings: the function's settings; None reads the environment.
        attempts: tries of the pipeline on a transient fault (default 3).

    Example::

        ExportOptions(SqlSource(url), quicktest_ids=(42,), dry_run=True)
    """

    source: Source
    rules: NameRules = dataclasses.field(default_factory=NameRules.default)
    select_all: bool = False
    quicktest_ids: tuple[int, ...] = ()
    output_dir: Path | None = None
    dry_run: bool = False
    verify_only: bool = False
    workers: int = 4
    settings: Settings | None = None
    attempts: int = 3

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UsageError(f"Invalid value for argument `workers`. Received: workers={self.workers}. Expected >= 1.")
        if self.verify_only and (self.dry_run or self.output_dir is not None):
            raise UsageError("--verify-only checks the rows against MLflow; it cannot be combined with --dry-run or --output-dir")
        if self.verify_only and self.select_all:
            raise UsageError("--verify-only selects the rows whose history came from MLflow; --all does not apply")

    @property
    def needs_gcs(self) -> bool:
        """Whether GCS is read or written: an export, or a dry run of one (it looks for existing files)."""
        return not self.verify_only and self.output_dir is None

    @property
    def mode(self) -> str:
        if self.verify_only:
            return "verify-only"
        if self.dry_run:
            return "dry-run"
        return "output-dir" if self.output_dir is not None else "export"


@dataclasses.dataclass
class ExportReport:
    """What an export did (or would do).

    Example::

        report.counts["exported"], report.exit_status, json.dumps(report.to_dict())
    """

    source: str
    mode: str
    workers: int
    run_id: str
    selected: int = 0
    outcomes: list[RowOutcome] = dataclasses.field(default_factory=list)
    interrupted: bool = False
    duration_s: float = 0.0
    timings: dict[str, float] = dataclasses.field(default_factory=lambda: {"read": 0.0, "build": 0.0, "write": 0.0, "verify": 0.0})

    @property
    def counts(self) -> dict[str, int]:
        outcomes = Counter(o.outcome for o in self.outcomes)
        verifications = Counter(o.verification for o in self.outcomes if o.verification)
        counts = {name: outcomes.get(name, 0) for name in OUTCOMES}
        counts.update({name: outcomes.get(name, 0) + verifications.get(name, 0) for name in VERIFICATIONS})
        return counts

    @property
    def not_started(self) -> int:
        return self.selected - len(self.outcomes)

    @property
    def exit_status(self) -> int:
        if self.interrupted:
            return 130
        if self.mode == "dry-run":
            return 1 if any(o.outcome in ("missing_run", "failed") for o in self.outcomes) else 0
        return 0 if all(o.ok for o in self.outcomes) else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "mode": self.mode,
            "run_id": self.run_id,
            "workers": self.workers,
            "selected": self.selected,
            "processed": len(self.outcomes),
            "not_started": self.not_started,
            "interrupted": self.interrupted,
            "duration_s": round(self.duration_s, 3),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "counts": self.counts,
            "exit_status": self.exit_status,
            "rows": [o.to_dict() for o in sorted(self.outcomes, key=lambda o: o.row.id)],
        }


# ---------------------------------------------------------------- selection

# As deploy.sh's teardown check: the rows whose history only MLflow holds.
# (No '{}' literal: the text goes through psycopg2.sql.SQL.format.)
_NO_HISTORY = "(training_history_json IS NULL OR training_history_json IN ('null'::jsonb, jsonb_build_object()))"


def select_rows(settings: Settings, options: ExportOptions) -> list[QuickTestRow]:
    """The rows to work on, by id (see the module docstring for the rules)."""
    import psycopg2
    from psycopg2 import sql

    columns = sql.SQL(
        "SELECT id, btrim(coalesce(mlflow_run_id, '')), gcs_artifacts_path, NOT " + _NO_HISTORY + " FROM {} "
    ).format(sql.Identifier(settings.quicktest_table))
    if options.quicktest_ids:
        where, params = sql.SQL("WHERE id = ANY(%s)"), (list(options.quicktest_ids),)
    elif options.verify_only:
        where, params = sql.SQL("WHERE jsonb_typeof(training_history_json) = 'object' AND training_history_json ? 'mlflow'"), ()
    else:
        condition = "" if options.select_all else " AND " + _NO_HISTORY
        where, params = sql.SQL("WHERE btrim(coalesce(mlflow_run_id, '')) <> ''" + condition), ()
    conn = psycopg2.connect(settings.database_url or "", connect_timeout=settings.db_connect_timeout)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(columns + where + sql.SQL(" ORDER BY id"), params)
            rows = [QuickTestRow(int(i), run_id, path, bool(history)) for i, run_id, path, history in cur.fetchall()]
    finally:
        conn.close()
    if options.quicktest_ids:
        found = {row.id for row in rows}
        rows += [QuickTestRow(i, "", None) for i in sorted(set(options.quicktest_ids) - found)]
        rows.sort(key=lambda r: r.id)
    return rows


def read_histories(settings: Settings, ids: list[int], conn: Any = None) -> dict[int, Any]:
    """The rows' ``training_history_json`` as the platform reads it (jsonb, parsed).

    ``conn``: a connection to reuse (one transaction is used and ended); None opens and closes one.
    """
    import psycopg2
    from psycopg2 import sql

    own = conn is None
    if own:
        conn = psycopg2.connect(settings.database_url or "", connect_timeout=settings.db_connect_timeout)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT id, training_history_json FROM {} WHERE id = ANY(%s)").format(
                    sql.Identifier(settings.quicktest_table)
                ),
                (ids,),
            )
            return dict(cur.fetchall())
    finally:
        if own:
            conn.close()


# ---------------------------------------------------------------- the run


class _Context:
    """What every worker shares."""

    def __init__(self, options: ExportOptions, settings: Settings, client: Any, run_id: str, report: ExportReport) -> None:
        self.options = options
        self.settings = settings
        self.client = client
        self.run_id = run_id
        self.report = report
        self._lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[Any] = []

    def histories(self, ids: list[int]) -> dict[int, Any]:
        """``read_histories`` on this thread's own connection (a connect per row costs more than the read)."""
        import psycopg2

        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = psycopg2.connect(
                self.settings.database_url or "", connect_timeout=self.settings.db_connect_timeout
            )
            with self._lock:
                self._connections.append(conn)
        try:
            return read_histories(self.settings, ids, conn)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            conn.close()  # a dropped connection: the next row opens a new one
            raise

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def timed(self, phase: str, started: float) -> None:
        with self._lock:
            self.report.timings[phase] += time.perf_counter() - started


def run_export(
    options: ExportOptions,
    *,
    client: Any = None,
    on_outcome: Callable[[RowOutcome], None] | None = None,
    on_selected: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> ExportReport:
    """Export (or verify) the selected rows; returns the report (see ``exit_status``).

    Args:
        options: what to do.
        client: a ``google.cloud.storage.Client`` (None: made when GCS is needed).
        on_outcome: called in the calling thread after each row.
        on_selected: called once with the number of rows selected.
        stop: set it to stop starting rows (Ctrl-C sets an internal one too).
    """
    settings = options.settings or Settings.from_env()
    if settings.db_pool_size < options.workers:
        settings = dataclasses.replace(settings, db_pool_size=options.workers)
    if client is None and options.needs_gcs:
        from metrics_ingest.replay import make_storage_client

        client = make_storage_client(options.workers)
    report = ExportReport(options.source.description, options.mode, options.workers, uuid.uuid4().hex[:12])
    context = _Context(options, settings, client if options.needs_gcs else None, report.run_id, report)
    started = time.perf_counter()
    rows = select_rows(settings, options)
    report.selected = len(rows)
    if on_selected is not None:
        on_selected(len(rows))
    with InterruptFlag() as interrupt:
        stop_events = [interrupt.event] + ([stop] if stop is not None else [])
        try:
            for outcome in _process(rows, context, stop_events):
                report.outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
        finally:
            context.close()
        report.interrupted = any(e.is_set() for e in stop_events) and report.not_started > 0
    report.duration_s = time.perf_counter() - started
    return report


def _groups(rows: list[QuickTestRow], size: int) -> Iterator[list[QuickTestRow]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _process(rows: list[QuickTestRow], context: _Context, stop_events: list[threading.Event]) -> Iterator[RowOutcome]:
    """Groups of rows over a thread pool; outcomes come back through a queue, in the caller's thread."""
    options = context.options
    size = max(1, min(options.source.batch_size, -(-len(rows) // options.workers) if rows else 1))
    results: queue.Queue[RowOutcome] = queue.Queue()

    def stopping() -> bool:
        return any(e.is_set() for e in stop_events)

    def work(group: list[QuickTestRow]) -> None:
        for outcome in _group(group, context, stopping):
            results.put(outcome)

    todo = _groups(rows, size)
    exhausted = False
    pending: set[cf.Future[None]] = set()
    with cf.ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="export-mlflow") as pool:
        while True:
            # Lazily: never more groups in flight than workers, so Ctrl-C waits for little.
            while not exhausted and not stopping() and len(pending) < options.workers:
                group = next(todo, None)
                if group is None:
                    exhausted = True
                else:
                    pending.add(pool.submit(work, group))
            done: set[cf.Future[None]] = set()
            if pending:
                done, pending = cf.wait(pending, timeout=0.1, return_when=cf.FIRST_COMPLETED)
            while not results.empty():
                yield results.get_nowait()
            for future in done:
                future.result()  # a bug in our own code: raise it rather than lose rows silently
            if not pending and (exhausted or stopping()):
                while not results.empty():
                    yield results.get_nowait()
                return


def _group(group: list[QuickTestRow], context: _Context, stopping: Callable[[], bool]) -> Iterator[RowOutcome]:
    """One group: rows that need no MLflow read first, then one fetch, then row by row."""
    options = context.options
    todo: list[QuickTestRow] = []
    for row in group:
        started = time.perf_counter()
        try:
            early = _precheck(row, context)
        except Exception as exc:  # noqa: BLE001 - e.g. GCS refusing the existence check: reported per row
            early = RowOutcome(row, "failed", f"{type(exc).__name__}: {exc}")
        if early is not None:
            early.duration_ms = (time.perf_counter() - started) * 1000
            yield early
        else:
            todo.append(row)
    if not todo or stopping():
        return
    started = time.perf_counter()
    try:
        runs = options.source.fetch(sorted({row.run_id for row in todo}))
    except SourceError as exc:
        for row in todo:
            yield RowOutcome(row, "failed", f"reading MLflow failed: {exc}")
        return
    finally:
        context.timed("read", started)
    try:
        histories = context.histories([r.id for r in todo]) if options.verify_only else {}
    except Exception as exc:  # noqa: BLE001 - the platform database went away: these rows are reported
        for row in todo:
            yield RowOutcome(row, "failed", f"reading the rows failed: {type(exc).__name__}: {exc}")
        return
    for row in todo:
        if stopping():
            return
        started = time.perf_counter()
        run = runs.get(row.run_id)
        try:
            if run is None:
                outcome = RowOutcome(row, "missing_run", f"MLflow has no run {row.run_id!r}")
            elif options.verify_only:
                outcome = _verify_row(row, run, histories.get(row.id), context)
            else:
                outcome = _export_row(row, run, context)
        except Exception as exc:  # noqa: BLE001 - one broken row must not stop the others; it is reported
            outcome = RowOutcome(row, "failed", f"{type(exc).__name__}: {exc}")
        outcome.duration_ms = (time.perf_counter() - started) * 1000
        yield outcome


def _precheck(row: QuickTestRow, context: _Context) -> RowOutcome | None:
    """Rows settled without reading MLflow: no such row, no run id, no folder, or (with --all) a file already there."""
    if row.path is None:
        return RowOutcome(row, "failed", f"no QuickTest row with id {row.id}")
    if not row.run_id:
        return RowOutcome(row, "failed", "the row has no mlflow_run_id")
    if context.client is not None and row.folder() is None:
        return RowOutcome(row, "failed", f"gcs_artifacts_path {row.path!r} is not gs://BUCKET/FOLDER")
    if context.client is not None and row.has_history:
        blob = _existing_blob(row, context)
        if blob is not None:
            return RowOutcome(row, "exists", "the folder already has a metrics file and the row a history; left as they are",
                              destination=_uri(blob))
    return None


def _existing_blob(row: QuickTestRow, context: _Context) -> Any:
    bucket, folder = row.folder()  # type: ignore[misc]
    return context.client.bucket(bucket).get_blob(f"{folder}/{context.settings.metrics_filename}", timeout=context.settings.gcs_timeout)


def _uri(blob: Any) -> str:
    return f"gs://{blob.bucket.name}/{blob.name}#{blob.generation}"


def _verify_row(row: QuickTestRow, run: MlflowRun, history: Any, context: _Context) -> RowOutcome:
    started = time.perf_counter()
    difference = verify_document(history, run, context.options.rules)
    context.timed("verify", started)
    outcome = "verified" if difference is None else "mismatch"
    return RowOutcome(row, outcome, difference, lifecycle_stage=run.lifecycle_stage, points=run.points)


def _export_row(row: QuickTestRow, run: MlflowRun, context: _Context) -> RowOutcome:
    options, settings = context.options, context.settings
    started = time.perf_counter()
    try:
        export = build_document(run, options.rules)
        data = dumps(export.document)
    except MappingError as exc:
        return RowOutcome(row, "failed", f"run {run.run_id} cannot be a training_metrics.json: {exc}", lifecycle_stage=run.lifecycle_stage)
    finally:
        context.timed("build", started)
    outcome = RowOutcome(
        row,
        "exported",
        epochs=len(export.document["epochs"]),
        points=export.points,
        duplicates=export.duplicates,
        non_finite=export.non_finite,
        lifecycle_stage=run.lifecycle_stage,
    )
    if len(data) > settings.max_metrics_bytes:
        outcome.outcome = "failed"
        outcome.reason = f"the document is {len(data)} bytes, over MAX_METRICS_BYTES ({settings.max_metrics_bytes}); nothing written"
        return outcome
    problem = document_problem(export.document, data) if options.dry_run else None
    if problem:  # "would export" only for what the function would take (a real export hears the pipeline)
        outcome.outcome, outcome.reason = "failed", f"the ingestion function would refuse the document: {problem}"
        return outcome
    if options.dry_run:
        outcome.placements = export.plan.describe(run.params)
        blob = _existing_blob(row, context) if context.client is not None else None
        if blob is not None:
            outcome.outcome, outcome.destination = "exists", _uri(blob)
            outcome.reason = "the folder already has a metrics file; it would be left as it is" + (
                "" if row.has_history else " and ingested into the row"
            )
        return outcome
    if options.output_dir is not None:
        return _write_local(outcome, data, run, export.plan, context)
    return _upload_and_ingest(outcome, data, run, export.plan, context)


def _write_local(outcome: RowOutcome, data: bytes, run: MlflowRun, plan: Plan, context: _Context) -> RowOutcome:
    started = time.perf_counter()
    row = outcome.row
    folder = row.folder()
    relative = Path(*folder) if folder is not None else Path(f"quicktest_{row.id}")
    target = Path(context.options.output_dir) / relative / context.settings.metrics_filename  # type: ignore[arg-type]
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, target)  # a reviewer never sees half a file
    outcome.destination = str(target)
    context.timed("write", started)
    started = time.perf_counter()
    difference = verify_document(json.loads(target.read_bytes()), run, context.options.rules, plan)
    context.timed("verify", started)
    outcome.verification, outcome.reason = ("verified", None) if difference is None else ("mismatch", difference)
    return outcome


def _ingest(ref: ObjectRef, context: _Context) -> IngestResult:
    retrying = Retrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(context.options.attempts),
        wait=wait_exponential(multiplier=0.5, max=8),
        reraise=True,
    )
    event_id = f"export-mlflow:{context.run_id}:{ref.name}"
    return retrying(ingest_object, ref, settings=context.settings, event_id=event_id, client=context.client)


def _upload_and_ingest(outcome: RowOutcome, data: bytes, run: MlflowRun, plan: Plan, context: _Context) -> RowOutcome:
    from google.api_core import exceptions as gcs_errors

    settings = context.settings
    row = outcome.row
    bucket_name, folder = row.folder()  # type: ignore[misc]
    blob = context.client.bucket(bucket_name).blob(f"{folder}/{settings.metrics_filename}")
    started = time.perf_counter()
    try:
        try:
            # Never overwrite: the does-not-exist precondition also makes the
            # client retry the upload safely.
            blob.upload_from_string(data, content_type="application/json", if_generation_match=0, timeout=settings.gcs_timeout)
            uploaded = True
        except gcs_errors.PreconditionFailed:
            uploaded = False
            blob = context.client.bucket(bucket_name).get_blob(blob.name, timeout=settings.gcs_timeout)
            if blob is None:  # deleted in between: a rerun will upload
                outcome.outcome, outcome.reason = "failed", "the metrics file appeared and vanished during the export; run again"
                return outcome
        outcome.destination = _uri(blob)
        ref = ObjectRef.from_resource(blob._properties)
        if not uploaded:
            outcome.outcome = "exists"
            if row.has_history:
                outcome.reason = "the folder already has a metrics file; left as it is"
                return outcome
            result = _ingest(ref, context)
            outcome.ingest_outcome = result.outcome
            if result.outcome not in GOOD_INGEST:
                outcome.outcome = "failed"
                outcome.reason = f"the folder already has a metrics file; ingesting it gave {result.outcome}: {result.reason}"
                return outcome
            outcome.reason = f"the folder already has a metrics file; ingested it into the row ({result.outcome})"
        else:
            result = _ingest(ref, context)
            outcome.ingest_outcome = result.outcome
            if result.outcome not in GOOD_INGEST:
                # Our own file, refused: remove exactly that generation so the folder is as it was.
                blob.delete(if_generation_match=ref.generation, timeout=settings.gcs_timeout)
                outcome.outcome = "failed"
                outcome.reason = f"the pipeline answered {result.outcome}: {result.reason} (the uploaded file was removed)"
                return outcome
    except TransientError as exc:
        outcome.outcome, outcome.reason = "failed", f"transient fault after {context.options.attempts} tries: {exc}"
        return outcome
    except gcs_errors.GoogleAPICallError as exc:
        outcome.outcome, outcome.reason = "failed", f"GCS: {exc}"
        return outcome
    finally:
        context.timed("write", started)
    started = time.perf_counter()
    history = context.histories([row.id]).get(row.id)
    if isinstance(history, dict) and (history.get("mlflow") or {}).get("run_id") == run.run_id:
        difference = verify_document(history, run, context.options.rules, plan)
        outcome.verification = "verified" if difference is None else "mismatch"
        if difference is not None:
            outcome.reason = difference
    elif outcome.outcome == "exported":
        outcome.verification, outcome.reason = "mismatch", "the row does not hold this export after ingestion"
    context.timed("verify", started)
    return outcome


# ---------------------------------------------------------------- output


def format_line(outcome: RowOutcome, dry_run: bool = False) -> str:
    """One plain line per row (the non-terminal progress)."""
    label = DRY_RUN_LABELS[outcome.outcome] if dry_run and outcome.outcome in DRY_RUN_LABELS else outcome.outcome
    if outcome.verification:
        label += f"+{outcome.verification}"
    line = f"{label:<18} quicktest {outcome.row.id} (run {outcome.row.run_id or '-'})"
    if outcome.lifecycle_stage == "deleted":
        line += " [deleted in MLflow]"
    if outcome.epochs is not None:
        line += f": {outcome.epochs} epochs, {outcome.points} points"
        if outcome.duplicates:
            line += f", {outcome.duplicates} duplicates collapsed"
        if outcome.non_finite:
            line += f", {outcome.non_finite} NaN/inf -> null"
    if outcome.destination:
        line += f" -> {outcome.destination}"
    if outcome.reason:
        line += f" ({outcome.reason})"
    return line


def format_summary(report: ExportReport) -> str:
    """The summary by outcome, then every row that is not done, with its reason (and, in a dry run, every placement)."""
    dry = report.mode == "dry-run"
    verb = {"export": "export", "dry-run": "dry run of the export", "output-dir": "export to local files",
            "verify-only": "verification"}[report.mode]
    lines: list[str] = []
    if dry:
        for o in sorted(report.outcomes, key=lambda o: o.row.id):
            lines.append(format_line(o, dry_run=True))
            lines += [f"    {p}" for p in o.placements or []]
        lines.append("")
    lines += [
        f"{verb} from {report.source}: {report.selected} rows selected, {len(report.outcomes)} processed "
        f"in {report.duration_s:.1f} s with {report.workers} worker(s)"
        + ("" if report.mode != "export" else f"; run id {report.run_id} (event_id 'export-mlflow:{report.run_id}:...')"),
        "",
        f"  {'outcome':<18}{'count':>7}",
    ]
    names = ("verified", "mismatch", "missing_run", "failed") if report.mode == "verify-only" else (OUTCOMES + (() if dry else VERIFICATIONS))
    for name in names:
        label = DRY_RUN_LABELS.get(name, name) if dry else name
        lines.append(f"  {label:<18}{report.counts[name]:>7}")
    if report.not_started:
        lines.append(f"  {'not started':<18}{report.not_started:>7}")
    bad = [o for o in report.outcomes if (o.outcome in ("missing_run", "failed") if dry else not o.ok)]
    if bad and not dry:
        lines += ["", "Not done (fix and run again; nothing was overwritten):"]
        lines += [f"  {format_line(o)}" for o in sorted(bad, key=lambda o: o.row.id)]
    if report.interrupted:
        lines += [
            "",
            f"Interrupted: {report.not_started} rows were not started; every row processed is complete or untouched. "
            "Run the same command again to finish.",
        ]
    return "\n".join(lines)


class ExportProgress(Progress):
    """Replay's progress (a tqdm bar on a terminal, plain lines otherwise), counting rows.

    Example::

        progress = ExportProgress(sys.stderr, dry_run=False)
        run_export(options, on_selected=progress.selected, on_outcome=progress.update)
        progress.close()
    """

    def selected(self, count: int) -> None:
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=count, file=self.stream, unit="row", dynamic_ncols=True)
        else:
            print(f"selected {count} QuickTest rows", file=self.stream, flush=True)

    def update(self, outcome: RowOutcome) -> None:  # type: ignore[override]
        if self._bar is not None:
            if not outcome.ok and not (self.dry_run and outcome.outcome in ("exported", "exists")):
                self._bar.write(format_line(outcome, self.dry_run), file=self.stream)
            self._bar.update(1)
        else:
            print(format_line(outcome, self.dry_run), file=self.stream, flush=True)


def _print_json(report: ExportReport, stream: TextIO) -> None:
    json.dump(report.to_dict(), stream, indent=2)
    stream.write("\n")
