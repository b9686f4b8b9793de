"""ingest_object end to end: real GCS client against the emulator, real PostgreSQL."""

from __future__ import annotations

import gzip
import json
import random
import threading
import uuid
from typing import Any

import pytest
from psycopg2 import sql

from ingest import store
from ingest.errors import TransientError
from ingest.objects import ObjectRef
from ingest.pipeline import IngestResult, ingest_object
from metrics_ingest.localstack.emulator import Fault
from metrics_ingest.migrations import create_dev_platform_table
from tests.support.documents import appendix_document, dumps, v1_document
from tests.support.platform_db import Artifacts, PlatformDb


def _ingest(platform_db: PlatformDb, resource: dict[str, Any], **kwargs: Any) -> IngestResult:
    """One delivery: a new event id unless ``event_id`` names one (a redelivery)."""
    settings = kwargs.pop("settings", None) or platform_db.settings()
    event_id = kwargs.pop("event_id", None) or f"evt-{uuid.uuid4().hex[:12]}"
    return ingest_object(ObjectRef.from_resource(resource), settings=settings, event_id=event_id, **kwargs)


def _without_ingestion_keys(history: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in history.items() if k not in ("source", "ingested_at", "summary")}


@pytest.mark.parametrize("trailing_slash", [False, True])
def test_valid_v1_file_is_ingested(platform_db: PlatformDb, artifacts: Artifacts, trailing_slash: bool) -> None:
    """A valid file lands in the row with source and ingested_at, and one 'ingested' record."""
    row_id, folder = platform_db.new_quicktest(trailing_slash=trailing_slash)
    doc = v1_document(4)
    resource = artifacts.upload(folder, dumps(doc))
    result = _ingest(platform_db, resource, event_id="evt-1")
    assert (result.outcome, result.quicktest_id, result.epochs) == ("ingested", row_id, 4)
    summary = json.loads(json.dumps(result.to_dict()))
    assert (summary["outcome"], summary["object"], summary["generation"], summary["dry_run"]) == (
        "ingested",
        resource["name"],
        int(resource["generation"]),
        False,
    )
    history = platform_db.history(row_id)
    assert isinstance(history, dict)  # jsonb: Django's JSONField reads a dict
    assert _without_ingestion_keys(history) == doc
    assert history["source"] == {
        "bucket": "ml-artifacts",
        "object": resource["name"],
        "generation": resource["generation"],
        "size": int(resource["size"]),
    }
    assert history["ingested_at"].endswith("Z")
    [record] = platform_db.ingestions("ml-artifacts", resource["name"])
    assert (record["outcome"], record["quicktest_id"], record["epochs"], record["event_id"]) == (
        "ingested",
        row_id,
        4,
        "evt-1",
    )
    assert record["generation"] == int(resource["generation"]) and record["size_bytes"] == int(resource["size"])


def test_appendix_format_file_is_ingested(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """A file in the original plan's appendix format (indented, no schema_version) is ingested and filled in."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, json.dumps(appendix_document(3), indent=2).encode())
    assert _ingest(platform_db, resource).outcome == "ingested"
    history = platform_db.history(row_id)
    assert (history["schema_version"], history["status"], history["metrics"]) == (1, "completed", {})


def test_gzip_object_is_inflated(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """An object stored with Content-Encoding gzip is inflated before parsing."""
    row_id, folder = platform_db.new_quicktest()
    doc = v1_document(3)
    resource = artifacts.upload(folder, gzip.compress(dumps(doc)), content_encoding="gzip")
    assert _ingest(platform_db, resource).outcome == "ingested"
    assert _without_ingestion_keys(platform_db.history(row_id)) == doc


def test_same_event_twice_writes_once(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """The second delivery of one event is a duplicate, does not touch the row and adds no record;
    another event for the same generation (a replay) is recorded as a duplicate."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    assert _ingest(platform_db, resource, event_id="evt-twice").outcome == "ingested"
    first = platform_db.history(row_id)
    second = _ingest(platform_db, resource, event_id="evt-twice")
    assert second.outcome == "duplicate" and "already handled: ingested" in (second.reason or "")
    assert platform_db.history(row_id) == first  # same ingested_at: not rewritten
    assert [r["outcome"] for r in platform_db.ingestions("ml-artifacts", resource["name"])] == ["ingested"]
    other = _ingest(platform_db, resource, event_id="replay:1:0")
    assert other.outcome == "duplicate" and "already ingested" in (other.reason or "")
    assert [r["outcome"] for r in platform_db.ingestions("ml-artifacts", resource["name"])] == ["ingested", "duplicate"]


def test_older_generation_after_newer_is_superseded(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """Generation N delivered after N+1 is superseded; the row keeps N+1."""
    row_id, folder = platform_db.new_quicktest()
    old = artifacts.upload(folder, dumps(v1_document(2, status="running")))
    new = artifacts.upload(folder, dumps(v1_document(3)))
    assert _ingest(platform_db, new).outcome == "ingested"
    late = _ingest(platform_db, old)
    assert late.outcome == "superseded" and new["generation"] in (late.reason or "")
    assert platform_db.history(row_id)["source"]["generation"] == new["generation"]
    assert platform_db.history(row_id)["epochs"] == [0, 1, 2]


def test_replaced_generation_404_is_recorded_as_superseded(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """An event whose generation was replaced before delivery (GCS 404) is recorded and acknowledged."""
    row_id, folder = platform_db.new_quicktest()
    old = artifacts.upload(folder, dumps(v1_document(2)))
    artifacts.upload(folder, dumps(v1_document(3)))  # replaces it; its own event not delivered yet
    result = _ingest(platform_db, old)
    assert result.outcome == "superseded" and "no longer exists" in (result.reason or "")
    assert platform_db.history(row_id) is None
    [record] = platform_db.ingestions("ml-artifacts", old["name"])
    assert record["outcome"] == "superseded" and record["quicktest_id"] == row_id


def test_concurrent_deliveries_keep_the_newest(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """16 concurrent deliveries of mixed generations leave the newest in the row and a consistent log."""
    row_id, folder = platform_db.new_quicktest()
    resources = [artifacts.upload(folder, dumps(v1_document(e + 1))) for e in range(3)]
    events = [resources[i % 3] for i in range(16)]
    random.Random(5).shuffle(events)
    results: list[IngestResult] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def deliver(resource: dict[str, Any]) -> None:
        barrier.wait()
        try:
            results.append(_ingest(platform_db, resource))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(r,)) for r in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    newest = resources[-1]
    assert platform_db.history(row_id)["source"]["generation"] == newest["generation"]
    assert platform_db.history(row_id)["epochs"] == [0, 1, 2]
    records = platform_db.ingestions("ml-artifacts", newest["name"])
    assert len(records) == 16
    ingested = [r for r in records if r["outcome"] == "ingested"]
    assert [r["generation"] for r in ingested] == [int(newest["generation"])]
    assert {r["outcome"] for r in records if r["generation"] == int(newest["generation"])} <= {"ingested", "duplicate"}
    assert {r["outcome"] for r in records if r["generation"] != int(newest["generation"])} == {"superseded"}
    assert sorted(r.outcome for r in results) == sorted(r["outcome"] for r in records)


def test_no_matching_row(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """A metrics file in a folder no QuickTest points at is recorded as no_matching_row."""
    resource = artifacts.upload("quick_tests/orphan-0001", dumps(v1_document(2)))
    fault = artifacts.emulator.inject(Fault("GET", "orphan-0001", status=None, times=1000))
    result = _ingest(platform_db, resource)
    assert (result.outcome, result.quicktest_id) == ("no_matching_row", None)
    assert "gs://ml-artifacts/quick_tests/orphan-0001" in (result.reason or "")
    assert fault.hits == 0  # decided from the database alone: nothing downloaded
    assert [r["outcome"] for r in platform_db.ingestions("ml-artifacts", resource["name"])] == ["no_matching_row"]


def _bomb(inflated: int) -> bytes:
    return gzip.compress(b'{"epochs": [], "params": {"pad": "' + b" " * inflated + b'"}}', compresslevel=9)


HOSTILE: list[tuple[str, bytes, str | None, str]] = [
    ("empty", b"", None, "empty"),
    ("not-json", b"<html>503</html>", None, "not JSON"),
    ("truncated", dumps(v1_document(3))[:-25], None, "ends early"),
    ("top-level-list", b"[]", None, "top-level value is an array"),
    ("wrong-types", dumps({**v1_document(2), "epochs": [0, "1"]}), None, "at $.epochs[1]"),
    ("misaligned", dumps({**v1_document(3), "loss": {"loss": [1.0]}}), None, "loss.loss has 1 values for 3 epochs"),
    ("epochs-not-increasing", b'{"epochs": [0, 2, 1]}', None, "epochs must strictly increase"),
    ("invalid-utf8", b'{"epochs": [], "params": {"x": "\xff\xfe"}}', None, "not valid UTF-8"),
    ("deep-nesting", b'{"epochs": [], "params": {"p": ' + b"[" * 20_000 + b"]" * 20_000 + b"}}", None, "nested more than"),
    ("nul-character", b'{"epochs": [], "params": {"x": "a\\u0000b"}}', None, "PostgreSQL cannot store"),
    # Caught before the database, named with their JSON path (issue 10, defect 9), no interpreter advice.
    ("lone-surrogate-name", b'{"epochs": [0], "params": {"a\\ud800": 1}}', None, "at $.params: the name 'a\\ud800' holds a lone"),
    ("huge-integer", b'{"epochs": [0], "final_metrics": {"n": ' + b"9" * 5000 + b"}}", None, "at $.final_metrics.n: an integer of 5000 digits"),
    # The schema's bounds (defect 10).
    ("float-epochs", b'{"epochs": [0.0, 1.0]}', None, "at $.epochs[0]: expected an integer"),
    ("error-10k-over", dumps({"epochs": [], "status": "failed", "error": "x" * 70_000}), None, "at $.error: longer than 65536"),
    ("gzip-bomb", _bomb(200_000), "gzip", "inflates to more than MAX_METRICS_BYTES"),
    ("gzip-corrupt", b"\x1f\x8b\x08\x00garbage-garbage", "gzip", "gzip stream"),
    ("over-cap-plain", b'{"epochs": [], "params": {"pad": "' + b"x" * 150_000 + b'"}}', None, "MAX_METRICS_BYTES"),
]


@pytest.mark.parametrize(("case", "data", "encoding", "fragment"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_broken_and_hostile_files_are_rejected(
    platform_db: PlatformDb, artifacts: Artifacts, case: str, data: bytes, encoding: str | None, fragment: str
) -> None:
    """A broken or hostile file is recorded as rejected with a reason; the row keeps its history."""
    before = {"epochs": [0], "note": "previous history"}
    row_id, folder = platform_db.new_quicktest(history=before)
    resource = artifacts.upload(folder, data, content_encoding=encoding)
    if case == "over-cap-plain":
        resource.pop("size")  # the event carried no size: the download itself must stop at the cap
    result = _ingest(platform_db, resource, settings=platform_db.settings(max_metrics_bytes=100_000))
    assert result.outcome == "rejected"
    assert fragment in (result.reason or ""), result.reason
    assert platform_db.history(row_id) == before
    [record] = platform_db.ingestions("ml-artifacts", resource["name"])
    assert (record["outcome"], record["quicktest_id"], record["reason"]) == ("rejected", row_id, result.reason)


def test_oversize_event_is_rejected_without_any_gcs_request(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """An event whose size is over MAX_METRICS_BYTES is rejected before any request to GCS."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    probe = artifacts.emulator.inject(Fault(None, folder, status=None, times=1000))
    result = _ingest(platform_db, {**resource, "size": str(2**40)})
    assert result.outcome == "rejected" and "over MAX_METRICS_BYTES" in (result.reason or "")
    assert probe.hits == 0
    assert platform_db.history(row_id) is None


def test_nan_tokens_are_stored_as_null(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """A file with NaN/Infinity tokens from an older writer is ingested with nulls."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, b'{"epochs": [0, 1], "loss": {"loss": [NaN, 0.5]}, "final_metrics": {"x": Infinity}}')
    assert _ingest(platform_db, resource).outcome == "ingested"
    history = platform_db.history(row_id)
    assert history["loss"]["loss"] == [None, 0.5] and history["final_metrics"]["x"] is None


def test_numbers_postgresql_numeric_refuses_as_written_are_stored_as_read(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """1e-20000 and a 20,000-digit fraction (beyond numeric's 16,383 digits) are ingested as the floats they read as, not refused by the database."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, b'{"epochs": [0, 1], "loss": {"loss": [1e-20000, 0.' + b"0" * 20000 + b'5]}}')
    assert _ingest(platform_db, resource).outcome == "ingested"
    assert platform_db.history(row_id)["loss"]["loss"] == [0.0, 0.0]


@pytest.mark.parametrize(
    "fault",
    [Fault("GET", "", status=503, times=10_000), Fault("GET", "", status=None, delay=2.0, times=10_000)],
    ids=["gcs-503", "gcs-stall"],
)
def test_gcs_5xx_or_timeout_raises_transient(platform_db: PlatformDb, artifacts: Artifacts, fault: Fault) -> None:
    """A GCS 5xx or a read that stalls past the timeout raises TransientError and records nothing."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    fault.path = folder
    artifacts.emulator.inject(fault)
    with pytest.raises(TransientError, match="GCS read"):
        _ingest(platform_db, resource, settings=platform_db.settings(gcs_timeout=0.5))
    assert fault.hits >= 1
    assert platform_db.ingestions("ml-artifacts", resource["name"]) == []
    artifacts.emulator.clear_faults()
    assert _ingest(platform_db, resource).outcome == "ingested"  # the redelivery succeeds


def test_force_reingests_and_dry_run_writes_nothing(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """dry_run decides without writing; force re-ingests the same generation but not an older one."""
    row_id, folder = platform_db.new_quicktest()
    old = artifacts.upload(folder, dumps(v1_document(1)))
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    dry = _ingest(platform_db, resource, dry_run=True)
    assert (dry.outcome, dry.dry_run) == ("ingested", True)
    assert platform_db.history(row_id) is None and platform_db.ingestions("ml-artifacts", resource["name"]) == []
    assert _ingest(platform_db, resource).outcome == "ingested"
    first_at = platform_db.history(row_id)["ingested_at"]
    forced = _ingest(platform_db, resource, force=True)
    assert forced.outcome == "ingested" and forced.reason == "re-ingested (--force)"
    assert platform_db.history(row_id)["ingested_at"] >= first_at
    assert _ingest(platform_db, old, force=True).outcome == "superseded"
    outcomes = [(r["outcome"], r["forced"]) for r in platform_db.ingestions("ml-artifacts", resource["name"])]
    assert outcomes == [("ingested", False), ("ingested", True), ("superseded", False)]


HOSTILE_TABLE = 'Quick"Test; DROP TABLE x;--'


def test_unusual_table_name_works_and_cannot_inject(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """QUICKTEST_TABLE with quotes and SQL in its name is used as one identifier: ingestion works, nothing dropped."""
    create_dev_platform_table(platform_db.url, HOSTILE_TABLE)
    conn = platform_db.connect()
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS x (id int)")
    conn.close()
    hostile = PlatformDb(platform_db.url, table=HOSTILE_TABLE)
    row_id, folder = hostile.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    result = _ingest(hostile, resource)
    assert (result.outcome, result.quicktest_id) == ("ingested", row_id)
    assert hostile.history(row_id)["epochs"] == [0, 1]
    conn = platform_db.connect()
    with conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('x') IS NOT NULL, to_regclass(%s) IS NOT NULL",
                    (sql.Identifier(HOSTILE_TABLE).as_string(cur),))
        assert cur.fetchone() == (True, True)
    conn.close()


def test_compression_bomb_is_stopped_in_bounded_memory(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """A 128 MiB gzip bomb is rejected at the cap without ever holding much more than the cap in memory."""
    import tracemalloc

    row_id, folder = platform_db.new_quicktest()
    bomb = _bomb(128 * 1024 * 1024)
    assert len(bomb) < 1024 * 1024  # ~130 KB on the wire
    resource = artifacts.upload(folder, bomb, content_encoding="gzip")
    cap = 4 * 1024 * 1024
    tracemalloc.start()
    try:
        result = _ingest(platform_db, resource, settings=platform_db.settings(max_metrics_bytes=cap))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.outcome == "rejected" and "compression bomb" in (result.reason or "")
    assert peak < 4 * cap, f"peak {peak} bytes"
    assert platform_db.history(row_id) is None


def test_gzip_is_detected_by_magic_bytes_without_content_encoding(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """An object that is gzip but was stored without Content-Encoding is recognised by its magic bytes and inflated."""
    row_id, folder = platform_db.new_quicktest()
    doc = v1_document(3)
    resource = artifacts.upload(folder, gzip.compress(dumps(doc)))
    assert "contentEncoding" not in resource
    assert _ingest(platform_db, resource).outcome == "ingested"
    assert _without_ingestion_keys(platform_db.history(row_id)) == doc


def test_large_plain_file_near_the_cap_is_ingested_in_bounded_memory(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """A valid ~3 MB plain file just under the cap is ingested holding under 6.5x its size at the peak."""
    import tracemalloc

    from ingest import document

    row_id, folder = platform_db.new_quicktest()
    data = dumps(v1_document(200, metrics=800, bins=20, seed=3))
    resource = artifacts.upload(folder, data)
    settings = platform_db.settings(max_metrics_bytes=len(data) + 1024)
    document.prepare(dumps(v1_document(2)))  # the validator is built once per process: not the file's cost
    tracemalloc.start()
    try:
        result = _ingest(platform_db, resource, settings=settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.outcome == "ingested" and result.epochs == 200
    assert platform_db.history(row_id)["epochs"][-1] == 199
    # ~5.6x: parsing is the peak. It was ~8.3x while the downloaded bytes and the
    # parsed document stayed alive through the write (whose query is ~3x more).
    assert peak < 6.5 * len(data), f"peak {peak / len(data):.2f}x the file"


def test_event_understating_the_size_is_stopped_at_the_cap_in_bounded_memory(
    platform_db: PlatformDb, artifacts: Artifacts
) -> None:
    """An event claiming a size under the cap for a larger generation is rejected at the cap, never loading the object."""
    import tracemalloc

    row_id, folder = platform_db.new_quicktest(history={"epochs": [0]})
    resource = artifacts.upload(folder, b'{"epochs": [], "params": {"pad": "' + b"x" * 8_000_000 + b'"}}')
    settings = platform_db.settings(max_metrics_bytes=100_000)
    tracemalloc.start()
    try:
        result = _ingest(platform_db, {**resource, "size": "100"}, settings=settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.outcome == "rejected" and "larger than MAX_METRICS_BYTES" in (result.reason or "")
    assert peak < 2_000_000, f"peak {peak:,} bytes for an 8 MB object and a 100 KB cap"
    assert platform_db.history(row_id) == {"epochs": [0]}


def test_memory_budget_makes_a_large_event_wait(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """While the process's memory budget is taken, an event waits for it instead of loading its file; then it proceeds."""
    from ingest.memory import memory_budget

    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    settings = platform_db.settings(memory_budget_bytes=64 * 2**20 + 3)  # a budget of its own
    budget = memory_budget(settings.memory_budget_bytes)
    results: list[IngestResult] = []
    with budget.hold(budget.capacity):
        worker = threading.Thread(target=lambda: results.append(_ingest(platform_db, resource, settings=settings)))
        worker.start()
        worker.join(1.0)
        assert worker.is_alive() and platform_db.ingestions("ml-artifacts", resource["name"]) == []
    worker.join(30)
    assert [r.outcome for r in results] == ["ingested"] and budget.in_use == 0
    assert platform_db.history(row_id)["epochs"] == [0, 1]


def test_refused_token_refresh_is_transient(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """When the credentials' token refresh is refused (RefreshError), the event is retried, nothing recorded."""
    from google.cloud import storage
    from google.oauth2.credentials import Credentials

    _, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    # The emulator answers the token request with an error, as a broken metadata server would.
    credentials = Credentials(token=None, refresh_token="r", client_id="c", client_secret="s",
                              token_uri=f"{artifacts.emulator.url}/token")
    client = storage.Client(project="p", credentials=credentials, client_options={"api_endpoint": artifacts.emulator.url})
    with pytest.raises(TransientError, match="RefreshError"):
        _ingest(platform_db, resource, client=client)
    assert platform_db.ingestions("ml-artifacts", resource["name"]) == []


def test_unexpected_failure_is_logged_as_one_json_line_then_raised(
    platform_db: PlatformDb, artifacts: Artifacts, capsys: pytest.CaptureFixture[str]
) -> None:
    """An exception the pipeline does not know (here: a client that is no storage client) is logged as JSON with the event, then raised."""
    from ingest.logs import configure

    configure()
    _, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    with pytest.raises(AttributeError):
        _ingest(platform_db, resource, client=object(), event_id="evt-1")
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    [entry] = [e for e in entries if e.get("generation") == int(resource["generation"])]
    assert (entry["severity"], entry["outcome"], entry["event_id"], entry["error"]) == ("ERROR", "error", "evt-1", "AttributeError")
    assert entry["object"] == f"gs://ml-artifacts/{resource['name']}" and "Traceback" in entry["exception"]
    assert platform_db.ingestions("ml-artifacts", resource["name"]) == []


def test_round_trips_per_first_ingestion_and_per_duplicate(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """Counted on the wire: a first ingestion costs 2 database round trips, a duplicate 1, a superseded generation 1."""
    from tests.support.wire import QueryCounter

    row_id, folder = platform_db.new_quicktest()
    old = artifacts.upload(folder, dumps(v1_document(2)))
    new = artifacts.upload(folder, dumps(v1_document(3)))
    with QueryCounter(platform_db.url) as counter:
        settings = platform_db.settings(database_url=counter.url, db_pool_size=1)
        _ingest(platform_db, artifacts.upload(platform_db.new_quicktest()[1], dumps(v1_document(1))), settings=settings)
        counter.reset()  # the pool's connection is open: what follows is per event
        assert _ingest(platform_db, new, settings=settings).outcome == "ingested"
        assert counter.queries == 2  # check (row, generations), then the guarded write
        counter.reset()
        assert _ingest(platform_db, new, settings=settings).outcome == "duplicate"
        assert counter.queries == 1  # decided and recorded by one statement
        counter.reset()
        assert _ingest(platform_db, old, settings=settings).outcome == "superseded"
        assert counter.queries == 1
        store.close_pools()  # the relay's connections go before the relay does
    assert platform_db.history(row_id)["source"]["generation"] == new["generation"]
    outcomes = [r["outcome"] for r in platform_db.ingestions("ml-artifacts", new["name"])]
    assert sorted(outcomes) == ["duplicate", "ingested", "superseded"]  # one record per event


def test_first_ingestion_sends_the_file_text_to_the_database_once(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """Counted on the wire: a first ingestion sends the file's text once (no second copy, no re-serialized document)."""
    from tests.support.documents import megabyte_document
    from tests.support.wire import QueryCounter

    data = dumps(megabyte_document(20), indent=2)  # ~0.3 MB; both statements' SQL and parameters are ~5 KB
    with QueryCounter(platform_db.url) as counter:
        settings = platform_db.settings(database_url=counter.url, db_pool_size=1)
        _ingest(platform_db, artifacts.upload(platform_db.new_quicktest()[1], dumps(v1_document(1))), settings=settings)
        row_id, folder = platform_db.new_quicktest()
        resource = artifacts.upload(folder, data)
        counter.reset()  # the pool's connection is open: what follows is this event's
        assert _ingest(platform_db, resource, settings=settings).outcome == "ingested"
        sent = counter.sent_bytes
        store.close_pools()  # the relay's connections go before the relay does
    assert len(data) <= sent < len(data) + 16_000, (sent, len(data))
    assert platform_db.history(row_id)["epochs"] == list(range(50))


def test_write_keeps_the_lock_and_the_guard_in_one_round_trip(platform_db: PlatformDb) -> None:
    """While another transaction holds the row lock, the one-round-trip write waits, then sees that writer's newer generation."""
    row_id, folder = platform_db.new_quicktest()
    name = f"{folder}/training_metrics.json"
    settings = platform_db.settings()
    blocker = platform_db.connect()
    cur = blocker.cursor()
    cur.execute(sql.SQL("SELECT id FROM {} WHERE id = %s FOR UPDATE").format(sql.Identifier(platform_db.table)), (row_id,))
    outcome: list[str] = []

    def older_writer() -> None:
        with store.connection(settings) as conn:
            outcome.append(store.write(conn, settings, ObjectRef("ml-artifacts", name, 5), {"epochs": [0]},
                                       event_id="old", epochs=1, duration_ms=1.0).outcome)  # fmt: skip

    worker = threading.Thread(target=older_writer)
    worker.start()
    worker.join(1.0)
    assert worker.is_alive()  # waiting for the row lock
    # The lock holder ingests a newer generation and commits.
    cur.execute(
        "INSERT INTO training_metrics_ingestions (bucket, object_name, generation, quicktest_id, outcome)"
        " VALUES ('ml-artifacts', %s, 9, %s, 'ingested')",
        (name, row_id),
    )
    cur.execute(sql.SQL("UPDATE {} SET training_history_json = '{{\"epochs\": [0, 1]}}' WHERE id = %s").format(
        sql.Identifier(platform_db.table)), (row_id,))  # fmt: skip
    blocker.commit()
    blocker.close()
    worker.join(10)
    assert outcome == ["superseded"]
    assert platform_db.history(row_id) == {"epochs": [0, 1]}


def test_empty_path_segment_cannot_overwrite_the_other_names_history(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """F//training_metrics.json shares F/training_metrics.json's row: it is refused with a reason, so its older generation cannot overwrite the newer history."""
    row_id, folder = platform_db.new_quicktest()
    older = artifacts.upload(folder + "/", dumps(v1_document(2, status="running")))  # F//training_metrics.json
    assert "//" in older["name"]
    newer = artifacts.upload(folder, dumps(v1_document(4)))
    assert _ingest(platform_db, newer).outcome == "ingested"
    result = _ingest(platform_db, older)
    assert result.outcome == "rejected" and "empty path segment" in (result.reason or "")
    assert platform_db.history(row_id)["epochs"] == [0, 1, 2, 3]
    assert platform_db.history(row_id)["source"]["object"] == newer["name"]
    [record] = platform_db.ingestions("ml-artifacts", older["name"])
    assert record["outcome"] == "rejected"


def test_already_ingested_generation_is_a_duplicate_whatever_size_its_event_claims(
    platform_db: PlatformDb, artifacts: Artifacts
) -> None:
    """A redelivered generation whose event claims a huge size, or replayed after the cap came down, is a duplicate, not rejected."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(3)))
    assert _ingest(platform_db, resource).outcome == "ingested"
    huge = _ingest(platform_db, {**resource, "size": str(2**40)})
    assert huge.outcome == "duplicate"
    lowered = _ingest(platform_db, resource, settings=platform_db.settings(max_metrics_bytes=10))
    assert lowered.outcome == "duplicate"
    assert [r["outcome"] for r in platform_db.ingestions("ml-artifacts", resource["name"])] == [
        "ingested", "duplicate", "duplicate"
    ]
    assert platform_db.history(row_id)["epochs"] == [0, 1, 2]


def test_file_postgresql_could_not_store_is_rejected_before_the_database(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """A schema-valid dense file of more values than x-maxValues (jsonb's limits) is recorded rejected with a reason, never sent to PostgreSQL; the row keeps its history."""
    from ingest import document

    before = {"epochs": [0], "note": "previous history"}
    row_id, folder = platform_db.new_quicktest(history=before)
    series = "[" + "1," * 99 + "1]"
    raw = '{"epochs": [' + ",".join(map(str, range(100))) + '], "metrics": {' + ",".join(
        f'"m{i}": {series}' for i in range(document.max_values() // 100 + 10)) + "}}"  # fmt: skip
    resource = artifacts.upload(folder, raw.encode())
    result = _ingest(platform_db, resource)
    assert result.outcome == "rejected"
    assert "values (numbers, strings, names); at most 4,000,000 are accepted" in (result.reason or "")
    assert platform_db.history(row_id) == before
    [record] = platform_db.ingestions("ml-artifacts", resource["name"])
    assert (record["outcome"], record["reason"]) == ("rejected", result.reason)
