"""The export: select QuickTest rows, read their MLflow runs, write, ingest, verify.

For each selected row (``mlflow_run_id`` set): read the run (a group of runs
at a time from the source), build the schema-v1 document
(:mod:`.mapping`), upload it to the row's folder as ``training_metrics.json``
with ``if_generation_match=0`` (an existing file is never overwritten), ingest
that generation at once through the function's own pipeline
(``ingest.pipeline.ingest_object``), then compare the row with MLflow point by
point (:mod:`.verify`) and record the verification (:mod:`.records`).

Outcomes per row (:mod:`.report`): ``exported``, ``exists`` (the folder
already has a file, left as it is; where the row lacks a history that file is
ingested, forced when the ingestion log already had it), ``skipped`` (a
history the function ingested from a file is never replaced), ``missing_run``,
``failed``; and ``verified`` / ``mismatch``. A history replaced (``--all``,
a named row) is first kept in ``mlflow_export_replaced_histories``.
``--repair`` replaces a mismatched row's file under a precondition on the
mismatched generation, ingests and verifies again.

Each row is one upload and one pipeline transaction, and Ctrl-C lets the rows
in flight finish (:mod:`metrics_ingest.batch`): every row ends untouched or
complete. A row whose file was uploaded but rejected by the pipeline gets its
file removed again (only that generation), so a rerun starts clean.

Example::

    report = run_export(ExportOptions(source=SqlSource(url), workers=4))
    print(format_summary(report))
    raise SystemExit(report.exit_status)
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from ingest.config import Settings
from ingest.errors import TransientError
from ingest.objects import ObjectRef
from ingest.pipeline import IngestResult, ingest_object
from metrics_ingest import batch
from metrics_ingest.batch import InterruptFlag
from metrics_ingest.mlflow_export import records
from metrics_ingest.mlflow_export._local import OutsideFolder, local_target, write_atomically
from metrics_ingest.mlflow_export.mapping import MappingError, Plan, build_document, dumps
from metrics_ingest.mlflow_export.model import MlflowRun, SourceError
from metrics_ingest.mlflow_export.options import OVERSIZE_SUFFIX, ExportOptions
from metrics_ingest.mlflow_export.report import ExportProgress, ExportReport, RowOutcome, format_line, format_summary
from metrics_ingest.mlflow_export.rows import QuickTestRow, read_histories, select_rows, unrepaired_mismatches
from metrics_ingest.mlflow_export.verify import verify_document

GOOD_INGEST = ("ingested", "duplicate", "superseded")


class _Context:
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


def run_export(
    options: ExportOptions,
    *,
    client: Any = None,
    on_outcome: Callable[[RowOutcome], None] | None = None,
    on_selected: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> ExportReport:
    """Export (or verify, or repair) the selected rows; returns the report (see ``exit_status``).

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
        client = batch.make_storage_client(options.workers)
    report = ExportReport(source=options.source.description, mode=options.mode, workers=options.workers,
                          run_id=uuid.uuid4().hex[:12])
    context = _Context(options, settings, client if options.needs_gcs else None, report)
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
    if options.mode == "export" and not options.quicktest_ids:
        # A mismatch found earlier is not settled by a plain export: name it, and do not exit 0.
        report.unrepaired = unrepaired_mismatches(settings)
    report.duration_s = time.perf_counter() - started
    return report


def _groups(rows: list[QuickTestRow], size: int) -> Iterator[list[QuickTestRow]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _process(rows: list[QuickTestRow], context: _Context, stop_events: list[threading.Event]) -> Iterator[RowOutcome]:
    """Groups of rows over the bounded worker loop (never more groups in flight than workers, so
    Ctrl-C waits for little); outcomes come back in the caller's thread as each row finishes."""
    options = context.options
    size = max(1, min(options.source.batch_size, -(-len(rows) // options.workers) if rows else 1))

    def stopping() -> bool:
        return any(e.is_set() for e in stop_events)

    yield from batch.bounded(
        _groups(rows, size),
        lambda group: _group(group, context, stopping),
        workers=options.workers,
        stopping=stopping,
        in_flight=options.workers,
        name="export-mlflow",
    )


def _reading_failed(exc: SourceError) -> str:
    # The source's own message may already say so: say it once.
    text = str(exc)
    return text if text.lower().startswith(("reading", "cannot", "mlflow")) else f"reading MLflow failed: {text}"


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
            yield RowOutcome(row, "failed", _reading_failed(exc))
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
    """Rows settled without reading MLflow: no such row, no run id, no folder, a pipeline-ingested
    history, or a folder that already has a file while the row has a history."""
    options = context.options
    if row.path is None:
        return RowOutcome(row, "failed", f"no QuickTest row with id {row.id}")
    if not row.run_id:
        return RowOutcome(row, "failed", "the row has no mlflow_run_id")
    if (context.client is not None or options.output_dir is not None) and row.folder() is None:
        return RowOutcome(row, "failed", f"gcs_artifacts_path {row.path!r} is not gs://BUCKET/FOLDER")
    if options.verify_only or options.repair or options.output_dir is not None:
        return None
    blob = _existing_blob(row, context) if row.has_history else None
    if blob is not None:
        if row.mismatched:
            v = row.verification
            return RowOutcome(row, "exists", f"the last verification found a mismatch ({v.reason}); "  # type: ignore[union-attr]
                              "run again with --repair to re-export it", verification="mismatch", destination=_uri(blob))
        return RowOutcome(row, "exists", "the folder already has a metrics file and the row a history; left as they are",
                          destination=_uri(blob))
    if row.history_source is not None:
        source = row.history_source
        where = f"gs://{source.get('bucket')}/{source.get('object')}#{source.get('generation')}"
        return RowOutcome(row, "skipped", f"its history came from a trainer file through the function ({where}); "
                          "the export never replaces such a history, even with --all (its file is gone from the folder)")
    return None


def _existing_blob(row: QuickTestRow, context: _Context, name: str | None = None) -> Any:
    bucket, folder = row.folder()  # type: ignore[misc]
    return context.client.bucket(bucket).get_blob(
        f"{folder}/{name or context.settings.metrics_filename}", timeout=context.settings.gcs_timeout
    )


def _uri(blob: Any) -> str:
    return f"gs://{blob.bucket.name}/{blob.name}#{blob.generation}"


def _record(context: _Context, row: QuickTestRow, run: MlflowRun, verification: str, reason: str | None,
            history: Any) -> None:
    """Keep the verification; a verified export supersedes an accepted loss."""

    def work(conn: Any) -> None:
        source = history.get("source") if isinstance(history, dict) else None
        records.record_verification(conn, context.run_id, row.id, run.run_id, verification, reason, source)
        if verification == "verified":
            records.supersede(conn, row.id, context.run_id)

    context.db(work)


def _verify_row(row: QuickTestRow, run: MlflowRun, history: Any, context: _Context) -> RowOutcome:
    started = time.perf_counter()
    difference = verify_document(history, run, context.options.rules)
    context.timed("verify", started)
    outcome = "verified" if difference is None else "mismatch"
    _record(context, row, run, outcome, difference, history)
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
    filename = settings.metrics_filename
    if len(data) > settings.max_metrics_bytes:
        cap = options.oversize_cap
        if cap is None or len(data) > cap:
            outcome.outcome = "failed"
            outcome.reason = (
                f"the document is {len(data)} bytes, over MAX_METRICS_BYTES ({settings.max_metrics_bytes}): the "
                "deployed function would reject it. Export this row with --oversize-cap BYTES (at least "
                f"{len(data)}): it is written as {_oversize_name(filename)} (a name the function ignores) and "
                "ingested here; nothing written"
            )
            return outcome
        filename = _oversize_name(filename)
    if options.dry_run:
        outcome.placements = export.plan.describe(run.params)
        blob = _existing_blob(row, context, filename) if context.client is not None else None
        if blob is not None:
            outcome.outcome, outcome.destination = "exists", _uri(blob)
            outcome.reason = "the folder already has a metrics file; it would be left as it is" + (
                "" if row.has_history else " and ingested into the row"
            )
        elif filename != settings.metrics_filename:
            outcome.reason = f"over MAX_METRICS_BYTES: would be written as {filename} and ingested here"
        return outcome
    if options.output_dir is not None:
        return _write_local(outcome, data, run, export.plan, context, filename)
    return _upload_and_ingest(outcome, data, run, export.plan, context, filename)


def _oversize_name(filename: str) -> str:
    return filename.removesuffix(".json") + OVERSIZE_SUFFIX


def _write_local(outcome: RowOutcome, data: bytes, run: MlflowRun, plan: Plan, context: _Context,
                 filename: str) -> RowOutcome:
    started = time.perf_counter()
    bucket, folder = outcome.row.folder()  # type: ignore[misc]
    try:
        target = local_target(context.options.output_dir, bucket, folder, filename)  # type: ignore[arg-type]
    except OutsideFolder as exc:
        outcome.outcome, outcome.reason = "failed", str(exc)
        return outcome
    write_atomically(target, data)
    outcome.destination = str(target)
    context.timed("write", started)
    started = time.perf_counter()
    difference = verify_document(json.loads(target.read_bytes()), run, context.options.rules, plan)
    context.timed("verify", started)
    outcome.verification, outcome.reason = ("verified", None) if difference is None else ("mismatch", difference)
    return outcome


def _ingest(ref: ObjectRef, context: _Context, filename: str, force: bool = False) -> IngestResult:
    event_id = f"export-mlflow:{context.run_id}:{ref.name}"
    settings = context.settings
    if filename != settings.metrics_filename:
        # An over-cap document under its own name: ingested here with the cap raised for it alone.
        settings = dataclasses.replace(settings, metrics_filename=filename, max_metrics_bytes=context.options.oversize_cap)
    return batch.with_retries(
        ingest_object, ref, attempts=context.options.attempts, settings=settings, event_id=event_id,
        client=context.client, force=force,
    )


def _upload_and_ingest(outcome: RowOutcome, data: bytes, run: MlflowRun, plan: Plan, context: _Context,
                       filename: str) -> RowOutcome:
    from google.api_core import exceptions as gcs_errors

    settings = context.settings
    row = outcome.row
    bucket_name, folder = row.folder()  # type: ignore[misc]
    bucket = context.client.bucket(bucket_name)
    blob = bucket.blob(f"{folder}/{filename}")
    repair = context.options.repair
    # Never overwrite, except --repair: then only the generation whose content was found wrong.
    expected = _repair_generation(row, context, filename) if repair else 0
    started = time.perf_counter()
    try:
        if row.has_history and not repair:
            # About to replace a history (the old Django cache): keep it restorably first.
            outcome.kept_copy = context.db(
                lambda conn: records.keep_history(conn, settings.quicktest_table_name, row.id, context.run_id))
        try:
            # The precondition also makes the client retry the upload safely.
            blob.upload_from_string(data, content_type="application/json", if_generation_match=expected,
                                    timeout=settings.gcs_timeout)
            uploaded = True
        except gcs_errors.PreconditionFailed:
            if repair:
                outcome.outcome = "failed"
                outcome.reason = (f"the folder's file is no longer generation {expected} (the one found mismatched); "
                                  "run --verify-only again, then --repair")
                return outcome
            uploaded = False
            blob = bucket.get_blob(blob.name, timeout=settings.gcs_timeout)
            if blob is None:  # deleted in between: a rerun will upload
                outcome.outcome, outcome.reason = "failed", "the metrics file appeared and vanished during the export; run again"
                return outcome
        outcome.destination = _uri(blob)
        ref = ObjectRef.from_resource(blob._properties)
        if not uploaded:
            result = _ingest_existing(outcome, ref, context, filename)
            if result is None:
                return outcome
        else:
            result = _ingest(ref, context, filename)
            outcome.ingest_outcome = result.outcome
            if result.outcome not in GOOD_INGEST:
                # Our own file, refused: remove exactly that generation so the folder is as it was.
                blob.delete(if_generation_match=ref.generation, timeout=settings.gcs_timeout)
                outcome.outcome = "failed"
                outcome.reason = f"the pipeline answered {result.outcome}: {result.reason} (the uploaded file was removed)"
                return outcome
            if repair:
                outcome.reason = f"repaired: replaced generation {expected or 'none'} with {ref.generation}"
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
        _record(context, row, run, outcome.verification, difference, history)
    elif outcome.outcome == "exported":
        outcome.verification, outcome.reason = "mismatch", "the row does not hold this export after ingestion"
    context.timed("verify", started)
    return outcome


def _repair_generation(row: QuickTestRow, context: _Context, filename: str) -> int:
    """The generation --repair may replace: the one the mismatch was found on, else the file the row holds
    now, else 0 (no file: upload a new one)."""
    v = row.verification
    if row.mismatched and v is not None and v.generation is not None:
        return v.generation
    source = row.history_source or {}
    if str(source.get("generation", "")).isdigit():
        return int(source["generation"])
    blob = _existing_blob(row, context, filename)
    return 0 if blob is None else int(blob.generation)


def _ingest_existing(outcome: RowOutcome, ref: ObjectRef, context: _Context, filename: str) -> IngestResult | None:
    """The folder already had a file: ingest it where the row lacks a history. When the ingestion log
    says it was done before but the row is empty (cleared since), ingest it again, forced. Returns the
    result, or None when the outcome is settled."""
    row = outcome.row
    outcome.outcome = "exists"
    if row.has_history:
        outcome.reason = "the folder already has a metrics file; left as it is"
        return None
    result = _ingest(ref, context, filename)
    forced = False
    if result.outcome == "duplicate" and not _row_holds(context, row.id, ref.generation):
        result = _ingest(ref, context, filename, force=True)
        forced = True
    outcome.ingest_outcome = result.outcome
    if result.outcome not in GOOD_INGEST:
        outcome.outcome = "failed"
        outcome.reason = f"the folder already has a metrics file; ingesting it gave {result.outcome}: {result.reason}"
        return None
    held = _row_holds(context, row.id, ref.generation)
    outcome.row_history = f"generation {ref.generation} of the folder's file" if held else "empty"
    if not held:
        outcome.reason = (f"the folder already has a metrics file (generation {ref.generation}); ingesting it gave "
                          f"{result.outcome}, but the row still holds no history")
        return None
    outcome.reason = (f"the folder already has a metrics file; ingested it into the row ({result.outcome}"
                      + (", forced: the ingestion log had it but the row was empty)" if forced else ")"))
    return result


def _row_holds(context: _Context, row_id: int, generation: int) -> bool:
    history = context.histories([row_id]).get(row_id)
    source = history.get("source") if isinstance(history, dict) else None
    return isinstance(source, dict) and str(source.get("generation")) == str(generation)


__all__ = ["ExportOptions", "ExportProgress", "ExportReport", "RowOutcome", "format_line", "format_summary", "run_export"]
