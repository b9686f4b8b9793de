"""A PostgreSQL restart costs a reconnect, not a failed event: the function and replay
against a real server of their own, restarted between two bursts of events."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from google.cloud import storage

import functions_framework
from ingest import store
from ingest.config import Settings
from metrics_ingest.migrations import apply_migrations, create_dev_platform_table
from metrics_ingest.replay import ReplayOptions, parse_gs_uri, run_replay
from tests.support.documents import dumps, v1_document
from tests.support.function_server import ROOT, finalize_event
from tests.support.platform_db import Artifacts, PlatformDb
from tests.support.restartable_postgres import RestartablePostgres

POOL = 8


@pytest.fixture(scope="module")
def restartable_db() -> Iterator[tuple[RestartablePostgres, PlatformDb]]:
    """A scratch server with the platform table and the migrations applied."""
    pg = RestartablePostgres()
    try:
        create_dev_platform_table(pg.admin_url)
        apply_migrations(pg.admin_url)
        yield pg, PlatformDb(pg.admin_url)
    finally:
        store.close_pools()
        pg.stop()


def _backends(db: PlatformDb) -> int:
    """Sessions the product holds open on the server."""
    conn = db.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'metrics-ingest'")
            return cur.fetchone()[0]
    finally:
        conn.close()


def _warm_pool(settings: Settings) -> None:
    """Every connection of the pool checked out at once, as a peak of concurrent events does."""
    barrier = threading.Barrier(POOL)

    def hold() -> None:
        with store.connection(settings) as conn, conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            barrier.wait(timeout=30)

    threads = [threading.Thread(target=hold) for _ in range(POOL)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _deliver_concurrently(app: Any, resources: list[dict[str, Any]]) -> list[int]:
    """POST every event at once (one test client per thread); the HTTP statuses."""
    statuses: list[int] = [0] * len(resources)
    barrier = threading.Barrier(len(resources))

    def deliver(i: int) -> None:
        headers, body = to_binary(finalize_event(resources[i]))
        client = app.test_client()
        barrier.wait(timeout=30)
        statuses[i] = client.post("/", headers=headers, data=body).status_code

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(len(resources))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def test_function_survives_a_database_restart_without_a_failed_delivery(
    restartable_db: tuple[RestartablePostgres, PlatformDb],
    artifacts: Artifacts,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Pool warmed by concurrent events, PostgreSQL restarted, then a burst of events: every one is 2xx and ingested."""
    pg, db = restartable_db
    monkeypatch.setenv("DATABASE_URL", db.url)
    monkeypatch.setenv("DB_POOL_SIZE", str(POOL))
    settings = Settings.from_env()
    app = functions_framework.create_app("ingest_training_metrics", str(ROOT / "functions" / "main.py"), "cloudevent")

    def batch(n: int) -> tuple[list[int], list[dict[str, Any]]]:
        rows, resources = [], []
        for _ in range(n):
            row_id, folder = db.new_quicktest()
            rows.append(row_id)
            resources.append(artifacts.upload(folder, dumps(v1_document(2))))
        return rows, resources

    warm_rows, warm = batch(POOL)
    assert _deliver_concurrently(app, warm) == [200] * POOL
    _warm_pool(settings)
    assert _backends(db) == POOL  # every pooled connection is open: each one dies in the restart

    pg.restart()
    assert _backends(db) == 0

    rows, burst = batch(2 * POOL)
    invalidations = store.pool(settings).invalidations
    capsys.readouterr()
    statuses = _deliver_concurrently(app, burst)
    outcomes = [json.loads(line).get("outcome") for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    failed = sum(1 for s in statuses if not 200 <= s < 300)
    assert failed == 0, f"{failed} of {len(burst)} deliveries failed after the restart: {statuses}"
    assert store.pool(settings).invalidations == invalidations + 1  # the first dead connection, not each one
    assert 1 <= outcomes.count("reconnect") <= POOL and "retry" not in outcomes  # WARNING lines, no failed event
    assert outcomes.count("ingested") == len(burst)
    for row_id in warm_rows + rows:
        assert db.history(row_id)["epochs"] == [0, 1]


def test_replay_workers_survive_a_database_restart_without_a_failed_object(
    restartable_db: tuple[RestartablePostgres, PlatformDb], artifacts: Artifacts
) -> None:
    """Replay's workers share the pool: after a restart, one try per object (no retry allowed) still ingests every one."""
    pg, db = restartable_db
    settings = db.settings(db_pool_size=POOL)
    client = storage.Client()

    def folder_batch(n: int) -> tuple[str, list[int]]:
        prefix = f"replay_restart_{uuid.uuid4().hex[:8]}"
        rows = []
        for i in range(n):
            folder = f"{prefix}/run{i}"
            conn = db.connect()
            with conn, conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO ml_platform_quicktest (name, gcs_artifacts_path, mlflow_run_id)"
                    " VALUES (%s, %s, '') RETURNING id",
                    (folder, f"gs://{artifacts.bucket_name}/{folder}"),
                )
                rows.append(cur.fetchone()[0])
            conn.close()
            artifacts.upload(folder, dumps(v1_document(2)))
        return prefix, rows

    def replay(prefix: str) -> list[str]:
        options = ReplayOptions(
            parse_gs_uri(f"gs://{artifacts.bucket_name}/{prefix}"), workers=POOL, settings=settings, attempts=1
        )
        return [o.outcome for o in run_replay(options, client=client).outcomes]

    prefix, warm_rows = folder_batch(POOL)
    assert replay(prefix) == ["ingested"] * POOL
    _warm_pool(settings)
    pg.restart()
    prefix, rows = folder_batch(2 * POOL)
    outcomes = replay(prefix)
    assert outcomes.count("failed") == 0, f"{outcomes.count('failed')} of {len(rows)} objects failed: {outcomes}"
    assert outcomes == ["ingested"] * len(rows)
    for row_id in warm_rows + rows:
        assert db.history(row_id)["epochs"] == [0, 1]
