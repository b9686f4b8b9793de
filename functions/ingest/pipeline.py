"""THE ingestion code path, shared by the Cloud Function and ``metrics-ingest replay``.

Steps, cheapest first: name filter -> what the database already knows (row,
recorded generations and hashes; a duplicate, superseded or unchanged
generation, or an event already settled, is decided and recorded in the same
round trip) -> size from the event -> bounded download
of exactly the event's generation -> decode, parse, validate, normalize ->
one guarded write (one round trip). A first ingestion costs two database
round trips, a duplicate one.
Every outcome is recorded in ``training_metrics_ingestions``; transient faults
raise :class:`ingest.errors.TransientError` so the event is redelivered.

Example::

    ref = ObjectRef.from_resource(cloud_event.data)
    if is_metrics_object(ref.name, settings):
        result = ingest_object(ref, settings=settings, event_id=cloud_event["id"])
        print(result.outcome, result.reason)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import posixpath
import time
import traceback
from typing import Any

from ingest import document, gcs, store
from ingest.config import Settings
from ingest.errors import Gone, Rejected, TransientError, printable
from ingest.memory import memory_budget, memory_weight
from ingest.logs import log_event
from ingest.objects import ObjectRef
from ingest.summary import summarize

_SEVERITY = {
    "ingested": "INFO",
    "duplicate": "INFO",
    "superseded": "INFO",
    "no_matching_row": "WARNING",
    "rejected": "ERROR",
    "unchanged": "INFO",
    # Recorded: the nightly reconciliation ingests the object; an operator may look.
    "expired": "WARNING",
}


@dataclasses.dataclass(frozen=True)
class IngestResult:
    """What happened to one object generation.

    Example::

        result = ingest_object(ref)
        result.outcome     # 'ingested' | 'duplicate' | 'superseded' | 'no_matching_row' | 'rejected'
                           # | 'unchanged' | 'expired'
        result.to_dict()   # JSON-ready, for logs and `replay --json`
    """

    outcome: str
    reason: str | None
    quicktest_id: int | None
    epochs: int | None
    size: int | None
    duration_ms: float
    ref: ObjectRef
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.ref.bucket,
            "object": self.ref.name,
            "generation": self.ref.generation,
            "outcome": self.outcome,
            "reason": self.reason,
            "quicktest_id": self.quicktest_id,
            "epochs": self.epochs,
            "size": self.size,
            "duration_ms": round(self.duration_ms, 3),
            "dry_run": self.dry_run,
        }


def is_metrics_object(name: str, settings: Settings | str) -> bool:
    """True when the object's base name is the metrics file name (nothing else is ingested).

    ``settings`` may be the file name itself: the function filters before it
    reads the rest of its configuration.
    """
    filename = settings if isinstance(settings, str) else settings.metrics_filename
    return posixpath.basename(name) == filename


def ingest_object(
    ref: ObjectRef,
    *,
    settings: Settings | None = None,
    event_id: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    client: Any = None,
    event_time: dt.datetime | None = None,
) -> IngestResult:
    """Ingest one generation of one object into its QuickTest row; record and log the outcome.

    Args:
        ref: the object generation (``ObjectRef.from_resource(event.data)``).
        settings: defaults to ``Settings.from_env()``.
        event_id: the CloudEvent id, kept in the record and the log.
        force: re-ingest a generation already ingested (an older one still never
            overwrites a newer one).
        dry_run: decide everything, write nothing (no row update, no record).
        client: a ``google.cloud.storage.Client``; defaults to the shared lazy one.
        event_time: the CloudEvent's ``time``. An event older than
            ``settings.max_event_age`` whose failure would be retried is
            recorded ``expired`` and acknowledged instead (logged at ERROR when
            the database does not answer either): the nightly reconciliation,
            whose window is longer, ingests its object. None: never expires.

    Raises:
        TransientError: database unreachable, GCS 5xx or timeout: retry later.
        Exception: anything unforeseen (a bug) is logged, then raised: the
            event is retried rather than lost.

    The caller is expected to pass only metrics files (:func:`is_metrics_object`).
    Thread-safe: connections come from a pool, the GCS client is shared.
    """
    settings = settings or Settings.from_env()
    started = time.perf_counter()
    if event_id is not None and not event_id.isprintable():
        event_id = printable(event_id, 200)  # the id is recorded: no NUL or lone surrogate
    fields = {"event_id": event_id, "object": f"gs://{ref.bucket}/{ref.name}", "generation": ref.generation}
    try:
        with memory_budget(settings.memory_budget_bytes).hold(memory_weight(ref, settings.max_metrics_bytes)):
            result = _run(ref, settings, event_id, force, dry_run, client, started)
    except Exception as exc:
        age = _age_seconds(event_time)
        if age is not None and age > settings.max_event_age and not dry_run:
            return _expire(ref, settings, event_id, exc, age, started, fields)
        if isinstance(exc, TransientError):
            _log_retry(exc, fields, started)
        else:
            _log_unexpected(exc, fields, started)
        raise
    log_event(
        _SEVERITY[result.outcome],
        f"{result.outcome}: {result.reason}" if result.reason else result.outcome,
        **fields,
        outcome=result.outcome,
        reason=result.reason,
        quicktest_id=result.quicktest_id,
        epochs=result.epochs,
        size=result.size,
        md5_hash=ref.md5_hash,
        dry_run=dry_run,
        duration_ms=round(result.duration_ms, 3),
    )
    return result


def _age_seconds(event_time: dt.datetime | None) -> float | None:
    if event_time is None:
        return None
    if event_time.tzinfo is None:  # CloudEvents times are RFC 3339; a naive one is read as UTC
        event_time = event_time.replace(tzinfo=dt.timezone.utc)
    return (dt.datetime.now(dt.timezone.utc) - event_time).total_seconds()


def _expire(
    ref: ObjectRef,
    settings: Settings,
    event_id: str | None,
    exc: BaseException,
    age: float,
    started: float,
    fields: dict[str, Any],
) -> IngestResult:
    """Acknowledge an event too old to retry again: record ``expired`` (or, when the
    database does not answer, log it at ERROR), so that it is never silently lost."""
    cause = printable(f"{type(exc).__name__}: {exc}", 160)
    reason = (
        f"the event is {age / 3600:.1f}h old, past MAX_EVENT_AGE ({settings.max_event_age / 3600:g}h): acknowledged"
        f" instead of retried again (the reconciliation replays the object); last failure: {cause}"
    )
    duration = _ms(started)
    rec = store.Record(ref, "expired", event_id, None, printable(reason), None, duration, False)
    try:
        store.run(settings, lambda conn: store.record(conn, rec))
        severity, message = "WARNING", f"expired: {reason}"
    except TransientError as db_exc:
        severity = "ERROR"
        message = printable(f"expired, NOT recorded (the database did not answer: {db_exc}): {reason}", 1000)
    log_event(severity, message, **fields, outcome="expired", reason=reason, md5_hash=ref.md5_hash,
              duration_ms=round(duration, 3))
    return IngestResult("expired", reason, None, None, ref.size, duration, ref)


def _log_retry(exc: BaseException, fields: dict[str, Any], started: float) -> None:
    log_event("ERROR", f"transient failure, the event will be retried: {exc}", **fields, outcome="retry",
              duration_ms=_ms(started))


def _log_unexpected(exc: BaseException, fields: dict[str, Any], started: float) -> None:
    # Not a known outcome: log it in the same shape (the platform's own
    # trace has no event id), then let the event be retried.
    log_event(
        "ERROR",
        printable(f"unexpected failure, the event will be retried: {type(exc).__name__}: {exc}", 1000),
        **fields,
        outcome="error",
        error=type(exc).__name__,
        exception=traceback.format_exc(limit=20),
        duration_ms=_ms(started),
    )


def _run(
    ref: ObjectRef,
    settings: Settings,
    event_id: str | None,
    force: bool,
    dry_run: bool,
    client: Any,
    started: float,
) -> IngestResult:
    def finish(outcome: str, reason: str | None, quicktest_id: int | None, epochs: int | None = None) -> IngestResult:
        return IngestResult(outcome, reason, quicktest_id, epochs, ref.size, _ms(started), ref, dry_run)

    def settle(outcome: str, reason: str | None, quicktest_id: int | None, epochs: int | None = None) -> IngestResult:
        """An outcome decided without writing the row: record it (unless dry run)."""
        result = finish(outcome, reason, quicktest_id, epochs)
        if not dry_run:
            rec = store.Record(ref, outcome, event_id, quicktest_id, reason, epochs, result.duration_ms, False)
            store.run(settings, lambda conn: store.record(conn, rec))
        return result

    if "" in ref.name.split("/"):
        # 'F//training_metrics.json' and 'F/training_metrics.json' are two
        # objects with one folder, hence one row, but separate generation
        # histories: an older generation of one would overwrite the other's newer one.
        return settle(
            "rejected",
            "the object name has an empty path segment ('//' or a leading '/'): it would share its QuickTest row"
            " with the name without it; upload to the folder's own training_metrics.json",
            None,
        )
    # What the database knows decides first (no row, duplicate, superseded),
    # and is recorded by the same statement: a redelivered or replayed
    # generation is a duplicate whatever size its event claims.
    # Each database step runs once more on a fresh connection if its pooled
    # one died (restart, failover): reads, and writes guarded by generation
    # and by the event (a record whose commit was acknowledged to no one is
    # found on the retry, never written twice). Same bytes as the generation
    # the row holds (the event's md5Hash/crc32c): 'unchanged', not downloaded.
    known = store.run(
        settings,
        lambda conn: store.check(
            conn, settings, ref, force=force, record=not dry_run, event_id=event_id, duration_ms=_ms(started)
        ),
    )
    state = known.state
    if known.outcome is not None:
        return finish(known.outcome, known.reason, state.quicktest_id)
    if ref.size is not None and ref.size > settings.max_metrics_bytes:
        return settle(
            "rejected",
            f"the object is {ref.size} bytes, over MAX_METRICS_BYTES ({settings.max_metrics_bytes}); not downloaded",
            state.quicktest_id,
        )

    try:
        data = gcs.download(ref, settings, gcs=client)
        prepared = document.prepare(data)
    except Gone as exc:
        return settle("superseded", f"{exc} (replaced or deleted since the event)", state.quicktest_id)
    except Rejected as exc:
        return settle("rejected", exc.reason, state.quicktest_id)
    del data  # the downloaded bytes: not kept alive through the write (memory per event)

    epochs = len(prepared.document["epochs"])
    if dry_run:
        return finish("ingested", "dry run: would be ingested", state.quicktest_id, epochs)
    # The file's own text is stored when normalization only adds top-level
    # keys: PostgreSQL parses it once instead of this process re-serializing.
    history = dict(prepared.added) if prepared.text is not None else prepared.document
    # Written by the function: replaces any summary the file held (added keys come last, and win).
    history["summary"] = summarize(prepared.document)
    status = prepared.document["status"]
    raw_text = prepared.text
    del prepared  # with raw_text, the parsed document is freed before the write builds its query
    history["source"] = {
        "bucket": ref.bucket,
        "object": ref.name,
        "generation": str(ref.generation),  # int64: a string, as GCS writes it
        "size": ref.size,
    }
    history["ingested_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    try:
        written = store.run(
            settings,
            lambda conn: store.write(
                conn,
                settings,
                ref,
                history,
                raw_text=raw_text,
                event_id=event_id,
                epochs=epochs,
                duration_ms=_ms(started),
                force=force,
                status=status,
            ),
        )
    except Rejected as exc:
        return settle("rejected", exc.reason, state.quicktest_id, epochs)
    return finish(written.outcome, written.reason, written.quicktest_id, epochs)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
