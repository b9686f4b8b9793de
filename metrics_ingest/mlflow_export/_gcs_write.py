"""Writing an exported document to GCS and ingesting it through the function's pipeline.

The upload never overwrites (``if_generation_match=0``), except ``--repair``,
which replaces exactly the generation whose content was found wrong. A file
the pipeline refuses is deleted again (that generation only). A folder that
already has a file is ingested where the row lacks a history, forced when the
ingestion log had it but the row was emptied since.

Example::

    outcome = upload_and_ingest(outcome, data, run, plan, context, "training_metrics.json")
"""

from __future__ import annotations

import dataclasses
import time

from ingest.errors import TransientError
from ingest.objects import ObjectRef
from ingest.pipeline import IngestResult, ingest_object
from metrics_ingest import batch
from metrics_ingest.mlflow_export import records
from metrics_ingest.mlflow_export._context import Context, blob_uri
from metrics_ingest.mlflow_export.mapping import Plan
from metrics_ingest.mlflow_export.model import MlflowRun
from metrics_ingest.mlflow_export.report import RowOutcome
from metrics_ingest.mlflow_export.rows import QuickTestRow
from metrics_ingest.mlflow_export.verify import verify_document

GOOD_INGEST = ("ingested", "duplicate", "superseded", "unchanged")


def _ingest(ref: ObjectRef, context: Context, filename: str, force: bool = False) -> IngestResult:
    # A forced ingestion is a delivery of its own: under the same event id it would be settled
    # by the first attempt's record (one record per event).
    event_id = f"export-mlflow:{context.run_id}:{ref.name}" + (":forced" if force else "")
    settings = context.settings
    if filename != settings.metrics_filename:
        # An over-cap document under its own name: ingested here with the cap raised for it alone.
        settings = dataclasses.replace(settings, metrics_filename=filename, max_metrics_bytes=context.options.oversize_cap)
    return batch.with_retries(
        ingest_object, ref, attempts=context.options.attempts, settings=settings, event_id=event_id,
        client=context.client, force=force,
    )


def upload_and_ingest(outcome: RowOutcome, data: bytes, run: MlflowRun, plan: Plan, context: Context,
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
        outcome.destination = blob_uri(blob)
        ref = ObjectRef.from_resource(blob._properties)
        if not uploaded:
            result = _ingest_existing(outcome, ref, context, filename)
            if result is None:
                return outcome
        else:
            # --repair rewrites a row found wrong: the new generation may hold the very bytes the
            # ingestion log has (MLflow did not change, the row did), which unforced is `unchanged`.
            result = _ingest(ref, context, filename, force=repair)
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
        context.record(row, run, outcome.verification, difference, history)
    elif outcome.outcome == "exported":
        outcome.verification, outcome.reason = "mismatch", "the row does not hold this export after ingestion"
    context.timed("verify", started)
    return outcome


def _repair_generation(row: QuickTestRow, context: Context, filename: str) -> int:
    """The generation --repair may replace: the one the mismatch was found on, else the file the row holds
    now, else 0 (no file: upload a new one)."""
    v = row.verification
    if row.mismatched and v is not None and v.generation is not None:
        return v.generation
    source = row.history_source or {}
    if str(source.get("generation", "")).isdigit():
        return int(source["generation"])
    blob = context.existing_blob(row, filename)
    return 0 if blob is None else int(blob.generation)


def _ingest_existing(outcome: RowOutcome, ref: ObjectRef, context: Context, filename: str) -> IngestResult | None:
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


def _row_holds(context: Context, row_id: int, generation: int) -> bool:
    history = context.histories([row_id]).get(row_id)
    source = history.get("source") if isinstance(history, dict) else None
    return isinstance(source, dict) and str(source.get("generation")) == str(generation)
