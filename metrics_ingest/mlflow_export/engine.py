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
from metrics_ingest import batch
from metrics_ingest.batch import InterruptFlag
from metrics_ingest.mlflow_export._context import Context, blob_uri
from metrics_ingest.mlflow_export._gcs_write import upload_and_ingest
from metrics_ingest.mlflow_export._local import OutsideFolder, local_target, write_atomically
from metrics_ingest.mlflow_export.mapping import MappingError, Plan, build_document, document_problem, dumps
from metrics_ingest.mlflow_export.model import MlflowRun, SourceError
from metrics_ingest.mlflow_export.options import OVERSIZE_SUFFIX, ExportOptions
from metrics_ingest.mlflow_export.report import ExportProgress, ExportReport, RowOutcome, format_line, format_summary
from metrics_ingest.mlflow_export.rows import QuickTestRow, select_rows, unrepaired_mismatches
from metrics_ingest.mlflow_export.verify import verify_document


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
    context = Context(options, settings, client if options.needs_gcs else None, report)
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


def _process(rows: list[QuickTestRow], context: Context, stop_events: list[threading.Event]) -> Iterator[RowOutcome]:
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


def _group(group: list[QuickTestRow], context: Context, stopping: Callable[[], bool]) -> Iterator[RowOutcome]:
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


def _precheck(row: QuickTestRow, context: Context) -> RowOutcome | None:
    """Rows settled without reading MLflow: no such row, no run id, no folder, a pipeline-ingested
    history, or a folder that already has a file while the row has a history."""
    options = context.options
    if row.path is None:
        return RowOutcome(row, "failed", f"no QuickTest row with id {row.id}")
    if not row.run_id:
        return RowOutcome(row, "failed", "the row has no mlflow_run_id")
    if (context.client is not None or options.output_dir is not None) and row.folder() is None:
        return RowOutcome(row, "failed", f"gcs_artifacts_path {row.path!r} is not gs://BUCKET/FOLDER")
    if options.repair and row.has_history and not (row.from_mlflow or row.mismatched):
        # A trainer's file and its history are never replaced by MLflow's.
        return RowOutcome(row, "skipped", "its history did not come from MLflow; --repair replaces only exported files")
    if options.verify_only or options.repair or options.output_dir is not None:
        return None
    blob = context.existing_blob(row) if row.has_history else None
    if blob is not None:
        if row.mismatched:
            v = row.verification
            return RowOutcome(row, "exists", f"the last verification found a mismatch ({v.reason}); "  # type: ignore[union-attr]
                              "run again with --repair to re-export it", verification="mismatch", destination=blob_uri(blob))
        return RowOutcome(row, "exists", "the folder already has a metrics file and the row a history; left as they are",
                          destination=blob_uri(blob))
    if row.history_source is not None:
        source = row.history_source
        where = f"gs://{source.get('bucket')}/{source.get('object')}#{source.get('generation')}"
        return RowOutcome(row, "skipped", f"its history came from a trainer file through the function ({where}); "
                          "the export never replaces such a history, even with --all (its file is gone from the folder)")
    return None


def _verify_row(row: QuickTestRow, run: MlflowRun, history: Any, context: Context) -> RowOutcome:
    started = time.perf_counter()
    difference = verify_document(history, run, context.options.rules)
    context.timed("verify", started)
    outcome = "verified" if difference is None else "mismatch"
    context.record(row, run, outcome, difference, history)
    return RowOutcome(row, outcome, difference, lifecycle_stage=run.lifecycle_stage, points=run.points)


def _export_row(row: QuickTestRow, run: MlflowRun, context: Context) -> RowOutcome:
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
    problem = document_problem(export.document, data) if options.dry_run else None
    if problem:  # "would export" only for what the function would take (a real export hears the pipeline)
        outcome.outcome, outcome.reason = "failed", f"the ingestion function would refuse the document: {problem}"
        return outcome
    if options.dry_run:
        outcome.placements = export.plan.describe(run.params)
        blob = context.existing_blob(row, filename) if context.client is not None else None
        if blob is not None:
            outcome.outcome, outcome.destination = "exists", blob_uri(blob)
            outcome.reason = "the folder already has a metrics file; it would be left as it is" + (
                "" if row.has_history else " and ingested into the row"
            )
        elif filename != settings.metrics_filename:
            outcome.reason = f"over MAX_METRICS_BYTES: would be written as {filename} and ingested here"
        return outcome
    if options.output_dir is not None:
        return _write_local(outcome, data, run, export.plan, context, filename)
    return upload_and_ingest(outcome, data, run, export.plan, context, filename)


def _oversize_name(filename: str) -> str:
    return filename.removesuffix(".json") + OVERSIZE_SUFFIX


def _write_local(outcome: RowOutcome, data: bytes, run: MlflowRun, plan: Plan, context: Context,
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


__all__ = ["ExportOptions", "ExportProgress", "ExportReport", "RowOutcome", "format_line", "format_summary", "run_export"]
