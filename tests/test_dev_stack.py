"""The local stack: emulator uploads reach the row through the function, as on GCP."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psutil
import pytest
from google.cloud import storage

from metrics_ingest.localstack.bridge import FINALIZED, EventBridge
from metrics_ingest.cli import main
from metrics_ingest.localstack.stack import LocalStack, fetch_ingestions
from tests.support.documents import dumps, v1_document
from tests.support.localstack import REPO_ROOT, cli_command, cli_env


def _client(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> storage.Client:
    for name, value in stack.env().items():
        monkeypatch.setenv(name, value)
    return storage.Client(project="local-test")


def test_upload_reaches_the_row_within_two_seconds(local_stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upload through the real client fills the QuickTest row within 2 s, with no other call."""
    client = _client(local_stack, monkeypatch)
    quicktest_id, folder = local_stack.add_quicktest()
    doc = v1_document(4, seed=11)
    name = folder.split("/", 3)[3] + "/training_metrics.json"
    started = time.monotonic()
    client.bucket(local_stack.bucket).blob(name).upload_from_string(dumps(doc), content_type="application/json")
    history = local_stack.wait_for_history(quicktest_id, timeout=2.0)
    elapsed = time.monotonic() - started
    assert history is not None, f"row still empty after {elapsed:.2f} s"
    assert elapsed < 2.0
    assert history["epochs"] == doc["epochs"] and history["source"]["object"] == name
    [record] = fetch_ingestions(local_stack.database_url, local_stack.bucket, name)
    assert record["outcome"] == "ingested" and record["quicktest_id"] == quicktest_id
    assert not record["event_id"].startswith("replay:")  # the function wrote it, not a replay


def test_replay_and_function_agree(
    local_stack: LocalStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file the function ingested is a duplicate for replay, and one replay ingested is a
    duplicate for the function (same event redelivered)."""
    client = _client(local_stack, monkeypatch)
    bucket = client.bucket(local_stack.bucket)

    # 1. The function first, then replay.
    first_id, first_folder = local_stack.add_quicktest()
    first = first_folder.split("/", 3)[3] + "/training_metrics.json"
    bucket.blob(first).upload_from_string(dumps(v1_document(3, seed=1)))
    assert local_stack.wait_for_history(first_id, timeout=10) is not None
    assert main(["replay", first_folder, "--json"]) == 0
    [outcome] = json.loads(capsys.readouterr().out)["objects"]
    assert outcome["outcome"] == "duplicate"

    # 2. Replay first: the upload lands before its row exists (the function records
    #    no_matching_row), the row is created, replay ingests, and Eventarc's
    #    redelivery of the finalize event is a duplicate for the function.
    second_folder = f"gs://{local_stack.bucket}/quick_tests/late-{time.time_ns()}"
    second = second_folder.split("/", 3)[3] + "/training_metrics.json"
    blob = bucket.blob(second)
    blob.upload_from_string(dumps(v1_document(3, seed=2)))
    local_stack.bridge.join()
    assert [r["outcome"] for r in fetch_ingestions(local_stack.database_url, local_stack.bucket, second)] == [
        "no_matching_row"
    ]
    second_id, _ = local_stack.add_quicktest(second_folder)
    assert main(["replay", second_folder, "--json"]) == 0
    [outcome] = json.loads(capsys.readouterr().out)["objects"]
    assert outcome["outcome"] == "ingested" and outcome["quicktest_id"] == second_id
    blob.reload()
    delivery = local_stack.bridge.deliver(blob._properties)
    assert delivery.ok and delivery.status in (200, 204)
    records = fetch_ingestions(local_stack.database_url, local_stack.bucket, second)
    assert [r["outcome"] for r in records] == ["no_matching_row", "ingested", "duplicate"]
    assert records[-1]["event_id"] == delivery.event_id


class _FlakyFunction(BaseHTTPRequestHandler):
    """A stand-in endpoint that refuses the first two deliveries with 503."""

    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).seen.append({"headers": dict(self.headers), "body": json.loads(body)})
        status = 503 if len(type(self).seen) <= 2 else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_bridge_sends_the_eventarc_event_and_retries_non_2xx() -> None:
    """The bridge POSTs a binary-mode finalize CloudEvent and redelivers the same event after a 503."""
    _FlakyFunction.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyFunction)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    bridge = EventBridge(f"http://127.0.0.1:{server.server_address[1]}/", backoff=0.01).start()
    try:
        resource = {"bucket": "b", "name": "quick_tests/1/training_metrics.json", "generation": "17", "size": "2"}
        bridge.submit(resource)
        bridge.join()
    finally:
        bridge.stop()
        server.shutdown()
        server.server_close()
    [delivery] = bridge.deliveries
    assert delivery.ok and delivery.attempts == 3 and delivery.status == 204
    assert len(_FlakyFunction.seen) == 3
    headers = {k.lower(): v for k, v in _FlakyFunction.seen[-1]["headers"].items()}
    assert headers["ce-type"] == FINALIZED
    assert headers["ce-source"] == "//storage.googleapis.com/projects/_/buckets/b"
    assert headers["ce-subject"] == "objects/quick_tests/1/training_metrics.json"
    assert len({s["headers"]["ce-id"] for s in _FlakyFunction.seen}) == 1  # a redelivery keeps its id
    assert _FlakyFunction.seen[-1]["body"] == resource


def _port_open(url: str) -> bool:
    host, port = re.match(r"https?://([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


@pytest.mark.slow
def test_dev_command_serves_uploads_and_ctrl_c_stops_everything(
    platform_db: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`metrics-ingest dev` prints the exports; with it running, `--add-row` plus an upload fills the
    row within 2 s; Ctrl-C stops the function and every process it started."""
    state = tmp_path / "state"
    proc = subprocess.Popen(
        cli_command(
            "dev", "--state-dir", str(state), "--database-url", platform_db.url,
            "--emulator-port", "0", "--function-port", "0", "--bucket", "dev-bucket",
        ),
        cwd=REPO_ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    exports: dict[str, str] = {}
    function_url = None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if m := re.match(r"\s+export (\w+)=(\S+)", line):
            exports[m[1]] = m[2].strip("'")
        if m := re.match(r"\s+function:\s+(\S+)", line):
            function_url = m[1]
        if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
            break
    assert {"STORAGE_EMULATOR_HOST", "DATABASE_URL", "METRICS_BUCKET"} <= set(exports), exports
    assert exports["METRICS_BUCKET"] == "dev-bucket" and function_url
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the function runs as a child process"
    try:
        added = subprocess.run(
            cli_command("dev", "--state-dir", str(state), "--add-row"),
            cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        m = re.search(r"QuickTest (\d+): upload to gs://dev-bucket/(\S+)", added)
        assert m, added
        quicktest_id, name = int(m[1]), m[2]

        for key, value in exports.items():
            monkeypatch.setenv(key, value)
        blob = storage.Client(project="local-test").bucket("dev-bucket").blob(name)
        uploaded = time.monotonic()
        blob.upload_from_string(dumps(v1_document(3)))
        history = platform_db.history(quicktest_id)
        while history is None and time.monotonic() - uploaded < 2.0:
            time.sleep(0.05)
            history = platform_db.history(quicktest_id)
        assert history is not None, f"row empty {time.monotonic() - uploaded:.2f} s after the upload"
        assert history["source"]["object"] == name
        assert _port_open(function_url)
    finally:
        # Under load (CPU burners beside the suite's own processes), Ctrl-C pressed again and again,
        # during the wait loop and during the stop: it stops every time, in bounded time.
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
        try:
            for _ in range(5):
                proc.send_signal(signal.SIGINT)
                time.sleep(0.07)
            out, _ = proc.communicate(timeout=40)
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()
    assert proc.returncode == 0, out
    assert "stopped" in out and "Traceback" not in out
    assert not _port_open(function_url)
    assert not _port_open(exports["STORAGE_EMULATOR_HOST"])
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not (state / "stack.json").exists()
