"""The storage client a batch shares across its worker threads, made once before the first item.

Example::

    client = make_storage_client(workers=8)   # UsageError: no credentials, or a bad STORAGE_EMULATOR_HOST
"""

from __future__ import annotations

import os
import re
from typing import Any

from metrics_ingest.batch.errors import UsageError
from metrics_ingest.batch.workers import MAX_WORKERS

CREDENTIALS_HELP = (
    "no Google Cloud credentials found. Provide them with one of:\n"
    "  gcloud auth application-default login                       # your own account\n"
    "  export GOOGLE_APPLICATION_CREDENTIALS=/path/to/key.json     # a service account key\n"
    "  export STORAGE_EMULATOR_HOST=http://127.0.0.1:9023          # a local emulator (`metrics-ingest dev` prints it)"
)


def make_storage_client(workers: int = 4) -> Any:
    """A storage client whose HTTP connection pool fits ``workers`` threads.

    Raises UsageError when ``STORAGE_EMULATOR_HOST`` is not a URL or when no
    credentials are found (the message says how to provide them).
    """
    import google.auth.exceptions
    from google.cloud import storage

    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator and not re.match(r"^https?://[^/]+", emulator):
        # The client would fail on every request with "No connection adapters".
        raise UsageError(
            f"STORAGE_EMULATOR_HOST must be a URL with its scheme, e.g. http://{emulator}; got {emulator!r}"
        )
    try:
        client = storage.Client()
    except google.auth.exceptions.DefaultCredentialsError:
        raise UsageError(CREDENTIALS_HELP) from None
    try:
        import requests.adapters

        # The default pool (10) would make threads wait for a connection and
        # log "Connection pool is full" warnings beyond 10 workers.
        # (urllib3 pre-fills the pool's queue to its size: bounded by MAX_WORKERS.)
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, min(workers, MAX_WORKERS) + 2))
        client._http.mount("https://", adapter)
        client._http.mount("http://", adapter)
    except AttributeError:  # a client without a requests session: keep its defaults
        pass
    return client
