"""The local stack for tests, and helpers to fill a bucket for replay.

``local_stack`` (session): one ``LocalStack`` (the function under
functions-framework, the bridge, its own emulator) on the session's
migrated database (``platform_db``), so no second PostgreSQL is started.
``replay_env`` (per test): DATABASE_URL and STORAGE_EMULATOR_HOST pointing
at the session database and the plain session emulator (no bridge: replay
alone decides there).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
from ingest.config import LIBRARY_ENV, Settings
import pytest
from google.cloud import storage
from psycopg2 import sql

from metrics_ingest.localstack.emulator import GcsEmulator
from metrics_ingest.localstack.stack import LocalStack
from tests.support.documents import dumps, v1_document

REPO_ROOT = Path(__file__).resolve().parents[2]

# Ten ways a metrics file is broken; each must be rejected with a reason.
BROKEN_FILES: list[tuple[str, bytes]] = [
    ("not JSON", b"{this is not json"),
    ("a final metric that is text", dumps({"epochs": [0], "final_metrics": {"test_recall_at_100": "high"}})),
    ("series shorter than epochs", dumps({"epochs": [0, 1, 2], "loss": {"loss": [1.0, 0.5]}})),
    ("epochs not increasing", dumps({"epochs": [0, 2, 1], "loss": {"loss": [1.0, 0.5, 0.4]}})),
    ("unknown schema_version", dumps({"schema_version": 2, "epochs": [0], "loss": {"loss": [1.0]}})),
    ("top level is an array", b"[1, 2, 3]"),
    ("empty file", b""),
    ("not UTF-8", b'{"epochs": [0], "params": {"name": "\xff\xfe"}}'),
    ("no epochs", dumps({"loss": {"loss": [1.0]}})),
    (
        "histogram row of the wrong width",
        dumps(
            {
                "epochs": [0],
                "weight_stats": {"query": {"histogram": {"bin_edges": [0, 1, 2], "counts": [[1, 2, 3]]}}},
            }
        ),
    ),
]


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for running ``python -m metrics_ingest`` from the repository root."""
    env = {k: v for k, v in os.environ.items() if k not in _PRODUCT_ENV}
    env["PYTHONPATH"] = os.pathsep.join(["functions", ".", "trainer_callbacks/src"])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# Settings' own list and the clients' variables: the same set tests/conftest.py clears.
_PRODUCT_ENV = {*Settings.ENV, *LIBRARY_ENV}


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "metrics_ingest", *args]


@dataclasses.dataclass
class ReplayBucket:
    """A bucket filled for replay: which objects are valid, broken or rowless."""

    name: str
    valid: dict[str, int]  # object name -> QuickTest id
    broken: dict[str, tuple[str, int]]  # object name -> (kind, QuickTest id)
    rowless: list[str]
    other: list[str]
    documents: dict[str, dict[str, Any]]

    @property
    def uri(self) -> str:
        return f"gs://{self.name}/quick_tests"


def fill_bucket(
    emulator: GcsEmulator,
    database_url: str,
    *,
    valid: int,
    broken: int = 0,
    rowless: int = 0,
    other: int = 0,
    epochs: int = 3,
) -> ReplayBucket:
    """Create a fresh bucket with metrics files (and their QuickTest rows) through the real client."""
    bucket_name = f"replay-{uuid.uuid4().hex[:10]}"
    emulator.create_bucket(bucket_name)
    client = storage.Client(project="local-test")
    bucket = client.bucket(bucket_name)
    folders = [f"quick_tests/{i:05d}" for i in range(valid + broken + rowless)]
    with_rows = folders[: valid + broken]
    ids = _insert_rows(database_url, [f"gs://{bucket_name}/{f}" for f in with_rows])
    result = ReplayBucket(bucket_name, {}, {}, [], [], {})
    for index, folder in enumerate(folders):
        name = f"{folder}/training_metrics.json"
        if index < valid:
            doc = v1_document(epochs, seed=index)
            result.valid[name], result.documents[name] = ids[index], doc
            data = dumps(doc)
        elif index < valid + broken:
            kind, data = BROKEN_FILES[(index - valid) % len(BROKEN_FILES)]
            result.broken[name] = (kind, ids[index])
        else:
            doc = v1_document(epochs, seed=index)
            result.rowless.append(name)
            result.documents[name] = doc
            data = dumps(doc)
        bucket.blob(name).upload_from_string(data, content_type="application/json")
    for index in range(other):
        name = f"{folders[index % len(folders)]}/model/variables/variables.data-{index:05d}"
        bucket.blob(name).upload_from_string(b"\0" * 64)
        result.other.append(name)
    return result


def _insert_rows(database_url: str, paths: list[str]) -> list[int]:
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            rows = psycopg2.extras.execute_values(
                cur,
                "INSERT INTO ml_platform_quicktest (name, gcs_artifacts_path) VALUES %s RETURNING id",
                [(p.rsplit("/", 1)[-1], p) for p in paths],
                fetch=True,
            )
    finally:
        conn.close()
    return [r[0] for r in rows]


def histories(database_url: str, ids: list[int]) -> dict[int, Any]:
    """QuickTest id -> training_history_json."""
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT id, training_history_json FROM ml_platform_quicktest WHERE id = ANY(%s)", (ids,))
            return dict(cur.fetchall())
    finally:
        conn.close()


def ingestion_records(database_url: str, bucket: str) -> list[dict[str, Any]]:
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                sql.SQL("SELECT * FROM {} WHERE bucket = %s ORDER BY id").format(
                    sql.Identifier("training_metrics_ingestions")
                ),
                (bucket,),
            )
            return [dict(r) for r in cur.fetchall()]
    finally:
        conn.close()


@pytest.fixture
def replay_env(platform_db: Any, gcs_env: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> GcsEmulator:
    """DATABASE_URL (the session's migrated database) and STORAGE_EMULATOR_HOST (the plain emulator)."""
    monkeypatch.setenv("DATABASE_URL", platform_db.url)
    return gcs_env


@pytest.fixture(scope="session")
def local_stack(platform_db: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The whole local stack (function, bridge, its own emulator) on the session database."""
    stack = LocalStack(tmp_path_factory.mktemp("stack"), bucket="ml-artifacts-stack", database_url=platform_db.url)
    with stack:
        yield stack
