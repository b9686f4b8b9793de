"""The platform is told: every row write sends pg_notify(NOTIFY_CHANNEL, payload) in its own
transaction, and nothing else does."""

from __future__ import annotations

import json
import uuid
import select
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from ingest import store
from ingest.config import Settings
from ingest.errors import TransientError
from ingest.objects import ObjectRef
from ingest.pipeline import IngestResult, ingest_object
from metrics_ingest.migrations import apply_migrations, create_dev_platform_table
from tests.support.documents import dumps, v1_document
from tests.support.platform_db import Artifacts, PlatformDb


class Listener:
    """A psycopg2 session LISTENing on one channel, as the platform's command does."""

    def __init__(self, url: str, channel: str) -> None:
        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute(f'LISTEN "{channel}"')  # a test's own constant name

    def received(self, expect: int = 0, timeout: float = 5.0, grace: float = 0.3) -> list[tuple[str, dict[str, Any]]]:
        """(channel, payload) of the notifications that arrived: waits up to ``timeout`` for ``expect``
        of them, then ``grace`` seconds more for any unexpected one (a write commits before
        ingest_object returns, so its notification is already on its way)."""
        out: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        settled: float | None = None
        while True:
            now = time.monotonic()
            if settled is None and (len(out) >= expect or now >= deadline):
                settled = now + grace
            end = settled if settled is not None else deadline
            if now >= end:
                return out
            if select.select([self.conn], [], [], end - now)[0]:
                self.conn.poll()
                while self.conn.notifies:
                    note = self.conn.notifies.pop(0)
                    out.append((note.channel, json.loads(note.payload)))

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def listen(platform_db: PlatformDb) -> Iterator[Any]:
    """``listen(channel, url=None)``: a Listener on the session database (closed after the test)."""
    opened: list[Listener] = []

    def make(channel: str = "training_metrics", url: str | None = None) -> Listener:
        opened.append(Listener(url or platform_db.url, channel))
        return opened[-1]

    yield make
    for listener in opened:
        listener.close()


def _ingest(settings: Settings, resource: dict[str, Any], **kwargs: Any) -> IngestResult:
    # A fresh event id per delivery: the same id again is a redelivery, settled by its first record.
    return ingest_object(ObjectRef.from_resource(resource), settings=settings, event_id=f"evt-{uuid.uuid4().hex}", **kwargs)


def test_an_ingestion_notifies_the_row_id_generation_status_epochs_and_outcome(
    platform_db: PlatformDb, artifacts: Artifacts, listen: Any
) -> None:
    """One notification on training_metrics per ingested row, its payload the documented five keys."""
    listener = listen()
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(4, status="running")))
    assert _ingest(platform_db.settings(), resource).outcome == "ingested"
    assert listener.received(1) == [
        (
            "training_metrics",
            {
                "quicktest_id": row_id,
                "generation": resource["generation"],
                "status": "running",
                "epochs": 4,
                "outcome": "ingested",
            },
        )
    ]


def test_a_forced_reingestion_notifies_again_and_a_newer_generation_too(
    platform_db: PlatformDb, artifacts: Artifacts, listen: Any
) -> None:
    """Every row write tells: --force rewrites the row and notifies; a newer generation notifies with its own number."""
    listener = listen()
    row_id, folder = platform_db.new_quicktest()
    first = artifacts.upload(folder, dumps(v1_document(2, status="running")))
    assert _ingest(platform_db.settings(), first).outcome == "ingested"
    assert _ingest(platform_db.settings(), first, force=True).outcome == "ingested"
    second = artifacts.upload(folder, dumps(v1_document(3)))
    assert _ingest(platform_db.settings(), second).outcome == "ingested"
    got = [(p["quicktest_id"], p["generation"], p["status"], p["epochs"]) for _, p in listener.received(3)]
    assert got == [
        (row_id, first["generation"], "running", 2),
        (row_id, first["generation"], "running", 2),
        (row_id, second["generation"], "completed", 3),
    ]


def test_outcomes_that_write_no_row_send_nothing(platform_db: PlatformDb, artifacts: Artifacts, listen: Any) -> None:
    """A duplicate, a superseded generation, a rejected file and an object without a row notify nobody."""
    row_id, folder = platform_db.new_quicktest()
    older = artifacts.upload(folder, dumps(v1_document(2)))
    newer = artifacts.upload(folder, dumps(v1_document(3)))
    assert _ingest(platform_db.settings(), newer).outcome == "ingested"
    listener = listen()
    assert _ingest(platform_db.settings(), newer).outcome == "duplicate"
    assert _ingest(platform_db.settings(), older).outcome == "superseded"
    bad_row, bad_folder = platform_db.new_quicktest()
    assert _ingest(platform_db.settings(), artifacts.upload(bad_folder, b'{"epochs": [0, 0]}')).outcome == "rejected"
    orphan = artifacts.upload("quick_tests/no-such-row", dumps(v1_document(1)))
    assert _ingest(platform_db.settings(), orphan).outcome == "no_matching_row"
    assert listener.received() == []
    assert platform_db.history(bad_row) is None


def test_the_channel_is_the_setting_and_empty_turns_it_off(
    platform_db: PlatformDb, artifacts: Artifacts, listen: Any
) -> None:
    """NOTIFY_CHANNEL=qt_events notifies there (not on the default); NOTIFY_CHANNEL='' notifies nowhere."""
    default, custom = listen("training_metrics"), listen("qt_events")
    row_id, folder = platform_db.new_quicktest()
    env = {"DATABASE_URL": platform_db.url, "NOTIFY_CHANNEL": "qt_events"}
    assert _ingest(Settings.from_env(env), artifacts.upload(folder, dumps(v1_document(1)))).outcome == "ingested"
    assert [(c, p["quicktest_id"]) for c, p in custom.received(1)] == [("qt_events", row_id)]
    assert default.received() == []

    off = Settings.from_env({"DATABASE_URL": platform_db.url, "NOTIFY_CHANNEL": ""})
    assert off.notify_channel == ""
    row_id, folder = platform_db.new_quicktest()
    assert _ingest(off, artifacts.upload(folder, dumps(v1_document(1)))).outcome == "ingested"
    assert platform_db.history(row_id)["epochs"] == [0]  # written, told to no one
    assert default.received() == [] and custom.received(grace=0.05) == []
    assert Settings.from_env({}).notify_channel == "training_metrics"


@pytest.mark.parametrize(
    "value", ["Training_Metrics", "training-metrics", "1metrics", "metrics events", "x" * 64, "m\x00", "é"]
)
def test_a_bad_channel_name_is_a_configuration_error_naming_the_setting(value: str) -> None:
    """A value LISTEN could not hear as written (case, punctuation, length) is refused, naming NOTIFY_CHANNEL."""
    with pytest.raises(ValueError, match="Invalid value for NOTIFY_CHANNEL") as info:
        Settings.from_env({"NOTIFY_CHANNEL": value})
    assert "channel name" in str(info.value)
    with pytest.raises(ValueError, match="NOTIFY_CHANNEL"):
        Settings(notify_channel=value)


@pytest.fixture(scope="module")
def doomed_db(scratch_database: Any) -> PlatformDb:
    """A database of this module's own whose platform table refuses updates of rows named 'doomed-*'."""
    url = scratch_database("notify")
    create_dev_platform_table(url)
    apply_migrations(url)
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            # Raised after the statement's pg_notify has run: the transaction, notification
            # included, is rolled back. The SQLSTATE picks how the function classifies it.
            cur.execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " RAISE EXCEPTION 'refused by a test trigger' USING ERRCODE = TG_ARGV[0]; END $$;"
                " CREATE TRIGGER refuse_transient AFTER UPDATE ON ml_platform_quicktest FOR EACH ROW"
                " WHEN (OLD.name = 'doomed-transient') EXECUTE FUNCTION refuse('40001');"
                " CREATE TRIGGER refuse_value AFTER UPDATE ON ml_platform_quicktest FOR EACH ROW"
                " WHEN (OLD.name = 'doomed-value') EXECUTE FUNCTION refuse('22023')"
            )
    finally:
        conn.close()
    return PlatformDb(url)


def _doomed_row(db: PlatformDb, name: str) -> tuple[int, str]:
    row_id, folder = db.new_quicktest()
    conn = db.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE ml_platform_quicktest SET name = %s WHERE id = %s", (name, row_id))
    finally:
        conn.close()
    return row_id, folder


def test_a_rolled_back_write_notifies_nobody(doomed_db: PlatformDb, artifacts: Artifacts, listen: Any) -> None:
    """The row update fails after pg_notify ran (retried, or rejected by PostgreSQL): no notification, row unchanged."""
    listener = listen(url=doomed_db.url)
    settings = doomed_db.settings()
    transient_id, folder = _doomed_row(doomed_db, "doomed-transient")
    with pytest.raises(TransientError):
        _ingest(settings, artifacts.upload(folder, dumps(v1_document(2))))
    value_id, folder = _doomed_row(doomed_db, "doomed-value")
    result = _ingest(settings, artifacts.upload(folder, dumps(v1_document(2))))
    assert result.outcome == "rejected" and "refused by a test trigger" in (result.reason or "")
    assert doomed_db.history(transient_id) is None and doomed_db.history(value_id) is None
    assert listener.received() == []
    # The same database, a row the trigger lets through: told.
    row_id, folder = doomed_db.new_quicktest()
    assert _ingest(settings, artifacts.upload(folder, dumps(v1_document(2)))).outcome == "ingested"
    assert [p["quicktest_id"] for _, p in listener.received(1)] == [row_id]
    store.close_pools()  # before the scratch database is dropped


def test_the_function_refuses_a_bad_channel_as_a_retried_configuration_error(
    platform_db: PlatformDb, artifacts: Artifacts, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deployed with NOTIFY_CHANNEL=Training-Metrics, the function answers 500 (retried) and logs the setting's name."""
    import functions_framework
    from cloudevents.conversion import to_binary

    from tests.support.function_server import ROOT, finalize_event

    row_id, folder = platform_db.new_quicktest()
    monkeypatch.setenv("DATABASE_URL", platform_db.url)
    monkeypatch.setenv("NOTIFY_CHANNEL", "Training-Metrics")
    app = functions_framework.create_app("ingest_training_metrics", str(ROOT / "functions" / "main.py"), "cloudevent")
    headers, body = to_binary(finalize_event(artifacts.upload(folder, dumps(v1_document(1)))))
    capsys.readouterr()
    assert app.test_client().post("/", headers=headers, data=body).status_code == 500
    [entry] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "configuration error" in line]
    assert entry["severity"] == "ERROR" and "Invalid value for NOTIFY_CHANNEL" in entry["message"]
    assert platform_db.history(row_id) is None
