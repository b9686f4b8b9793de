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

import concurrent.futures as cf
import dataclasses
import datetime as dt
import re
import signal
import threading
import time
import uuid
import zlib
from collections.abc import Mapping
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ingest.config import Settings
from ingest.errors import TransientError
from ingest.objects import ObjectRef
from ingest.pipeline import IngestResult, ingest_object, is_metrics_object

# The outcomes of the function, plus ours for an object that could not
# be processed at all (a transient fault that outlived the retries).
OUTCOMES = ("ingested", "duplicate", "superseded", "no_matching_row", "rejected", "unchanged", "expired", "failed")
# What a dry run reports: what *would* happen.
DRY_RUN_LABELS = {
    "ingested": "would ingest",
    "duplicate": "duplicate",
    "superseded": "superseded",
    "no_matching_row": "no row",
    "rejected": "would reject",
    "unchanged": "unchanged",
    "expired": "expired",
    "failed": "failed",
}
BAD_OUTCOMES = ("rejected", "failed")

_BUCKET_NAME = re.compile(r"^[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]$")
# GCS object names are at most 1,024 bytes of UTF-8: a longer prefix matches nothing.
MAX_PREFIX_BYTES = 1024
# Workers are threads, each with a database connection and an HTTP connection:
# beyond this a replay only queues on the database (and a huge figure would
# pre-fill pools for nothing).
MAX_WORKERS = 256
# Cloud Run Jobs run at most 10,000 tasks; a shard count beyond it is a typo.
MAX_SHARDS = 10_000
# A reason or an error shown on one line of output is clipped to this.
LINE_REASON_CHARS = 300


class UsageError(ValueError):
    """A bad command line value (exit status 2)."""


class SetupError(RuntimeError):
    """Replay cannot start: no credentials, database unreachable or not migrated.

    ``exit_status`` is 2 when the command line or environment must change
    (nothing configured, a malformed value, migrations not applied) and 1 when
    what is configured is unreachable (rerunning later may work).

    Example::

        try:
            check_database(settings)
        except SetupError as exc:
            print(exc, file=sys.stderr)
            raise SystemExit(exc.exit_status)
    """

    def __init__(self, message: str, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


@dataclasses.dataclass(frozen=True)
class GcsTarget:
    """A bucket and an optional object-name prefix (``gs://bucket/prefix``).

    Example::

        GcsTarget("ml-artifacts", "quick_tests/").uri   # 'gs://ml-artifacts/quick_tests/'
    """

    bucket: str
    prefix: str = ""

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"


def parse_gs_uri(uri: str) -> GcsTarget:
    """``gs://bucket[/prefix]`` -> GcsTarget; raises UsageError otherwise.

    >>> parse_gs_uri("gs://ml-artifacts/quick_tests/")
    GcsTarget(bucket='ml-artifacts', prefix='quick_tests/')
    """
    shown = _clip(repr(uri), 120)  # an echo, not the whole of a 100 KB argument
    if not uri.startswith("gs://"):
        raise UsageError(f"expected gs://BUCKET[/PREFIX], got {shown}")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    if not _BUCKET_NAME.match(bucket):
        raise UsageError(f"invalid bucket name {_clip(repr(bucket), 80)} in {shown}")
    size = len(prefix.encode("utf-8", "surrogatepass"))
    if size > MAX_PREFIX_BYTES:
        # GCS would answer with an error page (or nothing): no object can match.
        raise UsageError(
            f"the prefix is {size} bytes; GCS object names are at most {MAX_PREFIX_BYTES} bytes, "
            f"so no object can match it (prefix starts {_clip(repr(prefix), 60)})"
        )
    if "*" in prefix or "?" in prefix:
        # A shell-style pattern would silently match nothing: GCS lists by plain prefix.
        raise UsageError(
            f"{shown}: the prefix is a plain name prefix, not a pattern; drop the wildcard "
            f"(e.g. {_clip('gs://' + bucket + '/' + prefix.split('*')[0].split('?')[0], 120)})"
        )
    return GcsTarget(bucket=bucket, prefix=prefix)


@dataclasses.dataclass(frozen=True)
class Shard:
    """One of ``count`` disjoint parts of a bucket: the objects whose name hashes to ``index``.

    The hash is CRC32 of the object name's UTF-8 bytes (stable across
    processes and machines, unlike Python's ``hash()``), so ``count`` tasks
    with indexes 0..count-1 together take every object exactly once.

    Example::

        shard = parse_shard("2/8")
        shard.takes("quick_tests/42/training_metrics.json"), str(shard)   # (False, '2/8')
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS or not 0 <= self.index < self.count:
            raise UsageError(
                f"invalid shard {self.index}/{self.count}: expected I/N with 0 <= I < N <= {MAX_SHARDS}"
            )

    def takes(self, name: str) -> bool:
        return zlib.crc32(name.encode("utf-8", "surrogatepass")) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> Shard(I, N) (0-based I, as Cloud Run numbers its tasks); raises UsageError.

    >>> parse_shard("0/4")
    Shard(index=0, count=4)
    """
    match = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*", text)
    if not match:
        raise UsageError(f"--shard: expected I/N (e.g. 0/4: the first of 4), got {_clip(repr(text), 40)}")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_from_env(env: Mapping[str, str]) -> Shard | None:
    """The Cloud Run Job task's shard (``CLOUD_RUN_TASK_INDEX`` of ``CLOUD_RUN_TASK_COUNT``), or None outside one.

    Raises UsageError when the variables are malformed or only one is set.
    """
    index, count = env.get("CLOUD_RUN_TASK_INDEX"), env.get("CLOUD_RUN_TASK_COUNT")
    if index is None and count is None:
        return None
    if index is None or count is None or not all(re.fullmatch(r"[0-9]{1,6}", v) for v in (index, count)):
        raise UsageError(
            "CLOUD_RUN_TASK_INDEX and CLOUD_RUN_TASK_COUNT must both be set to whole numbers; got "
            f"{_clip(repr(index), 20)} and {_clip(repr(count), 20)}"
        )
    return Shard(int(index), int(count))


_DURATION = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> dt.timedelta:
    """``"90s"``, ``"30m"``, ``"72h"``, ``"3d"`` -> a timedelta; raises UsageError.

    >>> parse_duration("72h")
    datetime.timedelta(days=3)
    """
    match = _DURATION.match(text.strip())
    if not match:
        raise UsageError(
            f"--since: expected a whole number and a unit s, m, h or d (e.g. 90s, 72h, 3d), "
            f"got {_clip(repr(text), 40)}"
        )
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > 36_500 * 86400:
        raise UsageError(f"--since {text.strip()} is more than 100 years; leave --since out for the whole prefix")
    return dt.timedelta(seconds=seconds)


def metrics_glob(filename: str) -> str | None:
    """The ``match_glob`` that asks GCS for the metrics files only, or None when the
    name holds a glob character (then every object is listed and filtered here)."""
    if any(c in filename for c in "*?[]{}\\,"):
        return None
    return f"**/{filename}"


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
    attempts: int = 3
    shard: Shard | None = None
    since: dt.timedelta | None = None
    match_glob: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= MAX_WORKERS:
            raise UsageError(
                f"Invalid value for argument `workers`. Received: workers={self.workers}. "
                f"Expected 1 to {MAX_WORKERS}."
            )
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


@dataclasses.dataclass
class ReplayReport:
    """What a replay did (or, with ``dry_run``, would do).

    Example::

        report = run_replay(options)
        report.counts["rejected"], report.exit_status, json.dumps(report.to_dict())
    """

    target: GcsTarget
    dry_run: bool
    force: bool
    workers: int
    run_id: str
    listed: int = 0
    outcomes: list[ObjectOutcome] = dataclasses.field(default_factory=list)
    matched: int = 0
    interrupted: bool = False
    duration_s: float = 0.0
    shard: Shard | None = None
    since: dt.timedelta | None = None
    match_glob: str | None = None
    other_shards: int = 0  # metrics files left to the other shards
    outside_since: int = 0  # metrics files of this shard not updated within --since: skipped, never touched

    @property
    def counts(self) -> dict[str, int]:
        counter = Counter(o.outcome for o in self.outcomes)
        return {name: counter.get(name, 0) for name in OUTCOMES}

    @property
    def not_started(self) -> int:
        return self.matched - len(self.outcomes)

    @property
    def exit_status(self) -> int:
        if self.interrupted:
            return 130
        return 1 if any(self.counts[name] for name in BAD_OUTCOMES) else 0

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


def list_metrics_objects(
    client: Any,
    target: GcsTarget,
    settings: Settings,
    stop: Callable[[], bool] = lambda: False,
    on_listing: Callable[[int, int], None] | None = None,
) -> tuple[int, list[ObjectRef]]:
    """(objects listed, every metrics file under the prefix): :func:`list_objects` without shard or window."""
    found = list_objects(client, target, settings, stop=stop, on_listing=on_listing)
    return found.listed, found.refs


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


class InterruptFlag:
    """Turns SIGINT into a flag while the replay runs (main thread only), so
    that Ctrl-C never lands in the middle of our own bookkeeping."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: Any = None

    def __enter__(self) -> InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            # A second Ctrl-C: the user insists. Objects in flight are each one
            # transaction, so even this leaves no partly written row.
            raise KeyboardInterrupt
        self.event.set()

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


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
        for outcome in _process(refs, options, settings, client, report.run_id, stop_events):
            report.outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
        # A Ctrl-C after the last object started changed nothing: not an interruption.
        report.interrupted = any(e.is_set() for e in stop_events) and (
            report.not_started > 0 or stopped_while_listing
        )
    report.duration_s = time.perf_counter() - started
    return report


def _process(
    refs: list[ObjectRef],
    options: ReplayOptions,
    settings: Settings,
    client: Any,
    run_id: str,
    stop_events: list[threading.Event],
) -> Iterator[ObjectOutcome]:
    """Run ``ingest_object`` over ``refs`` with a bounded number in flight.

    Submitting lazily (never more than 2 x workers queued) is what makes
    Ctrl-C cheap: once a stop is requested nothing new starts, and only the
    few objects already in flight are waited for.
    """
    pending: set[cf.Future[ObjectOutcome]] = set()
    todo = iter(enumerate(refs))
    limit = options.workers * 2
    with cf.ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="replay") as pool:
        while True:
            stopping = any(e.is_set() for e in stop_events)
            while not stopping and len(pending) < limit:
                item = next(todo, None)
                if item is None:
                    break
                index, ref = item
                event_id = f"replay:{run_id}:{index}"
                pending.add(pool.submit(_ingest_one, ref, options, settings, client, event_id))
            if not pending:
                return
            done, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
            yield from (future.result() for future in done)


def _ingest_one(ref: ObjectRef, options: ReplayOptions, settings: Settings, client: Any, event_id: str) -> ObjectOutcome:
    """One object through the function's code path, retrying transient faults."""
    retrying = Retrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(options.attempts),
        wait=wait_exponential(multiplier=0.5, max=8),
        reraise=True,
    )
    try:
        result = retrying(
            ingest_object,
            ref,
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


CREDENTIALS_HELP = (
    "no Google Cloud credentials found. Provide them with one of:\n"
    "  gcloud auth application-default login                       # your own account\n"
    "  export GOOGLE_APPLICATION_CREDENTIALS=/path/to/key.json     # a service account key\n"
    "  export STORAGE_EMULATOR_HOST=http://127.0.0.1:9023          # a local emulator (`metrics-ingest dev` prints it)"
)


def make_storage_client(workers: int = 4) -> Any:
    """A storage client whose HTTP connection pool fits ``workers`` threads.

    Raises UsageError when ``STORAGE_EMULATOR_HOST`` is not a URL or when no
    credentials are found (the message says how to provide them).
    """
    import os

    import google.auth.exceptions
    from google.cloud import storage

    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator and not re.match(r"^https?://[^/]+", emulator):
        # The client would fail on every request with "No connection adapters".
        raise UsageError(
            f"STORAGE_EMULATOR_HOST must be a URL with its scheme, e.g. http://{emulator}; got {emulator!r}"
        )
    try:
        client = storage.Client()
    except google.auth.exceptions.DefaultCredentialsError:
        raise UsageError(CREDENTIALS_HELP) from None
    try:
        import requests.adapters

        # The default pool (10) would make threads wait for a connection and
        # log "Connection pool is full" warnings beyond 10 workers.
        # (urllib3 pre-fills the pool's queue to its size: bounded by MAX_WORKERS.)
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, min(workers, MAX_WORKERS) + 2))
        client._http.mount("https://", adapter)
        client._http.mount("http://", adapter)
    except AttributeError:  # a client without a requests session: keep its defaults
        pass
    return client


def check_database(settings: Settings) -> None:
    """Connect once and check that the migrations ran and the platform table exists.

    Done before listing, so a wrong or missing DATABASE_URL is one clear
    message instead of every object failing three times. Raises SetupError.
    """
    import psycopg2
    from psycopg2 import sql

    where = "DATABASE_URL" if settings.database_url else "DATABASE_URL is not set, so libpq's defaults"
    hint = "set DATABASE_URL or pass --database-url"
    try:
        conn = psycopg2.connect(settings.database_url or "", connect_timeout=settings.db_connect_timeout)
    except psycopg2.ProgrammingError as exc:  # a malformed DSN
        raise SetupError(f"DATABASE_URL is not a valid connection string: {_first_line(exc)}", 2) from None
    except psycopg2.Error as exc:
        raise SetupError(
            f"cannot connect to the database ({where}): {_first_line(exc)}; {hint}",
            1 if settings.database_url else 2,
        ) from None
    try:
        with conn, conn.cursor() as cur:
            table = sql.Identifier(*settings.quicktest_table_name).as_string(conn)
            cur.execute("SELECT to_regclass('training_metrics_ingestions'), to_regclass(%s)", (table,))
            ingestions, quicktest = cur.fetchone()
    except psycopg2.Error as exc:
        raise SetupError(f"cannot read the database ({where}): {_first_line(exc)}") from None
    finally:
        conn.close()
    if ingestions is None:
        raise SetupError(
            "this database has no training_metrics_ingestions table: run `metrics-ingest migrate` first "
            f"(database: {where})",
            2,
        )
    if quicktest is None:
        raise SetupError(
            f"this database has no table {settings.quicktest_table!r} (QUICKTEST_TABLE names the platform's "
            f"QuickTest table; database: {where})",
            2,
        )


def _first_line(exc: BaseException) -> str:
    return _clip((str(exc).strip().splitlines() or [type(exc).__name__])[0], LINE_REASON_CHARS)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def one_line(text: str | None, limit: int = LINE_REASON_CHARS) -> str:
    r"""``text`` as one line for people: every run of white space (newlines
    included: PostgreSQL's ``LINE 1:`` excerpt and its caret) becomes one
    space, and more than ``limit`` characters are clipped with an ellipsis.

    >>> one_line('syntax error at "x"\nLINE 1: SELECT x\n               ^')
    'syntax error at "x" LINE 1: SELECT x ^'
    """
    return _clip(" ".join((text or "").split()), limit)


def format_duration(delta: dt.timedelta) -> str:
    """A timedelta in the largest whole unit --since accepts: ``72h``, ``3d``, ``90s``."""
    seconds = int(delta.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds % _UNIT_SECONDS[unit] == 0 and seconds >= _UNIT_SECONDS[unit]:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


# ---------------------------------------------------------------- output


def format_line(outcome: ObjectOutcome, dry_run: bool) -> str:
    """One plain line per object (the non-terminal progress)."""
    label = DRY_RUN_LABELS[outcome.outcome] if dry_run else outcome.outcome
    line = f"{label:<15} {outcome.uri}"
    result = outcome.result
    if result is not None and result.quicktest_id is not None:
        line += f" -> quicktest {result.quicktest_id}"
        if result.epochs is not None:
            line += f" ({result.epochs} epochs)"
    if outcome.reason:
        line += f": {one_line(outcome.reason)}"
    return line


def format_summary(report: ReplayReport) -> str:
    """The summary table by outcome, then every rejection and failure with its reason."""
    mode = "dry run of" if report.dry_run else "replay of"
    scope = f" ({report.scope})" if report.scope else ""
    skipped = []
    if report.shard is not None:
        skipped.append(f"{report.other_shards} in other shards")
    if report.since is not None:
        skipped.append(f"{report.outside_since} not updated within {format_duration(report.since)}, skipped")
    lines = [
        f"{mode} {_clip(report.target.uri, 200)}{scope}: {report.matched} metrics files "
        f"(of {report.listed} objects listed{''.join('; ' + s for s in skipped)}), {len(report.outcomes)} processed "
        f"in {report.duration_s:.1f} s with {report.workers} worker(s)"
        + (", --force" if report.force else "")
        + ("" if report.dry_run else f"; run id {report.run_id} (event_id 'replay:{report.run_id}:N' in the records)"),
        "",
        f"  {'outcome':<18}{'count':>7}",
    ]
    for name, count in report.counts.items():
        label = DRY_RUN_LABELS[name] if report.dry_run else name
        lines.append(f"  {label:<18}{count:>7}")
    if report.not_started:
        lines.append(f"  {'not started':<18}{report.not_started:>7}")
    bad = [o for o in report.outcomes if o.outcome in BAD_OUTCOMES]
    if bad:
        lines += ["", "Rejected or failed (fix the file and upload it again, or rerun):"]
        for o in sorted(bad, key=lambda o: o.ref.name):
            lines.append(f"  {o.outcome:<9}{o.uri}: {one_line(o.reason)}")
    if report.interrupted:
        lines += [
            "",
            f"Interrupted: {report.not_started} metrics files were not started; every file processed "
            "was fully ingested or left untouched. Run the same command again to finish.",
        ]
    return "\n".join(lines)


class Progress:
    """A tqdm bar on a terminal, plain lines otherwise (both on ``stream``).

    Rejections and failures are printed above the bar as they happen.

    Example::

        progress = Progress(sys.stderr, dry_run=False)
        run_replay(options, on_listed=progress.listed, on_outcome=progress.update)
        progress.close()
    """

    def __init__(self, stream: TextIO, dry_run: bool, tty: bool | None = None) -> None:
        self.stream = stream
        self.dry_run = dry_run
        self.tty = stream.isatty() if tty is None else tty
        self._bar: Any = None

    def listing(self, listed: int, matched: int) -> None:
        """While listing: one line rewritten in place on a terminal, a line per 10,000 otherwise."""
        if self.tty:
            print(f"\rlisting: {listed} objects, {matched} metrics files so far", end="", file=self.stream, flush=True)
        elif listed % 10_000 == 0:
            print(f"listing: {listed} objects, {matched} metrics files so far", file=self.stream, flush=True)

    def listed(self, listed: int, matched: int) -> None:
        if self.tty:
            print("\r\033[K", end="", file=self.stream, flush=True)  # clear the listing line
            from tqdm import tqdm

            self._bar = tqdm(total=matched, file=self.stream, unit="file", dynamic_ncols=True)
        else:
            print(f"listed {listed} objects, {matched} metrics files", file=self.stream, flush=True)

    def update(self, outcome: ObjectOutcome) -> None:
        if self._bar is not None:
            if outcome.outcome in BAD_OUTCOMES:
                self._bar.write(format_line(outcome, self.dry_run), file=self.stream)
            self._bar.update(1)
        else:
            print(format_line(outcome, self.dry_run), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


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
    "SetupError",
    "Shard",
    "UsageError",
    "check_database",
    "format_duration",
    "format_summary",
    "list_metrics_objects",
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
