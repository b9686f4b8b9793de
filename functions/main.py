"""Cloud Function (gen2): ingest training_metrics.json on GCS object finalize.

Deployed from this folder with entry point ``ingest_training_metrics`` and
``--trigger-event-filters=type=google.cloud.storage.object.v1.finalized``
(``--retry``). Returning acknowledges the event; raising makes the platform
redeliver it, which only transient faults do (see ``ingest.errors``).

Kept cheap to import (cold start): the GCS client, psycopg2 and jsonschema-rs
load inside ``ingest`` on the first matching event.

Example (local)::

    functions-framework --target ingest_training_metrics --signature-type cloudevent --source functions/main.py
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping

import functions_framework
from cloudevents.http.event import CloudEvent

from ingest.config import Settings, check_metrics_filename
from ingest.errors import BadEvent, printable
from ingest.logs import configure, log_event
from ingest.objects import ObjectRef
from ingest.pipeline import ingest_object, is_metrics_object

configure()

FINALIZED = "google.cloud.storage.object.v1.finalized"


@functions_framework.cloud_event
def ingest_training_metrics(cloud_event: CloudEvent) -> None:
    """Handle one ``google.cloud.storage.object.v1.finalized`` event."""
    started = time.perf_counter()
    data = cloud_event.data
    event_id = cloud_event["id"]
    if cloud_event["type"] != FINALIZED:
        # A trigger on another event type (metadataUpdated, deleted, archived)
        # is a deployment mistake: never ingest from it, never retry it.
        log_event("WARNING", f"event type {printable(str(cloud_event['type']), 100)!r} ignored, acknowledged",
                  event_id=event_id, outcome="ignored_event_type", **_event_fields(data))
        return
    try:
        # Model files and embeddings outnumber metrics files by thousands: return
        # at once, before even reading the rest of the configuration. The name
        # filter's own setting is checked first: a bad one would match nothing
        # and acknowledge every upload unread.
        filename = check_metrics_filename()
        name = data.get("name") if isinstance(data, Mapping) else None
        if isinstance(name, str) and not is_metrics_object(name, filename):
            return
        settings = Settings.from_env()
    except ValueError as exc:
        # A deployment's bad variable: retried until an operator fixes it.
        # (The messages name the variable and never quote DATABASE_URL.)
        log_event("ERROR", f"configuration error, the event will be retried: {exc}", event_id=event_id,
                  outcome="retry", **_event_fields(data))
        raise
    try:
        ref = ObjectRef.from_resource(data)
    except BadEvent as exc:
        # Redelivering a malformed event cannot fix it, and there is no valid
        # generation to record: acknowledge, loudly.
        log_event("ERROR", f"malformed event, acknowledged: {exc}", event_id=event_id, outcome="bad_event",
                  **_event_fields(data), duration_ms=round((time.perf_counter() - started) * 1000, 3))
        return
    ingest_object(ref, settings=settings, event_id=event_id, event_time=_event_time(cloud_event))


def _event_time(cloud_event: CloudEvent) -> dt.datetime | None:
    """The CloudEvent's ``time`` (RFC 3339), or None when absent or unreadable: such
    an event is retried as before, never expired on a guess."""
    raw = cloud_event.get("time")
    if not isinstance(raw, str):
        return None
    try:
        return dt.datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None


def _event_fields(data: object) -> dict[str, str | None]:
    """bucket, object and generation as the event gave them (clipped, escaped), for the log."""
    if not isinstance(data, Mapping):
        return {"bucket": None, "object": None, "generation": None}

    def raw(key: str) -> str | None:
        value = data.get(key)
        return None if value is None else printable(value if isinstance(value, str) else repr(value), 300)

    bucket, name = raw("bucket"), raw("name")
    where = f"gs://{bucket}/{name}" if isinstance(data.get("bucket"), str) and isinstance(data.get("name"), str) else name
    return {"bucket": bucket, "object": where, "generation": raw("generation")}
