"""A failed save's second copy, under Vertex AI's ``AIP_CHECKPOINT_DIR``: it outlives the container.

The local fallback copy is on the container's disk, gone with the job; Vertex AI sets
``AIP_CHECKPOINT_DIR`` to a ``gs://`` prefix that it also mounts with Cloud Storage FUSE
under ``/gcs/BUCKET/...``. The copy goes to
``$AIP_CHECKPOINT_DIR/trainer_callbacks/BUCKET/OBJECT`` (``.../local/ABSOLUTE/PATH`` for
a local destination): through the mount when the job has it, else uploaded.

Example::

    keep_durably(store, data)   # its path or URI, or None (unset, or it failed too: logged)
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger("trainer_callbacks")


def durable_copy_target(store: Any) -> str | None:
    """Where ``store``'s failed-save copy goes under ``AIP_CHECKPOINT_DIR`` (None when unset)."""
    root = store.durable_dir
    if not root:
        return None
    relative = f"{store.bucket_name}/{store.object_name}" if store.is_gcs else "local" + os.path.abspath(store.uri)
    target = f"{root.rstrip('/')}/trainer_callbacks/{relative}"
    if target.startswith("gs://") and os.path.isdir("/gcs/" + target[len("gs://"):].partition("/")[0]):
        return "/gcs/" + target[len("gs://"):]
    return target


def keep_durably(store: Any, data: bytes) -> str | None:
    """Write the copy; its path or URI, or None (unset, or that failed too: logged, the local copy stands)."""
    from trainer_callbacks.storage import RetryPolicy, atomic_write

    target = durable_copy_target(store)
    if target is None:
        return None
    try:
        if target.startswith("gs://"):
            bucket, _, name = target[len("gs://"):].partition("/")
            quick = RetryPolicy(initial=0.5, maximum=2.0, deadline=10.0, timeout=10.0)
            store.client().bucket(bucket).blob(name).upload_from_string(
                data, content_type="application/json", retry=quick.api_core_retry(), timeout=quick.timeout
            )
        else:
            atomic_write(target, data)
    except Exception as error:  # noqa: BLE001 - the local fallback copy still stands; this one is logged
        logger.error("could not write the copy under AIP_CHECKPOINT_DIR %s: %s", target, error)
        return None
    return target
