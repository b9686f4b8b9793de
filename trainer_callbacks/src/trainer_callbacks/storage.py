"""One place for file access: a local folder or a ``gs://bucket/folder``.

Local writes are atomic (a temporary file in the same folder, fsync, then
``os.replace``), so a reader never sees half a document. A GCS write is one
upload of one object with an ``if_generation_match`` precondition: GCS then
refuses to overwrite a version written by someone else since our last save, and
the client's retry (exponential backoff on 429/5xx/connection errors) is safe to
apply because a repeated request cannot clobber anything. When the last try
fails (or a local write does), the bytes go to a local fallback file and
:class:`MetricsSaveError` (:class:`MetricsUploadError` for an upload) names it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import os
import tempfile
from typing import Any, NoReturn

from trainer_callbacks._checkpoint_copy import keep_durably
from trainer_callbacks._local_files import atomic_write

__all__ = ["DEFAULT_FILENAME", "MetricsSaveError", "MetricsStore", "MetricsUploadError", "RetryPolicy", "atomic_write"]

logger = logging.getLogger("trainer_callbacks")

DEFAULT_FILENAME = "training_metrics.json"


class MetricsSaveError(RuntimeError):
    """Saving the document failed; what could be kept is at ``fallback_path`` (None if even that failed).

    Raised whatever went wrong: the upload (:class:`MetricsUploadError`), the
    local write, turning the document into JSON, or reading the file a resumed
    run continues. The message names the local copy; the original error is the
    ``__cause__``.

    ``generation`` is the object generation a failed upload created anyway, when
    GCS said so (a checksum mismatch: the server's bytes are not the ones sent;
    the client then tries to delete that version), so the next save may replace
    exactly that generation. Otherwise None.

    Example::

        try:
            collector.save()
        except MetricsSaveError as error:
            print("metrics kept at", error.fallback_path)
    """

    def __init__(
        self, message: str, *, uri: str, fallback_path: str | None, generation: int | None = None, copies: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.uri = uri
        self.fallback_path = fallback_path
        self.generation = generation
        # Every copy written: the local fallback, and the one under AIP_CHECKPOINT_DIR when it is set.
        self.copies = list(copies) if copies is not None else ([fallback_path] if fallback_path else [])


class MetricsUploadError(MetricsSaveError):
    """The upload to GCS failed (after retries, or at once for a permanent error); see :class:`MetricsSaveError`."""


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Backoff for GCS uploads (google.api_core exponential backoff with jitter).

    Transient errors (429, 5xx, connection errors and timeouts) are retried,
    waiting ``initial`` seconds, then ``multiplier`` times longer each try (at
    most ``maximum``), until ``deadline`` seconds have passed since the first
    try; each request may take up to ``timeout`` seconds. Permanent errors (403,
    412...) are not retried. A save that fails for good leaves the document on
    local disk and raises :class:`MetricsUploadError`.

    Args:
        initial: first wait in seconds (float, default 1.0).
        maximum: longest single wait in seconds (float, default 32.0).
        multiplier: growth of the wait per try (float, default 2.0).
        deadline: give up after this many seconds in all (float, default 300.0).
        timeout: per-request timeout in seconds (float, default 60.0).

    Example::

        from trainer_callbacks import MetricsCollector, RetryPolicy

        # The final save tries for up to 10 minutes; periodic flushes (which run
        # in the background) give up after 30 seconds and wait for the next one.
        collector = MetricsCollector(
            "gs://ml-artifacts/quick_tests/42",
            flush_every=600,
            retry=RetryPolicy(deadline=600),
            flush_retry=RetryPolicy(maximum=8, deadline=30, timeout=20),
        )
    """

    initial: float = 1.0
    maximum: float = 32.0
    multiplier: float = 2.0
    deadline: float = 300.0
    timeout: float = 60.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not value > 0:
                raise ValueError(
                    f"Invalid value for argument `{field.name}`. Received: {field.name}={value!r}. "
                    "Expected a positive number of seconds."
                )

    def api_core_retry(self) -> Any:
        """This policy as a ``google.api_core.retry.Retry`` (the storage client's default predicate)."""
        from google.cloud.storage.retry import DEFAULT_RETRY

        return DEFAULT_RETRY.with_delay(
            initial=self.initial, maximum=self.maximum, multiplier=self.multiplier
        ).with_timeout(self.deadline)


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")`` (the folder may be empty)."""
    rest = uri[len("gs://"):]
    bucket, _, folder = rest.partition("/")
    if not bucket:
        raise ValueError(f"Invalid value for argument `output_path`. Received: output_path={uri!r}. Expected gs://BUCKET[/FOLDER].")
    return bucket, folder.strip("/")


class MetricsStore:
    """Reads and writes the metrics file in one folder, local or ``gs://``.

    Args:
        output_path: a local folder or ``gs://BUCKET/FOLDER``.
        filename: the object's base name (default ``training_metrics.json``).
        retry: upload backoff (default :class:`RetryPolicy()`).
        fallback_dir: where a document that could not be uploaded is written
            (default ``$TMPDIR/trainer_callbacks``).
        durable_dir: where a second copy goes then (``gs://`` or a path; Vertex AI's
            ``AIP_CHECKPOINT_DIR``); None: none.
        client: a ``google.cloud.storage.Client``; by default one is created at
            the first GCS access (never earlier: creating it looks up credentials,
            which can be a network call).

    Example::

        store = MetricsStore("gs://ml-artifacts/quick_tests/42")
        generation = store.write(b"{}", if_generation_match=0)
    """

    def __init__(
        self,
        output_path: str | os.PathLike[str],
        *,
        filename: str = DEFAULT_FILENAME,
        retry: RetryPolicy | None = None,
        fallback_dir: str | os.PathLike[str] | None = None,
        client: Any = None,
        durable_dir: str | None = None,
    ) -> None:
        from trainer_callbacks._arguments import destination

        output_path = destination(output_path)
        if not filename or "/" in filename:
            raise ValueError(f"Invalid value for argument `filename`. Received: filename={filename!r}. Expected a base name.")
        self.output_path = output_path
        self.filename = filename
        self.retry = retry or RetryPolicy()
        self.fallback_dir = os.fspath(fallback_dir) if fallback_dir is not None else os.path.join(tempfile.gettempdir(), "trainer_callbacks")
        self._client = client
        self.durable_dir = durable_dir  # Vertex AI's AIP_CHECKPOINT_DIR: a failed save's copy there outlives the container
        self.is_gcs = output_path.startswith("gs://")
        if self.is_gcs:
            self.bucket_name, folder = split_gcs_uri(output_path)
            self.object_name = f"{folder}/{filename}" if folder else filename
            self.uri = f"gs://{self.bucket_name}/{self.object_name}"
        else:
            self.uri = os.path.join(output_path, filename)

    # -- GCS -------------------------------------------------------------
    def client(self) -> Any:
        """The ``google.cloud.storage.Client``, created at first use (it looks up credentials)."""
        if self._client is None:
            from google.cloud import storage

            self._client = storage.Client()
        return self._client

    def _blob(self) -> Any:
        return self.client().bucket(self.bucket_name).blob(self.object_name)

    def read(self) -> tuple[bytes, int | None] | None:
        """The current file and its generation (None locally), or None if there is none."""
        if not self.is_gcs:
            try:
                with open(self.uri, "rb") as f:
                    return f.read(), None
            except FileNotFoundError:
                return None
        from google.api_core import exceptions

        # Learn the live generation, then read exactly that generation: the pair
        # is consistent even if another writer replaces the object in between
        # (the pinned read is then a 404 and we look again).
        for _ in range(3):
            blob = self._blob()
            try:
                blob.reload(retry=self.retry.api_core_retry(), timeout=self.retry.timeout)
            except exceptions.NotFound:
                return None
            generation = int(blob.generation)
            pinned = self._client.bucket(self.bucket_name).blob(self.object_name, generation=generation)
            try:
                return pinned.download_as_bytes(retry=self.retry.api_core_retry(), timeout=self.retry.timeout), generation
            except exceptions.NotFound:
                continue
        raise RuntimeError(f"{self.uri} kept changing while it was being read; is another job writing it?")

    def write(self, data: bytes, *, if_generation_match: int | None = None, retry: RetryPolicy | None = None) -> int | None:
        """Write the document; returns the new GCS generation (None locally).

        ``if_generation_match``: the generation we last wrote or read (0: the object
        must not exist yet; None: learn the live generation first, then write over it).
        ``retry``: backoff for this write (default: the store's ``retry``).

        Raises:
            MetricsUploadError: the upload failed after retries (transient errors) or
                at once (permanent ones, including another writer's newer version);
                the message names the local copy.
            MetricsSaveError: a local write failed; the message names the fallback copy.
        """
        if not self.is_gcs:
            try:
                atomic_write(self.uri, data)
            except OSError as error:
                self.keep_locally(data, error, f"could not write {self.uri}")
            return None
        policy = retry or self.retry
        try:
            blob = self._blob()
            if if_generation_match is None:
                if_generation_match = self._live_generation(blob, policy)
            return self._upload(blob, data, if_generation_match, policy)
        except Exception as error:  # noqa: BLE001 - deliberate: see below; re-raised as MetricsUploadError
            # Any failure, not only the API's own errors: a checksum mismatch
            # (DataCorruption), a credentials refresh (RefreshError, TransportError),
            # a connection error, or something no one foresaw. The promise is that
            # the document survives on local disk whatever went wrong, so every
            # exception ends in the fallback copy and MetricsUploadError (chained).
            self.keep_locally(data, error, f"could not upload {self.uri}", _created_generation(error), MetricsUploadError)

    def _live_generation(self, blob: Any, policy: RetryPolicy) -> int:
        from google.api_core import exceptions

        try:
            blob.reload(retry=policy.api_core_retry(), timeout=policy.timeout)
        except exceptions.NotFound:
            return 0
        return int(blob.generation)

    def _upload(self, blob: Any, data: bytes, generation: int, policy: RetryPolicy) -> int:
        from google.api_core import exceptions

        try:
            blob.upload_from_string(
                data,
                content_type="application/json",
                if_generation_match=generation,
                retry=policy.api_core_retry(),
                timeout=policy.timeout,
            )
        except exceptions.PreconditionFailed as refused:
            live = self._blob()
            try:
                live.reload(retry=policy.api_core_retry(), timeout=policy.timeout)
            except exceptions.NotFound:
                # The object is gone: after a checksum mismatch the client deletes
                # the version it just created, and the precondition still names it.
                # Where nothing exists, writing clobbers no one's version.
                if generation == 0:
                    raise refused from None
                return self._upload(self._blob(), data, 0, policy)
            # A request that succeeded but whose answer was lost is retried and then
            # refused: if the live object holds exactly our bytes, the save happened.
            if live.md5_hash != base64.b64encode(hashlib.md5(data).digest()).decode():
                raise
            return int(live.generation)
        return int(blob.generation)

    @property
    def fallback_path(self) -> str:
        """Where the document goes when it cannot be saved where it belongs."""
        if self.is_gcs:
            return os.path.join(self.fallback_dir, self.bucket_name, self.object_name)
        # A local target that cannot be written: mirror its absolute path.
        return os.path.join(self.fallback_dir, "local", os.path.abspath(self.uri).lstrip(os.sep))

    def keep_locally(
        self,
        data: bytes,
        error: BaseException,
        what: str,
        generation: int | None = None,
        kind: type[MetricsSaveError] = MetricsSaveError,
    ) -> NoReturn:
        """Write ``data`` to :attr:`fallback_path` and raise ``kind`` naming it (chained to ``error``).

        ``what`` says what failed (``could not upload gs://...``). If the
        fallback copy cannot be written either, the message says so and
        ``fallback_path`` is None.
        """
        fallback = self.fallback_path
        durable = keep_durably(self, data)
        also = f"; a copy that outlives the container: {durable}" if durable else ""
        try:
            atomic_write(fallback, data)
        except OSError as local_error:
            logger.error("could not write the local fallback copy %s: %s", fallback, local_error)
            raise kind(
                f"{what} ({_describe(error)}), and the local fallback copy {fallback} "
                f"could not be written either ({local_error}){also}",
                uri=self.uri,
                fallback_path=None,
                generation=generation,
                copies=[durable] if durable else [],
            ) from error
        raise kind(
            f"{what} ({_describe(error)}); the document was written to {fallback}{also}",
            uri=self.uri,
            fallback_path=fallback,
            generation=generation,
            copies=[fallback] + ([durable] if durable else []),
        ) from error

def _describe(error: BaseException) -> str:
    if type(error).__name__ == "PreconditionFailed":
        return "412 Precondition Failed: another writer replaced the object since this run last saved it"
    cause = getattr(error, "cause", None)  # RetryError wraps the last transient error
    if cause is not None:
        return f"{error.__class__.__name__}: gave up retrying; last error: {cause}"
    if _is_response(getattr(error, "response", None)) and error.args and error.args[0] is error.response:
        # DataCorruption / InvalidResponse carry (response, message, ...): name the message.
        return f"{error.__class__.__name__}: {' '.join(str(a) for a in error.args[1:])}"
    return f"{error.__class__.__name__}: {error}"


def _is_response(value: Any) -> bool:
    return value is not None and hasattr(value, "status_code")


def _created_generation(error: BaseException) -> int | None:
    """The generation an upload created although it failed (a checksum mismatch).

    GCS answered 200 with the new object's resource, and the client then found
    that the server's checksum is not the one of the bytes it sent. The client
    tries to delete that version; if the delete fails too, the bad version stays
    live, and knowing its generation lets the next save replace it (a
    precondition on the previous generation would be refused as another
    writer's). If the delete succeeded, the next save finds no object and
    creates it (see ``_upload``).
    """
    from google.cloud.storage.exceptions import DataCorruption

    if not isinstance(error, DataCorruption):
        return None
    response = getattr(error, "response", None)
    if not _is_response(response) or response.status_code != 200:
        return None
    try:
        return int(response.json()["generation"])
    except (ValueError, KeyError, TypeError):
        return None
