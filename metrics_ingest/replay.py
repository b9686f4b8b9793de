"""Replay a bucket prefix through the Cloud Function's own code path.

``metrics-ingest replay`` lists ``gs://BUCKET[/PREFIX]`` page by page, keeps
the metrics files (``ingest.pipeline.is_metrics_object``, the very test the
function applies) and hands each to ``ingest.pipeline.ingest_object`` from a
pool of worker threads. Validation, idempotency, the generation rules and
the ingestion records are therefore exactly the function's.

Each ``ingest_object`` call is one database transaction, so an interrupted
replay leaves every object either fully ingested or untouched: on Ctrl-C we
stop submitting, let the objects in flight finish, and report what was done.

Example::

    report = run_replay(ReplayOptions(target=parse_gs_uri("gs://ml-artifacts/quick_tests"), workers=8))
    print(format_summary(report))
    raise SystemExit(report.exit_status)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ingest.config import Settings
from ingest.errors import TransientError
from ingest.objects import ObjectRef
from ingest.pipeline import IngestResult, ingest_object, is_metrics_object
from metrics_ingest import batch
from metrics_ingest._replay_output import (  # the replay's output, re-exported
    BAD_OUTCOMES,
    DRY_RUN_LABELS,
    OUTCOMES,
    Progress,
    format_line,
    format_no_row,
    format_summary,
)
from metrics_ingest._replay_scope import (  # what a replay covers, re-exported
    BUCKET_NAME,
    MAX_PREFIX_BYTES,
    MAX_SHARDS,
    GcsTarget,
    Shard,
    format_duration,
    metrics_glob,
    parse_duration,
    parse_gs_uri,
    parse_shard,
    shard_from_env,
)
from metrics_ingest.batch import InterruptFlag, UsageError, check_database, make_storage_client, one_line


@dataclasses.dataclass(frozen=True)
class ReplayOptions:
    """What to replay and how.

    Args:
        target: the bucket and prefix to list.
        workers: parallel ``ingest_object`` calls (int, default 4).
        dry_run: decide every outcome, write nothing (default False).
        force: re-ingest generations already ingested (default False).
        settings: the function's settings; None (default) reads the environment.
        attempts: tries per object when a transient fault is raised (default 3).
        shard: take only this shard's objects (Shard, default None: all).
        since: take only objects updated within this long before the start
            (timedelta, default None: all); older ones are counted as skipped.
        match_glob: ask GCS for the metrics files only (default True); every
            name is still checked here, since emulators may ignore it.

    Example::

        ReplayOptions(parse_gs_uri("gs://ml-artifacts/quick_tests"), workers=8, shard=parse_shard("0/4"),
                      since=parse_duration("72h"))
    """

    target: GcsTarget
    workers: int = 4
    dry_run: bool = False
    force: bool = False
    settings: Settings | None = None
    attempts: int = batch.DEFAULT_ATTEMPTS
    shard: Shard | None = None
    since: dt.timedelta | None = None
    match_glob: bool = True

    def __post_init__(self) -> None:
        batch.check_workers(self.workers)
        if self.attempts < 1:
            raise UsageError(f"Invalid value for argument `attempts`. Received: attempts={self.attempts}. Expected >= 1.")


@dataclasses.dataclass(frozen=True)
class ObjectOutcome:
    """One object's fate: the function's result, or ``failed`` with the error.

    Example::

        outcome.outcome, outcome.reason, outcome.uri   # 'rejected', 'the file is empty', 'gs://b/q/1/...#17'
    """

    ref: ObjectRef
    outcome: str
    reason: str | None = None
    result: IngestResult | None = None

    @property
    def uri(self) -> str:
        return f"gs://{self.ref.bucket}/{self.ref.name}#{self.ref.generation}"

    def to_dict(self) -> dict[str, Any]:
        # The same keys for every object, a failed one included (None where
        # nothing is known), so a consumer can index without checking.
        data: dict[str, Any] = {
            "object": self.ref.name,
            "quicktest_id": None,
            "epochs": None,
            "size": self.ref.size,
            "duration_ms": None,
            "dry_run": None,
        }
        if self.result is not None:
            data.update(self.result.to_dict())
        data.update(
            {
                "uri": self.uri,
                "bucket": self.ref.bucket,
                "name": self.ref.name,
                "generation": self.ref.generation,
                "outcome": self.outcome,
                "reason": self.reason,
            }
        )
        data.pop("ref", None)
        return _jsonable(data)


@dataclasses.dataclass(kw_only=True)
class ReplayReport(batch.BatchReport):
    """What a replay did (or, with ``dry_run``, would do).

    Example::

        report = run_replay(options)
        report.counts["rejected"], report.exit_status, json.dumps(report.to_dict())
    """

    OUTCOMES: ClassVar[tuple[str, ...]] = OUTCOMES

    target: GcsTarget
    dry_run: bool
    force: bool
    outcomes: list[ObjectOutcome] = dataclasses.field(default_factory=list)
    listed: int = 0
    matched: int = 0
    shard: Shard | None = None
    since: dt.timedelta | None = None
    match_glob: str | None = None
    other_shards: int = 0  # metrics files left to the other shards
    outside_since: int = 0  # metrics files of this shard not updated within --since: skipped, never touched

    @property
    def total(self) -> int:
        return self.matched

    def is_bad(self, outcome: ObjectOutcome) -> bool:
        return outcome.outcome in BAD_OUTCOMES

    @property
    def no_row(self) -> list[ObjectOutcome]:
        """The files that matched no QuickTest row (usually a wrong gcs_artifacts_path), by name."""
        return sorted((o for o in self.outcomes if o.outcome == "no_matching_row"), key=lambda o: o.ref.name)

    @property
    def scope(self) -> str:
        """``shard 2/8, updated in the last 72h`` (empty for a whole-prefix replay)."""
        parts = []
        if self.shard is not None:
            parts.append(f"shard {self.shard}")
        if self.since is not None:
            parts.append(f"updated in the last {format_duration(self.since)}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.uri,
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "force": self.force,
            "workers": self.workers,
            "shard": None if self.shard is None else {"index": self.shard.index, "count": self.shard.count},
            "since": None if self.since is None else format_duration(self.since),
            "match_glob": self.match_glob,
            "listed": self.listed,
            "skipped": {"other_shards": self.other_shards, "outside_since": self.outside_since},
            "metrics_objects": self.matched,
            "processed": len(self.outcomes),
            "not_started": self.not_started,
            "interrupted": self.interrupted,
            "duration_s": round(self.duration_s, 3),
            "counts": self.counts,
            "exit_status": self.exit_status,
            "objects": [o.to_dict() for o in sorted(self.outcomes, key=lambda o: (o.ref.name, o.ref.generation))],
        }


LISTING_REPORT_EVERY = 1000  # objects between two on_listing calls (one listing page)


@dataclasses.dataclass
class Listing:
    """What one pass over the prefix found.

    Example::

        listing = list_objects(client, target, settings, shard=parse_shard("1/4"))
        listing.listed, len(listing.refs), listing.other_shards
    """

    listed: int = 0  # objects the listing returned (all of them without match_glob)
    refs: list[ObjectRef] = dataclasses.field(default_factory=list)  # this replay's metrics files
    other_shards: int = 0
    outside_since: int = 0
    match_glob: str | None = None


def list_objects(
    client: Any,
    target: GcsTarget,
    settings: Settings,
    *,
    shard: Shard | None = None,
    updated_after: dt.datetime | None = None,
    match_glob: bool = True,
    stop: Callable[[], bool] = lambda: False,
    on_listing: Callable[[int, int], None] | None = None,
) -> Listing:
    """List the prefix once (the client pages through it) and keep this replay's metrics files.

    With ``match_glob`` GCS is asked for the metrics files only; each name is
    still checked here with the function's own test (an emulator may ignore
    the glob). Of those, the ones another shard takes and the ones not
    updated after ``updated_after`` are only counted. Stops early, with what
    it has, once ``stop()`` is true. ``on_listing`` gets (listed, kept) every
    LISTING_REPORT_EVERY objects: listing a big bucket takes a while and
    should not look like a hang.
    """
    from google.api_core.retry import Retry
    from google.cloud.storage.retry import DEFAULT_RETRY

    found = Listing(match_glob=metrics_glob(settings.metrics_filename) if match_glob else None)
    # The client's default retry budget is 120 s per page: an unreachable
    # endpoint would look like a hang. Bound it by GCS_TIMEOUT_SECONDS instead.
    retry: Retry = DEFAULT_RETRY.with_timeout(settings.gcs_timeout)
    extra = {"match_glob": found.match_glob} if found.match_glob else {}
    pages = client.list_blobs(
        target.bucket, prefix=target.prefix or None, timeout=settings.gcs_timeout, retry=retry, **extra
    )
    for blob in pages:
        if stop():
            break
        found.listed += 1
        if is_metrics_object(blob.name, settings):
            if shard is not None and not shard.takes(blob.name):
                found.other_shards += 1
            elif updated_after is not None and not _updated_after(blob._properties, updated_after):
                found.outside_since += 1
            else:
                # The listing gives the same object resource the finalize event carries.
                found.refs.append(ObjectRef.from_resource(blob._properties))
        if on_listing is not None and found.listed % LISTING_REPORT_EVERY == 0:
            on_listing(found.listed, len(found.refs))
    return found


def _updated_after(resource: Mapping[str, Any], after: dt.datetime) -> bool:
    """Whether the object resource's ``updated`` time is at or after ``after``.

    An object without a readable time is kept: replaying it costs a
    duplicate at worst, skipping it could lose it."""
    raw = resource.get("updated") or resource.get("timeCreated")
    if not isinstance(raw, str):
        return True
    try:
        updated = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return True
    if updated.tzinfo is None:
        updated = updated.replace(tzinfo=dt.timezone.utc)
    return updated >= after


def run_replay(
    options: ReplayOptions,
    *,
    client: Any = None,
    on_outcome: Callable[[ObjectOutcome], None] | None = None,
    on_listed: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
    on_listing: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Replay ``options.target``; returns the report (see ``exit_status``).

    Args:
        options: what to replay.
        client: a ``google.cloud.storage.Client``; None creates one (honours
            ``STORAGE_EMULATOR_HOST``). It is shared by the worker threads.
        on_outcome: called in the calling thread after each object.
        on_listed: called once with (objects listed, metrics objects).
        on_listing: called with (listed so far, metrics objects so far) while listing.
        stop: set it to stop submitting (Ctrl-C sets an internal one too).
    """
    settings = options.settings or Settings.from_env()
    pool_size = getattr(settings, "db_pool_size", None)
    if isinstance(pool_size, int) and pool_size < options.workers:
        # One database connection per worker, or workers queue for connections.
        settings = dataclasses.replace(settings, db_pool_size=options.workers)
    if client is None:
        client = make_storage_client(options.workers)
    report = ReplayReport(
        target=options.target,
        dry_run=options.dry_run,
        force=options.force,
        workers=options.workers,
        run_id=uuid.uuid4().hex[:12],
        shard=options.shard,
        since=options.since,
    )
    started = time.perf_counter()
    updated_after = None if options.since is None else dt.datetime.now(dt.timezone.utc) - options.since
    with InterruptFlag() as interrupt:
        stop_events = [interrupt.event] + ([stop] if stop is not None else [])
        found = list_objects(
            client,
            options.target,
            settings,
            shard=options.shard,
            updated_after=updated_after,
            match_glob=options.match_glob,
            stop=lambda: any(e.is_set() for e in stop_events),
            on_listing=on_listing,
        )
        listed, refs = found.listed, found.refs
        report.listed, report.matched = listed, len(refs)
        report.other_shards, report.outside_since, report.match_glob = (
            found.other_shards,
            found.outside_since,
            found.match_glob,
        )
        stopped_while_listing = any(e.is_set() for e in stop_events)
        if on_listed is not None:
            on_listed(listed, len(refs))
        def work(item: tuple[int, ObjectRef]) -> list[ObjectOutcome]:
            index, ref = item
            return [_ingest_one(ref, options, settings, client, f"replay:{report.run_id}:{index}")]

        stopping = lambda: any(e.is_set() for e in stop_events)  # noqa: E731
        for outcome in batch.bounded(enumerate(refs), work, workers=options.workers, stopping=stopping, name="replay"):
            report.outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
        # A Ctrl-C after the last object started changed nothing: not an interruption.
        report.interrupted = any(e.is_set() for e in stop_events) and (
            report.not_started > 0 or stopped_while_listing
        )
    report.duration_s = time.perf_counter() - started
    return report


def _ingest_one(ref: ObjectRef, options: ReplayOptions, settings: Settings, client: Any, event_id: str) -> ObjectOutcome:
    """One object through the function's code path, retrying transient faults."""
    try:
        result = batch.with_retries(
            ingest_object,
            ref,
            attempts=options.attempts,
            settings=settings,
            event_id=event_id,
            force=options.force,
            dry_run=options.dry_run,
            client=client,
        )
    except TransientError as exc:
        return ObjectOutcome(ref, "failed", one_line(f"transient fault after {options.attempts} tries: {exc}"))
    except Exception as exc:  # noqa: BLE001 - one broken object must not stop a backfill; it is reported
        return ObjectOutcome(ref, "failed", one_line(f"{type(exc).__name__}: {exc}"))
    return ObjectOutcome(ref, result.outcome, result.reason, result)


def _jsonable(data: Any) -> Any:
    if isinstance(data, dict):
        return {str(k): _jsonable(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_jsonable(v) for v in data]
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return _jsonable(dataclasses.asdict(data))
    if data is None or isinstance(data, (str, int, float, bool)):
        return data
    return str(data)


__all__ = [
    "GcsTarget",
    "Listing",
    "ObjectOutcome",
    "Progress",
    "ReplayOptions",
    "ReplayReport",
    "Shard",
    "UsageError",
    "check_database",
    "format_duration",
    "format_line",
    "format_no_row",
    "format_summary",
    "list_objects",
    "make_storage_client",
    "metrics_glob",
    "one_line",
    "parse_duration",
    "parse_gs_uri",
    "parse_shard",
    "run_replay",
    "shard_from_env",
]
