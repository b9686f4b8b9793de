"""Bounded download of exactly one object generation.

The client is created on first use and shared by every thread (the Cloud
Function keeps it across invocations; ``metrics-ingest replay`` shares it
across workers). Bytes are streamed into a capped buffer: at most
``max_bytes`` are ever held, and a gzip object is inflated as it arrives with
an output cap, so a compression bomb is rejected in bounded memory.

Example::

    data = download(ObjectRef("b", "quick_tests/42/training_metrics.json", 17), settings)
"""

from __future__ import annotations

import os
import threading
import zlib
from typing import TYPE_CHECKING, Any

from ingest.errors import Gone, Rejected, TransientError
from ingest.objects import ObjectRef

if TYPE_CHECKING:
    from google.cloud import storage

    from ingest.config import Settings

_GZIP_MAGIC = b"\x1f\x8b"
_clients: dict[str | None, Any] = {}
_clients_lock = threading.Lock()


def client() -> storage.Client:
    """The process's shared storage client (one per ``STORAGE_EMULATOR_HOST``)."""
    key = os.environ.get("STORAGE_EMULATOR_HOST")
    found = _clients.get(key)
    if found is not None:
        return found
    with _clients_lock:
        if key not in _clients:
            from google.cloud import storage  # ~0.5 s of imports: only when a file matches

            _clients[key] = storage.Client()
        return _clients[key]


class _TooLarge(Exception):
    pass


class _CappedSink:
    """A write-only file that keeps at most ``cap`` bytes of (inflated) content."""

    def __init__(self, cap: int, gzip: bool | None) -> None:
        self.cap = cap
        self.gzip = gzip  # None: decide from the first bytes
        self.raw_bytes = 0
        self._buffer = bytearray()
        self._inflater: Any = None

    def write(self, chunk: bytes) -> int:
        if not chunk:
            return 0
        if self.gzip is None:
            # Objects uploaded gzipped without Content-Encoding still start with
            # the gzip magic; JSON never does.
            self.gzip = bytes(chunk[:2]) == _GZIP_MAGIC
        self.raw_bytes += len(chunk)
        if not self.gzip:
            if len(self._buffer) + len(chunk) > self.cap:
                raise _TooLarge(f"the object is larger than MAX_METRICS_BYTES ({self.cap} bytes)")
            self._buffer += chunk
            return len(chunk)
        if self._inflater is None:
            self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        if self._inflater.eof:
            raise _Corrupt("the gzip stream has trailing data after its end")
        room = self.cap - len(self._buffer)
        try:
            out = self._inflater.decompress(chunk, room + 1)
        except zlib.error as exc:
            raise _Corrupt(f"the gzip stream is corrupt ({exc})") from None
        if len(out) > room or self._inflater.unconsumed_tail:
            raise _TooLarge(
                f"the gzip object inflates to more than MAX_METRICS_BYTES ({self.cap} bytes; compression bomb?)"
            )
        self._buffer += out
        if self._inflater.unused_data:
            raise _Corrupt("the gzip stream has trailing data after its end")
        return len(chunk)

    def getvalue(self) -> bytes:
        if self.gzip and self._inflater is not None and not self._inflater.eof:
            raise _Corrupt("the gzip stream is truncated")
        return bytes(self._buffer)

    # download_to_file only writes; these keep file-like probes happy.
    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self.raw_bytes


class _Corrupt(Exception):
    pass


def download(ref: ObjectRef, settings: Settings, *, gcs: Any = None) -> bytes:
    """The content of ``ref``'s generation (inflated when gzip), at most ``max_metrics_bytes``.

    Raises:
        Rejected: larger than the cap (raw or inflated), or a corrupt gzip stream.
        Gone: that generation does not exist any more (replaced or deleted).
        TransientError: GCS answered 5xx / 429 / an auth error, or timed out.
    """
    from google.api_core import exceptions as gexc
    from google.cloud.storage.retry import DEFAULT_RETRY
    from requests import exceptions as rexc

    gcs = gcs or client()
    blob = gcs.bucket(ref.bucket).blob(ref.name, generation=ref.generation)
    gzip = True if (ref.content_encoding or "").lower() == "gzip" else None
    sink = _CappedSink(settings.max_metrics_bytes, gzip)
    # A short in-process retry absorbs blips; a longer outage raises, and the
    # platform redelivers the event with backoff.
    retry = DEFAULT_RETRY.with_deadline(settings.gcs_timeout).with_delay(initial=0.1, maximum=1.0)
    # The Range keeps the transfer bounded even when the event carried no size.
    end = settings.max_metrics_bytes if ref.size is None or ref.size > settings.max_metrics_bytes else None
    try:
        blob.download_to_file(
            sink,
            raw_download=True,  # the stored bytes: we inflate gzip ourselves, capped
            start=0 if end is not None else None,
            end=end,
            checksum=None if end is not None else "auto",
            timeout=(settings.gcs_timeout, settings.gcs_timeout),
            retry=retry,
        )
        return sink.getvalue()
    except _TooLarge as exc:
        raise Rejected(str(exc)) from None
    except _Corrupt as exc:
        raise Rejected(str(exc)) from None
    except gexc.NotFound:
        raise Gone(f"generation {ref.generation} of gs://{ref.bucket}/{ref.name} no longer exists") from None
    except (gexc.GoogleAPICallError, gexc.RetryError, rexc.RequestException, ConnectionError) as exc:
        raise TransientError(f"GCS read of {ref.uri} failed: {type(exc).__name__}: {exc}") from exc
