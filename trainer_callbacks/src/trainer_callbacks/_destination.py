"""The one check, when training starts, that the destination can be written; it writes nothing.

- ``gs://BUCKET/...``: ``testIamPermissions`` on the bucket for
  ``storage.objects.create`` (and ``storage.objects.delete``, which replacing an
  object needs): a missing bucket answers 404, missing credentials fail to load,
  a missing permission is absent from the answer. No probe object is written (it
  would fire the ingestion function).
- a local folder: the folder, or its nearest existing parent, is a folder this
  process may write into, on a file system that is not mounted read-only.

Example::

    check_writable(store)   # DestinationError naming the destination and the reason, or None
"""

from __future__ import annotations

import os
from typing import Any

GCS_PERMISSIONS = ("storage.objects.create", "storage.objects.delete")


class DestinationError(RuntimeError):
    """The destination cannot be written; raised when training starts, before the first epoch."""


def _local_problem(folder: str) -> str | None:
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return "no part of it exists"
        path = parent
    if not os.path.isdir(path):
        return f"{path} is a file, not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"this process may not write into {path}"
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return f"{path} is on a read-only file system"
    return None


def check_writable(store: Any) -> None:
    """Raise :class:`DestinationError` if ``store`` (a MetricsStore) cannot be written."""
    if not store.is_gcs:
        problem = _local_problem(store.output_path)
        if problem:
            raise DestinationError(f"the metrics destination {store.uri} cannot be written: {problem} (check_destination=False skips this check)")
        return
    from google.api_core import exceptions

    from trainer_callbacks.storage import RetryPolicy

    policy = RetryPolicy(initial=1.0, maximum=8.0, deadline=30.0, timeout=20.0)  # a check, not a save: bounded
    try:
        bucket = store.client().bucket(store.bucket_name)
        granted = set(bucket.test_iam_permissions(list(GCS_PERMISSIONS), retry=policy.api_core_retry(), timeout=policy.timeout))
    except exceptions.NotFound:
        raise DestinationError(f"the metrics destination {store.uri} cannot be written: bucket {store.bucket_name!r} does not exist") from None
    except Exception as error:  # noqa: BLE001 - credentials, network, 403: all mean the run could not save; named and raised
        raise DestinationError(
            f"the metrics destination {store.uri} cannot be checked: {type(error).__name__}: {error} "
            "(credentials? network? check_destination=False skips this check)"
        ) from error
    missing = [permission for permission in GCS_PERMISSIONS if permission not in granted]
    if missing:
        raise DestinationError(
            f"the metrics destination {store.uri} cannot be written: these credentials lack {', '.join(missing)} "
            f"on bucket {store.bucket_name!r} (grant roles/storage.objectAdmin or objectUser on it)"
        )
