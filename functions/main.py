"""Cloud Function (gen2): ingest training_metrics.json on GCS object finalize.

Deployed from this folder with entry point ``ingest_training_metrics`` and
``--trigger-event-filters=type=google.cloud.storage.object.v1.finalized``
(``--retry``). Returning acknowledges the event; raising makes the platform
redeliver it, which only transient faults do (see ``ingest.errors``).

Kept cheap to import (cold start): the GCS client, psycopg2 and jsonschema
load inside ``ingest`` on the first matching event.

Example (local)::

    functions-framework --target ingest_training_metrics --signature-type cloudevent --source functions/main.py
"""

from __future__ import annotations

import time

import functions_framework
from cloudevents.http.event import CloudEvent

from ingest.config import Settings
from ingest.errors import BadEvent
from ingest.logs import configure, log_event
from ingest.objects import ObjectRef
from ingest.pipeline import ingest_object, is_metrics_object

configure()


@functions_framework.cloud_event
def ingest_training_metrics(cloud_event: CloudEvent) -> None:
    """Handle one ``google.cloud.storage.object.v1.finalized`` event."""
    started = time.perf_counter()
    settings = Settings.from_env()
    event_id = cloud_event["id"]
    data = cloud_event.data
    # Model files and embeddings outnumber metrics files by thousands: return at once.
    name = data.get("name") if isinstance(data, dict) else None
    if isinstance(name, str) and not is_metrics_object(name, settings):
        return
    try:
        ref = ObjectRef.from_resource(data)
    except BadEvent as exc:
        # Redelivering a malformed event cannot fix it: acknowledge, loudly.
        log_event("ERROR", f"malformed event, acknowledged: {exc}", event_id=event_id, outcome="bad_event",
                  duration_ms=round((time.perf_counter() - started) * 1000, 3))
        return
    if not is_metrics_object(ref.name, settings):
        return
    ingest_object(ref, settings=settings, event_id=event_id)
