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

from ingest.errors import Gone, IngestError, Rejected, TransientError
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

    def getvalue(self) -> bytearray:
        if self.gzip and self._inflater is not None and not self._inflater.eof:
            raise _Corrupt("the gzip stream is truncated")
        return self._buffer  # not copied: the parser reads a bytearray as well as bytes

    # download_to_file only writes; these keep file-like probes happy.
    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self.raw_bytes


class _Corrupt(Exception):
    pass


def download(ref: ObjectRef, settings: Settings, *, gcs: Any = None) -> bytearray:
    """The content of ``ref``'s generation (inflated when gzip), at most ``max_metrics_bytes``.

    Raises:
        Rejected: larger than the cap (raw or inflated), a corrupt gzip stream,
            or a GCS 4xx that no retry can change (see :func:`classify_gcs_error`).
        Gone: that generation does not exist any more (replaced or deleted).
        TransientError: GCS answered 5xx / 408 / 429 / 401 / 403, timed out,
            the connection or the credentials' token fetch failed, or the
            checksum did not match.
    """
    from google.cloud.storage.retry import DEFAULT_RETRY

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
    except Exception as exc:
        error = classify_gcs_error(exc, ref)
        if error is None:
            raise  # not a GCS failure: ingest_object logs it and the event is retried
        raise error from exc


# Retrying cannot change these answers... except the two that an operator fixes
# (the function's service account lacks storage.objects.get, or its token is
# refused): retried until IAM is fixed, so no event is lost meanwhile.
_TRANSIENT_STATUS = frozenset({401, 403, 408, 429})


def classify_gcs_error(exc: BaseException, ref: ObjectRef) -> IngestError | None:
    """What a failed read of ``ref`` means; None when ``exc`` is not a GCS/transport failure.

    * 404: :class:`Gone` (the generation was replaced or deleted: recorded as superseded);
    * 5xx, 408, 429, 401, 403, timeouts, connection failures, any credentials
      error (token fetch from the metadata server failed or was refused), a
      checksum mismatch: :class:`TransientError` (retried);
    * 416 (a Range on an empty object): :class:`Rejected`, the file is empty;
    * any other 4xx: :class:`Rejected`, with the status in the reason.

    Example::

        classify_gcs_error(google.api_core.exceptions.Forbidden("no"), ref)   # TransientError(...)
    """
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc
    from google.cloud.storage.exceptions import DataCorruption
    from requests import exceptions as rexc

    what = f"GCS read of {ref.uri} failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, gexc.NotFound):
        return Gone(f"generation {ref.generation} of gs://{ref.bucket}/{ref.name} no longer exists")
    if isinstance(exc, gexc.GoogleAPICallError):
        code = exc.code
        if code is None or code >= 500 or code in _TRANSIENT_STATUS:
            if code in (401, 403):
                what += " (check that the function's service account may read the bucket: storage.objects.get)"
            return TransientError(what)
        if code == 416:  # only a Range starting at byte 0 is sent: the object is empty
            return Rejected(f"the file is empty (GCS answered HTTP 416 to a read from byte 0 of {ref.uri})")
        return Rejected(f"GCS refused the read with HTTP {code}: {exc.message}")
    if isinstance(exc, auth_exc.GoogleAuthError):
        # The token fetch failed (metadata server unreachable: TransportError),
        # or was refused, e.g. after a 401 (RefreshError): fixed by time or by an operator.
        return TransientError(what + " (credentials: check the function's service account)")
    transient = (
        gexc.RetryError,  # the in-process retries ran out (5xx, 429, connection errors)
        rexc.RequestException,
        ConnectionError,
        TimeoutError,
        DataCorruption,  # checksum mismatch: a second read may well succeed
    )
    if isinstance(exc, transient):
        return TransientError(what)
    return None
