"""A real MLflow tracking server per test session (``mlflow server`` from pip).

Its backend store is a scratch PostgreSQL database on the session's server.
MLflow lives in its own virtual environment, ``.venv-mlflow`` (the README's
set-up command creates it from ``requirements-mlflow.txt``): in the main one
it would downgrade gunicorn, which functions-framework serves with.

``mlflow_server`` (session): the running server; ``seed(runs)`` logs runs
through the real MLflow client (``tests/support/mlflow_seed.py``) and returns
their ids; ``sql(statement, params)`` writes MLflow's tables directly, for
content MLflow's API refuses today but older stores hold.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from psycopg2.extensions import parse_dsn

from tests.support.network import closed_port
from tests.support.postgres import query

REPO = Path(__file__).resolve().parents[2]
MLFLOW_VENV = REPO / ".venv-mlflow"
SEED_SCRIPT = Path(__file__).with_name("mlflow_seed.py")


def sqlalchemy_url(dsn: str) -> str:
    """A libpq DSN as the SQLAlchemy URL MLflow's --backend-store-uri takes (socket folders as ?host=)."""
    parts = parse_dsn(dsn)
    user = quote(parts.get("user", "postgres"), safe="")
    password = ":" + quote(parts["password"], safe="") if parts.get("password") else ""
    host = parts.get("host", "")
    port = parts.get("port", "5432")
    if host.startswith("/") or not host:
        query = f"?host={quote(host, safe='/')}&port={port}" if host else ""
        return f"postgresql://{user}{password}@/{parts['dbname']}{query}"
    return f"postgresql://{user}{password}@{host}:{port}/{parts['dbname']}"


@dataclasses.dataclass
class MlflowServer:
    """A running tracking server and its backend database."""

    url: str
    database_url: str  # libpq DSN of the backend store (what --mlflow-database-url gets)
    python: Path

    def seed(self, runs: list[dict[str, Any]]) -> list[str]:
        """Log ``runs`` (see mlflow_seed.py) through the real MLflow client; their run ids."""
        done = subprocess.run(
            [str(self.python), str(SEED_SCRIPT), self.url], input=json.dumps(runs), capture_output=True, text=True,
            timeout=600, check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])  # MLflow prints "View run ..." lines first

    def sql(self, statement: str, params: tuple | list = ()) -> list[tuple]:
        """One statement on MLflow's backend database (seeding what the API refuses); its rows."""
        return query(self.database_url, statement, tuple(params))


def start_mlflow_server(database_url: str, workdir: Path, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow server`` on a free port over ``database_url``; returns (process, url) once /health answers."""
    mlflow = MLFLOW_VENV / "bin" / "mlflow"
    assert mlflow.exists(), (
        f"{mlflow} is missing: create it with the README's set-up command "
        "(python3 -m venv .venv-mlflow && .venv-mlflow/bin/pip install -r requirements-mlflow.txt)"
    )
    port = closed_port()
    log = open(workdir / "mlflow-server.log", "wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG", "DATABASE_URL"))}
    process = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", sqlalchemy_url(database_url), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--artifacts-destination", str(workdir / "artifacts")],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mlflow server exited ({process.returncode}): {(workdir / 'mlflow-server.log').read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).text.strip() == "OK":
                return process, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop_process_group(process)
    raise AssertionError(f"mlflow server did not answer /health in {timeout:.0f} s")


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop the server and its workers (its own process group), waiting for them."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def mlflow_server(scratch_database: Callable[[str], str]) -> Iterator[MlflowServer]:
    """One real MLflow tracking server for the session, its store a scratch PostgreSQL database."""
    database_url = scratch_database("mlflow")
    workdir = Path(tempfile.mkdtemp(prefix="metrics-ingest-mlflow-"))
    process, url = start_mlflow_server(database_url, workdir)
    try:
        yield MlflowServer(url, database_url, MLFLOW_VENV / "bin" / "python")
    finally:
        stop_process_group(process)
        shutil.rmtree(workdir, ignore_errors=True)
