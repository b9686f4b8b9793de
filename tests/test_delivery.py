"""Delivery: same bytes cost nothing (`unchanged`), old events that would be retried are
acknowledged (`expired`), one record per event even when a step is retried, bounded settings."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

import functions_framework
from ingest import store
from ingest.config import BOUNDS, Settings
from ingest.objects import ObjectRef
from ingest.pipeline import ingest_object
from metrics_ingest.localstack.emulator import Fault
from tests.support.documents import dumps, v1_document
from tests.support.function_server import FINALIZED, ROOT
from tests.support.network import unreachable_database_url
from tests.support.platform_db import Artifacts, PlatformDb
from tests.support.postgres import query


def _event(resource: dict[str, Any], *, age: dt.timedelta = dt.timedelta(0), event_id: str | None = None) -> CloudEvent:
    when = dt.datetime.now(dt.timezone.utc) - age
    return CloudEvent(
        {
            "id": event_id or uuid.uuid4().hex,
            "type": FINALIZED,
            "source": f"//storage.googleapis.com/projects/_/buckets/{resource['bucket']}",
            "subject": f"objects/{resource['name']}",
            "time": when.isoformat().replace("+00:00", "Z"),
            "specversion": "1.0",
        },
        resource,
    )


@pytest.fixture
def app(platform_db: PlatformDb, artifacts: Artifacts, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The function's app, configured like a deployment (short GCS timeout)."""
    monkeypatch.setenv("DATABASE_URL", platform_db.url)
    monkeypatch.setenv("GCS_TIMEOUT_SECONDS", "0.3")
    return functions_framework.create_app("ingest_training_metrics", str(ROOT / "functions" / "main.py"), "cloudevent")


def _post(app: Any, event: CloudEvent) -> int:
    headers, body = to_binary(event)
    return app.test_client().post("/", headers=headers, data=body).status_code


def _xmin(platform_db: PlatformDb, row_id: int) -> str:
    return query(platform_db.url, f"SELECT xmin::text FROM {platform_db.table} WHERE id = %s", (row_id,))[0][0]


def _ingest(platform_db: PlatformDb, resource: dict[str, Any], **kwargs: Any) -> Any:
    event_id = kwargs.pop("event_id", None) or uuid.uuid4().hex
    return ingest_object(ObjectRef.from_resource(resource), settings=platform_db.settings(), event_id=event_id, **kwargs)


def test_same_bytes_under_a_new_generation_are_unchanged_without_a_download(
    platform_db: PlatformDb, artifacts: Artifacts
) -> None:
    """A copy of the same bytes (new generation, equal md5Hash) is `unchanged`: no media request, the row's
    xmin as it was; the older generation is still superseded by it, new bytes are ingested; the log keeps the hash."""
    row_id, folder = platform_db.new_quicktest()
    data = dumps(v1_document(3))
    first = artifacts.upload(folder, data)
    assert _ingest(platform_db, first).outcome == "ingested"
    before = _xmin(platform_db, row_id)
    copy = artifacts.upload(folder, data)
    assert int(copy["generation"]) > int(first["generation"]) and copy["md5Hash"] == first["md5Hash"]
    probe = artifacts.emulator.inject(Fault("GET", folder, status=None, times=10_000))
    result = _ingest(platform_db, copy)
    assert (result.outcome, probe.hits) == ("unchanged", 0)
    assert f"same bytes as generation {first['generation']}" in (result.reason or "")
    assert _xmin(platform_db, row_id) == before  # no row write at all
    assert _ingest(platform_db, first).outcome == "duplicate"
    artifacts.emulator.clear_faults()
    changed = artifacts.upload(folder, dumps(v1_document(4)))
    assert _ingest(platform_db, changed).outcome == "ingested"
    assert _ingest(platform_db, copy).outcome == "duplicate"  # decided: its generation counts as done
    records = platform_db.ingestions("ml-artifacts", first["name"])
    assert [r["outcome"] for r in records] == ["ingested", "unchanged", "duplicate", "ingested", "duplicate"]
    assert (records[0]["md5_hash"], records[0]["crc32c"]) == (first["md5Hash"], first["crc32c"])
    assert platform_db.history(row_id)["source"]["generation"] == changed["generation"]


def test_a_generation_between_an_unchanged_one_and_its_original_never_overwrites(
    platform_db: PlatformDb, artifacts: Artifacts
) -> None:
    """Same bytes decided by crc32c alone (composite objects have no md5Hash); then a late event for a
    generation older than the unchanged one is superseded: the unchanged generation counts as the row's."""
    row_id, folder = platform_db.new_quicktest()
    data = dumps(v1_document(2))
    first = artifacts.upload(folder, data)
    assert _ingest(platform_db, first).outcome == "ingested"
    middle = artifacts.upload(folder, dumps(v1_document(5)))  # its event arrives last
    copy = artifacts.upload(folder, data)
    composite = {k: v for k, v in copy.items() if k != "md5Hash"}
    assert _ingest(platform_db, composite).outcome == "unchanged"
    late = _ingest(platform_db, middle)
    assert late.outcome == "superseded" and copy["generation"] in (late.reason or "")
    assert platform_db.history(row_id)["epochs"] == [0, 1]


def test_old_event_that_would_be_retried_is_recorded_expired(app: Any, platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """GCS unreachable: a fresh event is retried (500, no record); the same event 7 hours old is
    acknowledged and recorded `expired` with the failure in its reason."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    artifacts.emulator.inject(Fault("GET", folder, status=503, times=10_000))
    assert _post(app, _event(resource, event_id="evt-fresh")) == 500
    assert platform_db.ingestions("ml-artifacts", resource["name"]) == []
    assert _post(app, _event(resource, age=dt.timedelta(hours=7), event_id="evt-old")) == 200
    [record] = platform_db.ingestions("ml-artifacts", resource["name"])
    assert (record["outcome"], record["event_id"]) == ("expired", "evt-old")
    assert "past MAX_EVENT_AGE (6h)" in record["reason"] and "GCS read" in record["reason"]
    assert platform_db.history(row_id) is None


def test_expired_event_with_the_database_down_is_logged_at_error(
    app: Any, platform_db: PlatformDb, artifacts: Artifacts, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Database unreachable and the event past MAX_EVENT_AGE (set to 1h): acknowledged, one ERROR line
    with outcome `expired` naming the event; within the age it is retried."""
    _, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    monkeypatch.setenv("DATABASE_URL", unreachable_database_url())
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("MAX_EVENT_AGE", "1h")
    assert _post(app, _event(resource, age=dt.timedelta(minutes=50))) == 500
    capsys.readouterr()
    assert _post(app, _event(resource, age=dt.timedelta(minutes=70), event_id="evt-lost")) == 200
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    [entry] = [e for e in entries if e.get("event_id") == "evt-lost"]
    assert (entry["severity"], entry["outcome"]) == ("ERROR", "expired")
    assert "NOT recorded" in entry["message"] and entry["object"].endswith(resource["name"])


def test_a_retried_step_whose_commit_went_through_adds_no_second_record(
    platform_db: PlatformDb, artifacts: Artifacts
) -> None:
    """Each database step run twice for one event (as db.run does after a lost acknowledgement): the check's
    record, the write's record and a settled outcome's record each exist once; the row is written once."""
    settings = platform_db.settings()
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    ref = ObjectRef.from_resource(resource)
    with store.connection(settings) as conn:
        outcomes = [store.write(conn, settings, ref, {"epochs": [0, 1]}, event_id="e-w", epochs=2, duration_ms=1.0)
                    for _ in range(2)]  # fmt: skip
        written = _xmin(platform_db, row_id)
        checks = [store.check(conn, settings, ref, record=True, event_id="e-c") for _ in range(2)]
        rejected = store.Record(ref, "rejected", "e-r", row_id, "bad")
        store.record(conn, rejected)
        store.record(conn, rejected)
    assert [o.outcome for o in outcomes] == ["ingested", "duplicate"]
    assert [(c.outcome, c.settled) for c in checks] == [("duplicate", False), ("duplicate", True)]
    assert _xmin(platform_db, row_id) == written
    records = platform_db.ingestions("ml-artifacts", resource["name"])
    assert sorted((r["event_id"], r["outcome"]) for r in records) == [
        ("e-c", "duplicate"), ("e-r", "rejected"), ("e-w", "ingested")]  # fmt: skip


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_every_numeric_setting_is_bounded(name: str) -> None:
    """A value past a setting's range (GCS_TIMEOUT_SECONDS=1e10 overflows a socket timeout) is refused in
    one line naming the variable; its bounds themselves are accepted."""
    low, high = BOUNDS[name]
    too_big = {"MAX_EVENT_AGE": "25h", "GCS_TIMEOUT_SECONDS": "1e10"}.get(name, str(int(high) + 1))
    with pytest.raises(ValueError) as caught:
        Settings.from_env({name: too_big})
    message = str(caught.value)
    assert message.startswith(f"Invalid value for {name}.") and "\n" not in message and too_big in message
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: "0" if name != "MAX_EVENT_AGE" else "0s"})
    for edge in (low, high):
        text = f"{edge:g}s" if name == "MAX_EVENT_AGE" else (str(int(edge)) if float(edge).is_integer() else str(edge))
        Settings.from_env({name: text})


def test_conftest_clears_every_setting_settings_reads() -> None:
    """The test environment holds none of the variables Settings reads, MEMORY_BUDGET_BYTES included."""
    import os

    assert "MEMORY_BUDGET_BYTES" in Settings.ENV and "MAX_EVENT_AGE" in Settings.ENV
    assert not [name for name in Settings.ENV if name in os.environ]
