"""The platform side, for real: a minimal Django project (tests/django_platform) whose QuickTest
lives on the tests' PostgreSQL, its listen_training_metrics command told by the function,
and the ranking query; a database restart in the middle loses no update."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cloudevents.conversion import to_binary

from ingest import store
from ingest.objects import ObjectRef
from ingest.pipeline import ingest_object
from metrics_ingest.migrations import apply_migrations, create_dev_platform_table
from tests.support.documents import dumps, v1_document
from tests.support.function_server import FunctionServer, finalize_event
from tests.support.platform_db import Artifacts, PlatformDb
from tests.support.postgres import query
from tests.support.restartable_postgres import RestartablePostgres

PROJECT = Path(__file__).parent / "django_platform"


class ListenerProcess:
    """``manage.py listen_training_metrics`` in a process of its own; its output lines collected."""

    def __init__(self, database_url: str, *args: str) -> None:
        env = {**os.environ, "DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, str(PROJECT / "manage.py"), "listen_training_metrics", *args],
            cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 20.0, after: int = 0) -> int:
        """The index of the first line from ``after`` on matching ``pattern``; fails with the output after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in range(after, len(self.lines)):
                if re.search(pattern, self.lines[i]):
                    return i
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}; the command said:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture
def listener() -> Iterator[Any]:
    """``listener(url, *args)`` starts the command; every one started is stopped after the test."""
    started: list[ListenerProcess] = []

    def start(url: str, *args: str) -> ListenerProcess:
        started.append(ListenerProcess(url, *args))
        return started[-1]

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def django_orm(platform_db: PlatformDb) -> Any:
    """Django set up in this process on the session's database: the QuickTest model, as the platform reads it."""
    sys.path.insert(0, str(PROJECT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "platform_site.settings"
    os.environ["DATABASE_URL"] = platform_db.url  # read once, by setup (the tests' env is cleared per test)
    try:
        import django

        django.setup()
    finally:
        del os.environ["DATABASE_URL"]
    from ml_platform.models import QuickTest

    yield QuickTest
    from django import db

    db.connections.close_all()  # before the session database is dropped


def _deliver(function_server: FunctionServer, resource: dict[str, Any]) -> int:
    headers, body = to_binary(finalize_event(resource))
    return requests.post(function_server.url, headers=headers, data=body, timeout=60).status_code


def test_an_upload_through_the_function_updates_the_quicktest_and_the_orm_reads_the_history(
    django_orm: Any, function_server: FunctionServer, platform_db: PlatformDb, artifacts: Artifacts, listener: Any
) -> None:
    """The function's notifications move QuickTest.status and updated_at; the ORM reads the history, summary included."""
    QuickTest = django_orm
    folder = f"quick_tests/{uuid.uuid4().hex[:12]}"
    qt = QuickTest.objects.create(name="e2e", gcs_artifacts_path=f"gs://{artifacts.bucket_name}/{folder}")
    created_at = qt.updated_at
    command = listener(platform_db.url)
    command.wait_for(r"^listening on training_metrics$")

    running = v1_document(2, status="running")
    assert _deliver(function_server, artifacts.upload(folder, dumps(running))) == 200
    command.wait_for(rf"^quicktest {qt.id}: pending -> running \(notification\)$")
    qt.refresh_from_db()
    assert qt.status == "running" and qt.updated_at > created_at

    done = v1_document(5)
    resource = artifacts.upload(folder, dumps(done))
    assert _deliver(function_server, resource) == 200
    command.wait_for(rf"^quicktest {qt.id}: running -> completed \(notification\)$")
    qt.refresh_from_db()
    history = qt.training_history_json
    assert qt.status == "completed" and isinstance(history, dict)
    assert history["epochs"] == done["epochs"] and history["loss"]["val_loss"] == done["loss"]["val_loss"]
    assert history["source"]["generation"] == resource["generation"]
    val_loss = done["loss"]["val_loss"]
    assert history["summary"]["val_loss"] == {
        "final": val_loss[-1], "best": min(val_loss), "best_epoch": val_loss.index(min(val_loss)), "nulls": 0,
    }  # fmt: skip
    # JSONField key lookups reach into the document in SQL.
    assert QuickTest.objects.filter(pk=qt.id, training_history_json__summary__val_loss__nulls=0).exists()
    assert command.stop() == 0 and command.lines[-1] == "stopped"


def test_the_documented_ranking_query_orders_runs_by_best_val_loss(
    django_orm: Any, platform_db: PlatformDb, artifacts: Artifacts
) -> None:
    """ranking.sql through Django's connection returns the runs with the lowest best val_loss first, from the summaries."""
    from django.db import connection

    QuickTest = django_orm
    ids = []
    for best in (-1.0, -3.0, -2.0):  # below any other test's val_loss (random in [0, 1)): first in the ranking
        doc = v1_document(3, seed=int(-best))
        doc["loss"]["val_loss"] = [None, best, best + 0.5]
        qt = QuickTest.objects.create(name=f"rank{best}", gcs_artifacts_path=f"gs://{artifacts.bucket_name}/rank/{uuid.uuid4().hex}")
        resource = artifacts.upload(qt.gcs_artifacts_path.split("/", 3)[3], dumps(doc))
        assert ingest_object(ObjectRef.from_resource(resource), settings=platform_db.settings()).outcome == "ingested"
        ids.append(qt.id)
    with connection.cursor() as cur:
        cur.execute((PROJECT / "ml_platform" / "ranking.sql").read_text())
        rows = cur.fetchall()
    # Django leaves a jsonb value as its JSON text (the JSONField decodes its own column only).
    assert [(r[0], float(r[3])) for r in rows[:3]] == [(ids[1], -3.0), (ids[2], -2.0), (ids[0], -1.0)]


def test_a_database_restart_loses_no_update(listener: Any, artifacts: Artifacts) -> None:
    """Rows ingested before the command starts and while the database restarts are caught up; live ones notified."""
    pg = RestartablePostgres()
    try:
        create_dev_platform_table(pg.admin_url)
        apply_migrations(pg.admin_url)
        db = PlatformDb(pg.admin_url)
        settings = db.settings()

        def ingest(status: str) -> int:
            row_id, folder = db.new_quicktest()
            resource = artifacts.upload(folder, dumps(v1_document(2, status=status)))
            assert ingest_object(ObjectRef.from_resource(resource), settings=settings).outcome == "ingested"
            return row_id

        before_start = ingest("completed")  # nobody listening yet
        command = listener(pg.admin_url, "--reconnect-delay", "4")
        command.wait_for(rf"^quicktest {before_start}: pending -> completed \(catch-up\)$")
        command.wait_for(r"^caught up: 1 row\(s\) ingested since .*, 1 updated$")
        live = ingest("failed")
        command.wait_for(rf"^quicktest {live}: pending -> failed \(notification\)$")

        pg.restart()
        lost = command.wait_for(r"^connection lost .*; reconnecting in 4 s$")
        while_away = ingest("running")  # the function's pool reconnects; the command is still waiting
        back = command.wait_for(r"^listening on training_metrics$", timeout=30, after=lost)
        command.wait_for(rf"^quicktest {while_away}: pending -> running \(catch-up\)$", after=back)
        after = ingest("completed")
        command.wait_for(rf"^quicktest {after}: pending -> completed \(notification\)$", after=back)

        statuses = dict(query(pg.admin_url, "SELECT id, status FROM ml_platform_quicktest"))
        assert statuses == {before_start: "completed", live: "failed", while_away: "running", after: "completed"}
        assert command.stop() == 0
    finally:
        store.close_pools()
        pg.stop()
