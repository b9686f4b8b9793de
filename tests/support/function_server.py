"""CloudEvents for the function, and ONE real functions-framework server per session."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cloudevents.http import CloudEvent

from metrics_ingest.localstack.emulator import GcsEmulator
from tests.support.network import closed_port
from tests.support.platform_db import PlatformDb

ROOT = Path(__file__).resolve().parents[2]
FINALIZED = "google.cloud.storage.object.v1.finalized"


def finalize_event(resource: dict[str, Any], event_id: str | None = None) -> CloudEvent:
    """The CloudEvent Eventarc delivers for a finalized object."""
    return CloudEvent(
        {
            "id": event_id or uuid.uuid4().hex,
            "type": FINALIZED,
            "source": f"//storage.googleapis.com/projects/_/buckets/{resource.get('bucket')}",
            "subject": f"objects/{resource.get('name')}",
            "specversion": "1.0",
        },
        resource,
    )


class FunctionServer:
    """A running ``functions-framework`` process serving the function."""

    def __init__(self, url: str, log_path: Path) -> None:
        self.url = url
        self.log_path = log_path

    def log_lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()


@contextlib.contextmanager
def serve_function(extra_env: dict[str, str], log_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``functions-framework --target ingest_training_metrics`` on a free port: (process, url)."""
    port = closed_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "functions"),
        "GOOGLE_CLOUD_PROJECT": "local-test",
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    }
    executable = Path(sys.executable).parent / "functions-framework"
    command = [
        str(executable),
        "--target", "ingest_training_metrics",
        "--signature-type", "cloudevent",
        "--source", str(ROOT / "functions" / "main.py"),
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"functions-framework exited: {log_path.read_text()[-2000:]}")
            try:
                requests.get(url, timeout=1)  # any HTTP answer means it is serving
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"functions-framework did not start: {log_path.read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield process, url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def function_server(
    platform_db: PlatformDb, gcs_emulator: GcsEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FunctionServer]:
    """``functions-framework --target ingest_training_metrics`` on a free port, wired to the
    session's database and emulator (as the local stack runs it)."""
    log_path = tmp_path_factory.mktemp("function") / "server.log"
    env = {"DATABASE_URL": platform_db.url, "STORAGE_EMULATOR_HOST": gcs_emulator.url}
    with serve_function(env, log_path) as (_process, url):
        yield FunctionServer(url, log_path)
