"""A delivery simulator: 1,000+ finalize events for 100+ rows, delivered the way Eventarc's
Pub/Sub subscription does (at least once, unordered, concurrent, redelivered with exponential
backoff up to K attempts, then dead-lettered), with faults injected, through the function's
HTTP app; then the reconciliation. The delivery rules must hold whatever the interleaving."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import heapq
import json
import random
import socket
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

import functions_framework
from ingest import db
from ingest.objects import ObjectRef
from ingest.pipeline import ingest_object
from metrics_ingest.localstack.emulator import Fault
from tests.support.documents import dumps, v1_document
from tests.support.function_server import FINALIZED, ROOT
from tests.support.platform_db import Artifacts, PlatformDb
from tests.support.postgres import query
from tests.support.wire import QueryCounter

ROWS, ROUNDS, K = 100, 10, 7
WORKERS = 12
# Pub/Sub's retry policy (10 s minimum, 600 s maximum backoff), one second as one millisecond.
MIN_BACKOFF_S, MAX_BACKOFF_S = 0.010, 0.600
OUTAGE_S = 0.25


class _Switchable(QueryCounter):
    """The TCP relay in front of PostgreSQL, which can play a database outage: every open
    connection cut, every new one closed at once, for a while."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.down = threading.Event()

    def outage(self, seconds: float) -> None:
        self.down.set()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        time.sleep(seconds)
        self.down.clear()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            server = self._upstream()
            self._sockets += [client, server]
            threading.Thread(target=self._client_to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()


@dataclasses.dataclass
class _Message:
    event: CloudEvent
    copies: int  # deliveries at least once: 1-3 even when acknowledged
    failures: int = 0
    deliveries: int = 0
    acked: bool = False
    dead: bool = False


class _Subscription:
    """Push delivery with Pub/Sub's semantics, scaled: a 2xx acknowledges, anything else is
    redelivered after min(MIN * 2^(n-1), MAX), up to K attempts, then goes to the dead letters."""

    def __init__(self, app: Any, seed: int) -> None:
        self._app = app
        self._random = random.Random(seed)
        self._queue: list[tuple[float, int, bool, _Message]] = []
        self._lock = threading.Condition()
        self._seq = 0
        self._busy = 0
        self.messages: list[_Message] = []
        self.dead_letters: list[_Message] = []

    def publish(self, messages: list[_Message]) -> None:
        with self._lock:
            self._random.shuffle(messages)
            for message in messages:
                self.messages.append(message)
                for _ in range(message.copies):  # copies are delivered even once one was acknowledged
                    self._push(time.monotonic() + self._random.uniform(0, 0.05), message, copy=True)
            self._lock.notify_all()

    def _push(self, due: float, message: _Message, *, copy: bool = False) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (due, self._seq, copy, message))

    def run(self, stop: threading.Event) -> None:
        client = self._app.test_client()
        while True:
            with self._lock:
                while not self._queue or self._queue[0][0] > time.monotonic():
                    if stop.is_set() and not self._queue and not self._busy:
                        return
                    self._lock.wait(0.005)
                _, _, copy, message = heapq.heappop(self._queue)
                if not copy and (message.acked or message.dead):
                    continue  # a retry of a message another copy settled
                self._busy += 1
                message.deliveries += 1
            headers, body = to_binary(message.event)
            status = client.post("/", headers=headers, data=body).status_code
            with self._lock:
                self._busy -= 1
                if 200 <= status < 300:
                    message.acked = True
                elif message.acked or message.dead:
                    pass  # a late copy failed: the message is settled already
                elif message.failures + 1 >= K:
                    message.failures += 1
                    message.dead = True
                    self.dead_letters.append(message)
                else:
                    message.failures += 1
                    delay = min(MIN_BACKOFF_S * 2 ** (message.failures - 1), MAX_BACKOFF_S)
                    self._push(time.monotonic() + delay, message)
                self._lock.notify_all()


def _event(resource: dict[str, Any], age: dt.timedelta) -> CloudEvent:
    return CloudEvent(
        {
            "id": uuid.uuid4().hex,
            "type": FINALIZED,
            "source": f"//storage.googleapis.com/projects/_/buckets/{resource['bucket']}",
            "subject": f"objects/{resource['name']}",
            "time": (dt.datetime.now(dt.timezone.utc) - age).isoformat().replace("+00:00", "Z"),
            "specversion": "1.0",
        },
        resource,
    )


@pytest.mark.timeout(240)
def test_simulated_deliveries_end_in_one_record_each_within_k_attempts(
    platform_db: PlatformDb, artifacts: Artifacts, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """1,000+ events for 100+ rows (10 generations each, copies of the same bytes, bad files, events 7 hours
    old), each delivered 1-3 times, shuffled, 12 at once, through a database outage and GCS 503s: every event
    id ends in exactly one record, no generation is written twice, no event needs more than K deliveries,
    only the event meant to exhaust K is dead-lettered, and after the reconciliation every row holds its newest
    generation."""
    rng = random.Random(19)
    with _Switchable(platform_db.url) as relay:
        monkeypatch.setenv("DATABASE_URL", relay.url)
        monkeypatch.setenv("GCS_TIMEOUT_SECONDS", "0.2")
        monkeypatch.setenv("DB_CONNECT_TIMEOUT_SECONDS", "1")
        app = functions_framework.create_app("ingest_training_metrics", str(ROOT / "functions" / "main.py"),
                                             "cloudevent")  # fmt: skip
        rows = [platform_db.new_quicktest() for _ in range(ROWS)]
        # Rows whose only event is old and whose object GCS refuses: expired, then reconciled.
        expiring = [platform_db.new_quicktest() for _ in range(5)]
        # One fresh event GCS refuses every time: meant to exhaust K and be dead-lettered.
        doomed = platform_db.new_quicktest()
        subscription = _Subscription(app, seed=19)
        stop = threading.Event()
        workers = [threading.Thread(target=subscription.run, args=(stop,)) for _ in range(WORKERS)]
        for worker in workers:
            worker.start()
        newest: dict[str, dict[str, Any]] = {}
        try:
            for round_ in range(ROUNDS):
                messages = []
                for i, (_row_id, folder) in enumerate(rows):
                    previous = newest.get(folder)
                    if round_ not in (0, ROUNDS - 1) and rng.random() < 0.05 and previous is not None:
                        data = previous["data"]  # a copy or a restore: same bytes, new generation
                    elif round_ != ROUNDS - 1 and rng.random() < 0.04:
                        data = dumps({"epochs": [0, 1], "loss": {"loss": [1.0]}})  # a bad file
                    else:
                        data = dumps(v1_document(round_ + 1 + i % 3, metrics=1))
                    resource = artifacts.upload(folder, data)
                    newest[folder] = {"resource": resource, "data": data}
                    if rng.random() < 0.03:
                        artifacts.emulator.inject(Fault("GET", folder + "/", status=503, times=2))
                    age = dt.timedelta(hours=7) if rng.random() < 0.1 else dt.timedelta(seconds=rng.uniform(0, 5))
                    messages.append(_Message(_event(resource, age), copies=rng.choice((1, 1, 2, 3))))
                if round_ == 4:
                    for _row_id, folder in expiring:
                        resource = artifacts.upload(folder, dumps(v1_document(2)))
                        artifacts.emulator.inject(Fault("GET", folder + "/", status=503, times=1_000_000))
                        messages.append(_Message(_event(resource, dt.timedelta(hours=7)), copies=1))
                    resource = artifacts.upload(doomed[1], dumps(v1_document(2)))
                    artifacts.emulator.inject(Fault("GET", doomed[1] + "/", status=503, times=1_000_000))
                    messages.append(_Message(_event(resource, dt.timedelta(0)), copies=1))
                subscription.publish(messages)
                if round_ == 3:
                    outage = threading.Thread(target=relay.outage, args=(OUTAGE_S,))
                    outage.start()
        finally:
            stop.set()
            for worker in workers:
                worker.join(180)
            outage.join()
        assert not any(w.is_alive() for w in workers)
        artifacts.emulator.clear_faults()
        monkeypatch.setenv("DATABASE_URL", platform_db.url)
        db.close_pools()

    messages = subscription.messages
    assert len(messages) >= 1000 and len({m.event["id"] for m in messages}) == len(messages)
    assert sum(m.deliveries for m in messages) > len(messages)  # duplicates and retries happened
    assert max(m.failures for m in messages if m.acked) + 1 <= K  # nothing acknowledged needed more than K
    assert [m.event["id"] for m in subscription.dead_letters] == [
        m.event["id"] for m in messages if m.event.data["name"].startswith(doomed[1] + "/")]  # fmt: skip
    assert any(m.failures for m in messages if m.acked)  # the outage and the 503s were felt, and survived

    records = query(
        platform_db.url,
        "SELECT event_id, object_name, generation, outcome FROM training_metrics_ingestions WHERE event_id = ANY(%s)",
        ([m.event["id"] for m in messages],),
    )
    per_event = Counter(r[0] for r in records)
    settled = {m.event["id"] for m in messages if m.acked}
    # Expired while the database was down too: acknowledged, and logged at ERROR instead of recorded.
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    unrecorded = {e["event_id"] for e in lines if e.get("outcome") == "expired" and e["severity"] == "ERROR"}
    old = {m.event["id"] for m in messages if m.event["time"] < (dt.datetime.now(dt.timezone.utc)
                                                                  - dt.timedelta(hours=6)).isoformat()}  # fmt: skip
    assert unrecorded <= old
    # Every acknowledged event has exactly one record, but one expired while the database was down as well
    # (a copy may have been recorded by another delivery); no record without an acknowledgement.
    assert set(per_event) <= settled and settled - set(per_event) <= unrecorded
    assert set(per_event.values()) == {1}
    outcomes = Counter(r[3] for r in records)
    assert {"ingested", "superseded", "expired"} <= set(outcomes) <= {
        "ingested", "superseded", "expired", "duplicate", "unchanged", "rejected"}, outcomes
    expired_ids = {r[0] for r in records if r[3] == "expired"}
    assert all(m.event["id"] in expired_ids for m in messages
               if any(m.event.data["name"].startswith(f + "/") for _, f in expiring))  # fmt: skip
    ingested = Counter((r[1], r[2]) for r in records if r[3] == "ingested")
    assert set(ingested.values()) == {1}  # no generation written twice

    # The nightly reconciliation: every object's live generation through the same code path.
    for i, (_row_id, folder) in enumerate([*rows, *expiring, doomed]):
        blob = artifacts.bucket.get_blob(f"{folder}/training_metrics.json")
        resource = {"bucket": blob.bucket.name, "name": blob.name, "generation": str(blob.generation),
                    "size": str(blob.size), "md5Hash": blob.md5_hash, "crc32c": blob.crc32c}  # fmt: skip
        result = ingest_object(ObjectRef.from_resource(resource), settings=platform_db.settings(),
                               event_id=f"replay:simulator:{i}")  # fmt: skip
        assert result.outcome in ("ingested", "duplicate", "unchanged"), result
    for row_id, folder in [*rows, *expiring, doomed]:
        history = platform_db.history(row_id)
        live = newest[folder]["resource"]["generation"] if folder in newest else None
        assert history is not None
        if live is not None:  # the main rows: their newest generation, whose bytes are always new
            assert history["source"]["generation"] == live, folder
