"""The Eventarc stand-in: emulator uploads -> finalize CloudEvents -> the function.

The GCS emulator has no notifications. ``GcsEmulator`` calls ``on_finalize``
with each created object's resource *under its storage lock*, so
``EventBridge.submit`` only queues the resource; delivery threads then POST
the CloudEvent Eventarc would send (binary content mode, same type, source,
subject) to the function and, like Eventarc, redeliver the same event (same
id) with backoff while the answer is not 2xx/102. Retries are bounded here
(Eventarc keeps going for 24 hours; a laptop should not).

Example::

    bridge = EventBridge("http://127.0.0.1:8080/").start()
    emulator = GcsEmulator(on_finalize=bridge.submit).start()
    ...
    bridge.stop()
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import queue
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

FINALIZED = "google.cloud.storage.object.v1.finalized"

log = logging.getLogger(__name__)


def finalize_event(resource: Mapping[str, Any], event_id: str | None = None) -> CloudEvent:
    """The CloudEvent Eventarc sends for a finalized object (data = the resource)."""
    attributes = {
        "type": FINALIZED,
        "source": f"//storage.googleapis.com/projects/_/buckets/{resource['bucket']}",
        "subject": f"objects/{resource['name']}",
        "id": event_id or uuid.uuid4().hex,
        "datacontenttype": "application/json",
    }
    if resource.get("updated") or resource.get("timeCreated"):
        attributes["time"] = resource.get("updated") or resource.get("timeCreated")
    return CloudEvent(attributes, dict(resource))


class DeliveryRefused(Exception):
    """The function answered something other than 2xx/102 (Eventarc redelivers)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One event's delivery: its id, the object, the final status and tries.

    Example::

        delivery = bridge.deliver(resource)
        delivery.ok, delivery.status, delivery.attempts   # True, 204, 1
    """

    event_id: str
    bucket: str
    name: str
    generation: str
    status: int | None
    attempts: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class EventBridge:
    """Queue finalize notifications and deliver them as CloudEvents.

    Args:
        function_url: where the function listens (``http://host:port/``).
        threads: concurrent deliveries (int, default 4; Eventarc is concurrent too).
        attempts: tries per event before giving up (int, default 6).
        backoff: first retry wait in seconds, doubled each try up to 5 s (default 0.2).
        timeout: HTTP timeout per try in seconds (default 60).

    Example::

        bridge = EventBridge(function_url).start()
        bridge.submit({"bucket": "b", "name": "quick_tests/1/training_metrics.json", "generation": "1"})
        bridge.join()          # every queued event delivered (or given up)
        bridge.stop()
    """

    def __init__(
        self,
        function_url: str,
        *,
        threads: int = 4,
        attempts: int = 6,
        backoff: float = 0.2,
        timeout: float = 60.0,
    ) -> None:
        if threads < 1:
            raise ValueError(f"Invalid value for argument `threads`. Received: threads={threads}. Expected >= 1.")
        if attempts < 1:
            raise ValueError(f"Invalid value for argument `attempts`. Received: attempts={attempts}. Expected >= 1.")
        self.function_url = function_url
        self.threads = threads
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        # The latest deliveries only: `dev` may run for days.
        self.deliveries: collections.deque[Delivery] = collections.deque(maxlen=1000)
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._local = threading.local()  # one requests.Session per delivery thread
        self._lock = threading.Lock()

    def start(self) -> EventBridge:
        for index in range(self.threads):
            thread = threading.Thread(target=self._run, name=f"event-bridge-{index}", daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def submit(self, resource: Mapping[str, Any]) -> None:
        """Queue one finalized object (safe under the emulator's lock: never blocks)."""
        self._queue.put(dict(resource))

    def join(self) -> None:
        """Wait until every queued event has been delivered or given up."""
        self._queue.join()

    def stop(self) -> None:
        for _ in self._workers:
            self._queue.put(None)
        for thread in self._workers:
            thread.join(timeout=10)
        self._workers.clear()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def deliver(self, resource: Mapping[str, Any], event_id: str | None = None) -> Delivery:
        """POST one finalize event now (retrying like Eventarc); returns the outcome."""
        event = finalize_event(resource, event_id)
        headers, body = to_binary(event)
        attempts = 0

        def post() -> int:
            nonlocal attempts
            attempts += 1
            response = self._session().post(self.function_url, headers=headers, data=body, timeout=self.timeout)
            if not (200 <= response.status_code < 300 or response.status_code == 102):
                raise DeliveryRefused(response.status_code, response.text)
            return response.status_code

        retrying = Retrying(
            retry=retry_if_exception_type((DeliveryRefused, requests.ConnectionError, requests.Timeout)),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff, max=5),
        )
        common = {
            "event_id": event["id"],
            "bucket": str(resource.get("bucket")),
            "name": str(resource.get("name")),
            "generation": str(resource.get("generation")),
        }
        try:
            status = retrying(post)
            delivery = Delivery(status=status, attempts=attempts, **common)
        except RetryError as exc:
            error = exc.last_attempt.exception()
            status = error.status if isinstance(error, DeliveryRefused) else None
            delivery = Delivery(status=status, attempts=attempts, error=str(error), **common)
            log.warning(
                json.dumps(
                    {"severity": "WARNING", "message": "event bridge gave up", "error": str(error), **common}
                )
            )
        with self._lock:
            self.deliveries.append(delivery)
        return delivery

    def _run(self) -> None:
        while True:
            resource = self._queue.get()
            try:
                if resource is None:
                    return
                self.deliver(resource)
            except Exception:  # a delivery thread must survive one bad resource; it is logged
                log.exception("event bridge: cannot deliver %r", resource)
            finally:
                self._queue.task_done()
