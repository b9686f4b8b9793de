"""The Cloud Function over HTTP: functions-framework's app with real CloudEvents, and one real server."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from cloudevents.conversion import to_binary, to_structured

import functions_framework
from ingest import store
from metrics_ingest.gcs_emulator import Fault
from tests.support.documents import dumps, v1_document
from tests.support.function_server import ROOT, FunctionServer, finalize_event
from tests.support.network import unreachable_database_url
from tests.support.platform_db import Artifacts, PlatformDb


@pytest.fixture
def client(platform_db: PlatformDb, artifacts: Artifacts, monkeypatch: pytest.MonkeyPatch) -> Any:
    """functions-framework's Flask app for the function, configured like a deployment."""
    monkeypatch.setenv("DATABASE_URL", platform_db.url)
    monkeypatch.setenv("GCS_TIMEOUT_SECONDS", "0.5")
    app = functions_framework.create_app("ingest_training_metrics", str(ROOT / "functions" / "main.py"), "cloudevent")
    return app.test_client()


def post(client: Any, resource: dict[str, Any], *, structured: bool = False, event_id: str | None = None) -> Any:
    headers, body = (to_structured if structured else to_binary)(finalize_event(resource, event_id))
    return client.post("/", headers=headers, data=body)


def _log_entries(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_valid_file_is_ingested_over_http(
    client: Any, platform_db: PlatformDb, artifacts: Artifacts, structured: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finalize event (binary or structured mode) ingests the file, 2xx, with one JSON log line."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(3)))
    response = post(client, resource, structured=structured, event_id="evt-http")
    assert response.status_code == 200
    assert platform_db.history(row_id)["epochs"] == [0, 1, 2]
    [entry] = [e for e in _log_entries(capsys.readouterr().out) if e.get("event_id") == "evt-http"]
    assert entry["severity"] == "INFO" and entry["outcome"] == "ingested"
    assert entry["object"] == f"gs://ml-artifacts/{resource['name']}"
    assert entry["generation"] == int(resource["generation"]) and entry["duration_ms"] > 0


def test_other_objects_return_at_once_without_database_or_download(
    client: Any, platform_db: PlatformDb, artifacts: Artifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-metrics object is acknowledged with the database unreachable: no connection, no download, no record."""
    unreachable = unreachable_database_url()
    monkeypatch.setenv("DATABASE_URL", unreachable)
    _, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, b"\x00" * 64, name="model/variables/variables.data-00000-of-00001")
    probe = artifacts.emulator.inject(Fault(None, folder, status=None, times=1000))
    response = post(client, resource)
    assert response.status_code == 200
    assert probe.hits == 0  # nothing read from GCS
    assert not any(key[0] == unreachable for key in store._pools)  # no pool, so no connection tried
    assert platform_db.ingestions("ml-artifacts", resource["name"]) == []


def test_database_unreachable_is_retried_then_ingested(
    client: Any, platform_db: PlatformDb, artifacts: Artifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the database unreachable the function answers non-2xx; redelivered once it is back, it ingests."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    monkeypatch.setenv("DATABASE_URL", unreachable_database_url())
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_SECONDS", "2")
    assert post(client, resource, event_id="evt-retry").status_code == 500
    monkeypatch.setenv("DATABASE_URL", platform_db.url)
    assert post(client, resource, event_id="evt-retry").status_code == 200
    assert platform_db.history(row_id)["epochs"] == [0, 1]
    assert [r["outcome"] for r in platform_db.ingestions("ml-artifacts", resource["name"])] == ["ingested"]


@pytest.mark.parametrize(
    "fault",
    [Fault("GET", "", status=503, times=10_000), Fault("GET", "", status=None, delay=2.0, times=10_000)],
    ids=["gcs-503", "gcs-timeout"],
)
def test_gcs_fault_is_retried(client: Any, platform_db: PlatformDb, artifacts: Artifacts, fault: Fault) -> None:
    """A GCS 5xx or timeout answers non-2xx (the platform redelivers); the row is untouched."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    fault.path = folder
    artifacts.emulator.inject(fault)
    assert post(client, resource).status_code == 500
    assert fault.hits >= 1
    assert platform_db.history(row_id) is None
    assert platform_db.ingestions("ml-artifacts", resource["name"]) == []


def test_gcs_404_for_the_generation_is_recorded_and_acknowledged(
    client: Any, platform_db: PlatformDb, artifacts: Artifacts
) -> None:
    """A 404 for the event's generation (object replaced) is recorded as superseded, 2xx."""
    _, folder = platform_db.new_quicktest()
    old = artifacts.upload(folder, dumps(v1_document(2)))
    artifacts.upload(folder, dumps(v1_document(3)))
    assert post(client, old).status_code == 200
    [record] = platform_db.ingestions("ml-artifacts", old["name"])
    assert record["outcome"] == "superseded" and "no longer exists" in record["reason"]


@pytest.mark.parametrize(
    "data",
    [
        {"bucket": "ml-artifacts", "name": "q/bad/training_metrics.json"},  # no generation
        {"bucket": "ml-artifacts", "name": "q/bad/training_metrics.json", "generation": "soon"},
        {"name": "q/bad/training_metrics.json", "generation": "1"},  # no bucket
        "not an object resource",
    ],
    ids=["no-generation", "bad-generation", "no-bucket", "not-a-dict"],
)
def test_malformed_event_data_is_acknowledged(
    client: Any, platform_db: PlatformDb, data: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """An event whose data is not a usable object resource is acknowledged (no retry storm) and logged as an error."""
    headers, body = to_structured(finalize_event({"bucket": "ml-artifacts", "name": "x"}))
    envelope = json.loads(body)
    envelope["data"] = data
    response = client.post("/", headers=headers, data=json.dumps(envelope))
    assert response.status_code == 200
    errors = [e for e in _log_entries(capsys.readouterr().out) if e.get("outcome") == "bad_event"]
    assert len(errors) == 1 and errors[0]["severity"] == "ERROR"
    assert platform_db.ingestions("ml-artifacts", "q/bad/training_metrics.json") == []


def test_request_that_is_not_a_cloudevent_is_refused(client: Any) -> None:
    """A POST that is not a CloudEvent is refused by the framework with 400 before the function runs."""
    response = client.post("/", headers={"Content-Type": "application/json"}, data=json.dumps({"name": "x"}))
    assert response.status_code == 400


def test_real_server_ingests_and_logs_json(
    function_server: FunctionServer, platform_db: PlatformDb, artifacts: Artifacts
) -> None:
    """The real functions-framework server ingests a structured-mode event and logs one JSON line per event."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(5)))
    other = artifacts.upload(folder, b"weights", name="model/saved_model.pb")
    for res, event_id in ((resource, "evt-real-1"), (other, "evt-real-2")):
        headers, body = to_structured(finalize_event(res, event_id))
        assert requests.post(function_server.url, headers=headers, data=body, timeout=30).status_code == 200
    assert platform_db.history(row_id)["epochs"] == [0, 1, 2, 3, 4]
    entries = _log_entries("\n".join(function_server.log_lines()))
    [entry] = [e for e in entries if e.get("event_id") == "evt-real-1"]
    assert entry["outcome"] == "ingested" and entry["severity"] == "INFO"
    assert not [e for e in entries if e.get("event_id") == "evt-real-2"]  # other objects: silent, at once
