"""The Cloud Function over HTTP: functions-framework's app with real CloudEvents, and one real server."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from cloudevents.conversion import to_binary, to_structured

import functions_framework
from ingest import db
from ingest.errors import printable
from metrics_ingest.localstack.emulator import Fault
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
    assert not any(key[0] == unreachable for key in db._pools)  # no pool, so no connection tried
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


def test_metrics_filename_setting_picks_the_ingested_name(
    client: Any, platform_db: PlatformDb, artifacts: Artifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With METRICS_FILENAME set, only objects of that base name are ingested."""
    monkeypatch.setenv("METRICS_FILENAME", "metrics.json")
    row_id, folder = platform_db.new_quicktest()
    default_name = artifacts.upload(folder, dumps(v1_document(2)))
    custom = artifacts.upload(folder, dumps(v1_document(3)), name="metrics.json")
    assert post(client, default_name).status_code == 200
    assert platform_db.ingestions("ml-artifacts", default_name["name"]) == []
    assert post(client, custom).status_code == 200
    assert platform_db.history(row_id)["epochs"] == [0, 1, 2]


def test_function_module_imports_without_heavy_clients() -> None:
    """Importing functions/main.py alone (as deployed) loads no GCS client, psycopg2, jsonschema or TensorFlow."""
    import subprocess
    import sys

    probe = (
        "import sys, main\n"
        "print(','.join(m for m in ('google.cloud.storage', 'psycopg2', 'jsonschema', 'jsonschema_rs', 'tensorflow', 'metrics_ingest')"
        " if m in sys.modules))\n"
        "print(callable(main.ingest_training_metrics))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT / "functions",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "functions")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["", "True"]


def test_real_server_concurrent_deliveries_keep_the_newest(
    function_server: FunctionServer, platform_db: PlatformDb, artifacts: Artifacts
) -> None:
    """16 concurrent deliveries of mixed generations to the real server: every one 2xx, the newest in the row."""
    from concurrent.futures import ThreadPoolExecutor

    row_id, folder = platform_db.new_quicktest()
    resources = [artifacts.upload(folder, dumps(v1_document(e + 1))) for e in range(4)]
    deliveries = [resources[(i * 7) % 4] for i in range(16)]

    def deliver(resource: dict[str, Any]) -> int:
        headers, body = to_binary(finalize_event(resource))
        return requests.post(function_server.url, headers=headers, data=body, timeout=60).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(deliver, deliveries))
    assert statuses == [200] * 16
    newest = resources[-1]
    assert platform_db.history(row_id)["source"]["generation"] == newest["generation"]
    records = platform_db.ingestions("ml-artifacts", newest["name"])
    assert len(records) == 16
    assert [r["generation"] for r in records if r["outcome"] == "ingested"] == [int(newest["generation"])]


def _hostile_files() -> list[tuple[str, bytes, str | None, str]]:
    """test_pipeline's HOSTILE set plus names and values that once escaped as a 500 (case, data, encoding, outcome)."""
    from tests.test_pipeline import HOSTILE

    tower = {"mean": [0.0], "histogram": {"bin_edges": [0, 1], "counts": [[1]]}}
    extra = [
        ("nul-name", b'{"epochs": [0], "loss": {"a\\u0000b": [1, 2]}}', None, "rejected"),
        ("surrogate-name", b'{"epochs": [0], "loss": {"a\\ud800": [1, 2]}}', None, "rejected"),
        ("surrogate-name-valid-file", b'{"epochs": [0], "params": {"a\\ud800": 1}}', None, "rejected"),
        ("nul-name-valid-file", b'{"epochs": [0], "params": {"a\\u0000": 1}}', None, "rejected"),
        ("huge-int-bin-edge", dumps({"epochs": [0], "weight_stats": {"q": {**tower, "histogram": {
            "bin_edges": [0, 10**400], "counts": [[1]]}}}}), None, "rejected"),
        ("huge-int-series", dumps({"epochs": [0], "loss": {"loss": [10**400]}}), None, "ingested"),
        ("stats-wrong-type", dumps({"epochs": [0], "weight_stats": {"q": {**tower, "mean": "x"}}}), None, "rejected"),
        ("stats-not-object", dumps({"epochs": [0], "gradient_stats": {"q": [1]}}), None, "rejected"),
        ("histogram-float-count", dumps({"epochs": [0], "weight_stats": {"q": {**tower, "histogram": {
            "bin_edges": [0, 1], "counts": [[1.5]]}}}}), None, "rejected"),
        ("histogram-string-edge", dumps({"epochs": [0], "weight_stats": {"q": {**tower, "histogram": {
            "bin_edges": ["0", 1], "counts": [[1]]}}}}), None, "rejected"),
        ("params-list", dumps({"epochs": [0], "params": {"layers": [1, 2]}}), None, "rejected"),
        ("params-huge-int", dumps({"epochs": [0], "params": {"seed": 10**400}}), None, "ingested"),
    ]
    return [(case, data, encoding, "rejected") for case, data, encoding, _ in HOSTILE] + extra


HOSTILE_FILES = _hostile_files()


@pytest.mark.parametrize(("case", "data", "encoding", "outcome"), HOSTILE_FILES, ids=[h[0] for h in HOSTILE_FILES])
def test_hostile_file_over_http_is_acknowledged_with_one_record_and_one_log_line(
    client: Any,
    platform_db: PlatformDb,
    artifacts: Artifacts,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
    data: bytes,
    encoding: str | None,
    outcome: str,
) -> None:
    """A hostile file answers 2xx with exactly one ingestion record and one JSON log line naming it (never a retry)."""
    monkeypatch.setenv("MAX_METRICS_BYTES", "100000")
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, data, content_encoding=encoding)
    event_id = f"evt-hostile-{case}"
    response = post(client, resource, event_id=event_id)
    assert response.status_code == 200
    [record] = platform_db.ingestions("ml-artifacts", resource["name"])
    assert (record["outcome"], record["event_id"], record["quicktest_id"]) == (outcome, event_id, row_id)
    [entry] = [e for e in _log_entries(capsys.readouterr().out) if e.get("event_id") == event_id]
    assert entry["severity"] == ("ERROR" if outcome == "rejected" else "INFO")
    assert (entry["object"], entry["generation"], entry["outcome"]) == (
        f"gs://ml-artifacts/{resource['name']}", int(resource["generation"]), outcome)
    assert entry["reason"] == record["reason"]


def _odd(resource: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**resource, **changes}


FINALIZED_TYPE = "google.cloud.storage.object.v1.finalized"
ODD_EVENTS: list[tuple[str, str, dict[str, Any], str, str]] = [
    # (case, CloudEvent type, changes to the object resource, expected outcome, severity)
    ("metadata-updated", "google.cloud.storage.object.v1.metadataUpdated", {}, "ignored_event_type", "WARNING"),
    ("deleted", "google.cloud.storage.object.v1.deleted", {}, "ignored_event_type", "WARNING"),
    ("archived", "google.cloud.storage.object.v1.archived", {}, "ignored_event_type", "WARNING"),
    ("generation-out-of-range", FINALIZED_TYPE, {"generation": str(2**70)}, "bad_event", "ERROR"),
    ("generation-5000-digits", FINALIZED_TYPE, {"generation": "9" * 5000}, "bad_event", "ERROR"),
    ("size-out-of-range", FINALIZED_TYPE, {"size": str(2**64)}, "bad_event", "ERROR"),
    ("missing-generation", FINALIZED_TYPE, {"generation": None}, "bad_event", "ERROR"),
    ("nul-in-name", FINALIZED_TYPE, {"name": "q/a\x00b/training_metrics.json"}, "bad_event", "ERROR"),
    ("surrogate-in-name", FINALIZED_TYPE, {"name": "q/a\ud800b/training_metrics.json"}, "bad_event", "ERROR"),
]


@pytest.mark.parametrize(("case", "event_type", "changes", "outcome", "severity"), ODD_EVENTS,
                         ids=[o[0] for o in ODD_EVENTS])
def test_odd_event_is_acknowledged_with_one_log_line_and_no_ingestion(
    client: Any,
    platform_db: PlatformDb,
    artifacts: Artifacts,
    capsys: pytest.CaptureFixture[str],
    case: str,
    event_type: str,
    changes: dict[str, Any],
    outcome: str,
    severity: str,
) -> None:
    """A non-finalize event or a malformed object resource answers 2xx, leaves the row alone, and logs one JSON line naming the object."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    data = {k: v for k, v in _odd(resource, **changes).items() if v is not None}
    event_id = f"evt-odd-{case}"
    headers, body = to_structured(finalize_event(resource, event_id))
    envelope = json.loads(body)
    envelope["type"], envelope["data"] = event_type, data
    response = client.post("/", headers=headers, data=json.dumps(envelope))
    assert response.status_code == 200
    assert platform_db.history(row_id) is None
    assert platform_db.ingestions("ml-artifacts", resource["name"]) == []
    [entry] = [e for e in _log_entries(capsys.readouterr().out) if e.get("event_id") == event_id]
    assert (entry["severity"], entry["outcome"]) == (severity, outcome)
    # The raw fields, escaped and clipped: the line says which object the event was about.
    assert (entry["bucket"], entry["object"]) == ("ml-artifacts", f"gs://ml-artifacts/{printable(data['name'])}")
    assert entry["generation"] == (printable(data["generation"]) if "generation" in data else None)


def test_event_id_with_a_nul_is_recorded_escaped(
    client: Any, platform_db: PlatformDb, artifacts: Artifacts, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CloudEvent id holding a NUL (PostgreSQL text cannot) is recorded and logged escaped, 2xx."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    headers, body = to_structured(finalize_event(resource))
    envelope = json.loads(body)
    envelope["id"] = "evt-\x00-nul"
    assert client.post("/", headers=headers, data=json.dumps(envelope)).status_code == 200
    [record] = platform_db.ingestions("ml-artifacts", resource["name"])
    assert (record["outcome"], record["event_id"]) == ("ingested", "evt-\\x00-nul")
    assert platform_db.history(row_id)["epochs"] == [0, 1]


@pytest.mark.parametrize(
    ("status", "http", "recorded", "fragment"),
    [
        (400, 200, "rejected", "HTTP 400"),
        (416, 200, "rejected", "the file is empty"),
        (403, 500, None, "storage.objects.get"),
        (401, 500, None, "service account"),  # the client refreshes its token on a 401 first
        (429, 500, None, "GCS read"),
    ],
    ids=["gcs-400", "gcs-416", "gcs-403", "gcs-401", "gcs-429"],
)
def test_gcs_4xx_is_rejected_or_retried_by_status(
    client: Any,
    platform_db: PlatformDb,
    artifacts: Artifacts,
    capsys: pytest.CaptureFixture[str],
    status: int,
    http: int,
    recorded: str | None,
    fragment: str,
) -> None:
    """GCS 400/416 are recorded as rejected (2xx, the status in the reason); 401/403/429 answer non-2xx so the event is retried."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    fault = artifacts.emulator.inject(Fault("GET", folder, status=status, times=10_000))
    event_id = f"evt-gcs-{status}"
    assert post(client, resource, event_id=event_id).status_code == http
    assert fault.hits >= 1
    assert platform_db.history(row_id) is None
    records = platform_db.ingestions("ml-artifacts", resource["name"])
    [entry] = [e for e in _log_entries(capsys.readouterr().out) if e.get("event_id") == event_id]
    if recorded is None:
        assert records == [] and (entry["severity"], entry["outcome"]) == ("ERROR", "retry")
        assert fragment in entry["message"], entry["message"]
    else:
        [record] = records
        assert record["outcome"] == recorded and fragment in record["reason"], record["reason"]
        assert (entry["severity"], entry["outcome"]) == ("ERROR", "rejected")
