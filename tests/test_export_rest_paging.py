"""export-mlflow's REST reader against a hostile tracking server on 127.0.0.1 whose history pages never end."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from metrics_ingest.cli import main
from metrics_ingest.mlflow_export import RestSource, SourceError
from tests.support.platform_db import PlatformDb

RUN_ID = "f" * 32


class HostileServer(ThreadingHTTPServer):
    """Answers like MLflow (one run, one metric), but its get-history pages follow ``mode``:

    ``repeat``: the same token with the same non-empty page, forever; ``trickle``: a fresh token
    and one point a page, forever; ``empty``: a fresh token and no point, forever.
    """

    daemon_threads = True

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = mode
        self.history_calls = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: HostileServer

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path.endswith("/experiments/get-by-name"):
            body: dict[str, Any] = {"experiment": {"experiment_id": "0", "name": "Default"}}
        elif parts.path.endswith("/runs/get"):
            body = {"run": {"info": {"run_id": RUN_ID, "experiment_id": "0", "status": "FINISHED"},
                            "data": {"metrics": [{"key": "loss", "value": 0.5, "step": 0, "timestamp": 1}]}}}
        elif parts.path.endswith("/metrics/get-history"):
            self.server.history_calls += 1
            n = self.server.history_calls
            mode = self.server.mode
            point = {"key": "loss", "value": 0.5, "step": n, "timestamp": n}
            page = [] if mode == "empty" else [point]
            token = "same-token" if mode == "repeat" else f"token-{n}"
            if mode == "repeat" and "page_token" not in query:
                page = [dict(point, step=s) for s in range(3)]
            body = {"metrics": page, "next_page_token": token}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Iterator[HostileServer]:
    """A HostileServer in the mode the test names, serving on a thread."""
    server = HostileServer(request.param)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("hostile", "message"),
    [
        ("repeat", "sent a page token it had sent before"),
        ("trickle", "more than 25,000 points a page could need"),
        ("empty", "more than 25,000 points a page could need"),
    ],
    indirect=["hostile"],
)
def test_pages_that_never_end_are_an_error_not_a_loop(hostile: HostileServer, message: str) -> None:
    """A repeated token (with points), or pages the points cannot need, end within 3 history calls, saying why."""
    source = RestSource(hostile.url, attempts=1)
    started = time.monotonic()
    with pytest.raises(SourceError, match=message) as caught:
        source.fetch([RUN_ID])
    assert time.monotonic() - started < 10
    assert hostile.history_calls <= 3
    assert RUN_ID in str(caught.value) and "'loss'" in str(caught.value)


@pytest.mark.parametrize("hostile", ["repeat"], indirect=True)
def test_the_row_is_failed_with_the_reason_and_the_export_ends(
    hostile: HostileServer, platform_db: PlatformDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through the command: that row is `failed` naming the paging fault, exit 1, nothing written."""
    monkeypatch.setenv("DATABASE_URL", platform_db.url)
    row_id, _ = platform_db.new_quicktest()
    conn = platform_db.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE ml_platform_quicktest SET mlflow_run_id = %s WHERE id = %s", (RUN_ID, row_id))
    finally:
        conn.close()
    code = main(["export-mlflow", "--tracking-uri", hostile.url, "--quicktest", str(row_id),
                 "--output-dir", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    [row] = report["rows"]
    assert row["outcome"] == "failed" and "page token it had sent before" in row["reason"]
    assert not list(tmp_path.rglob("*.json"))
