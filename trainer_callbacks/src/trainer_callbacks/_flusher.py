"""Writing the document: one save at a time and in order, background flushes, the SIGTERM save.

- A save is one upload of one object with ``if_generation_match`` (the generation
  this run last read or wrote), or an atomic replace of a local file.
- A periodic flush is serialized on the training thread and uploaded on a
  background thread; while one is in flight the next is skipped, and a save waits
  for it, so the last version wins.
- The SIGTERM save writes the local copy first, then tries the upload within a
  deadline that fits Vertex AI's grace period: something durable exists before
  the kill.
- A save whose bytes or values pass what the ingestion function takes by default
  is still written, with one loud warning that gives the figures.

Example::

    writer = Writer(store)
    writer.write(b"{...}", "completed", epochs=3, retry=store.retry)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from trainer_callbacks import limits
from trainer_callbacks.storage import MetricsSaveError, RetryPolicy, atomic_write

logger = logging.getLogger("trainer_callbacks")


def count_values(value: Any) -> int:
    """Values as the ingestion function counts them while parsing: every number, string, name, null..."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        total += 1
        if isinstance(item, dict):
            total += len(item)  # the names
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


class Writer:
    """Writes one store's document; holds the upload precondition and the flush thread."""

    def __init__(self, store: Any, flush_retry: RetryPolicy) -> None:
        self.store = store
        self.flush_retry = flush_retry
        # Writes are one at a time and in order; a background flush holds the lock
        # until its upload ends (a Lock, unlike an RLock, may be released by another thread).
        self.lock = threading.Lock()
        # The GCS generation we last read or wrote: the next upload's precondition.
        # None: not known yet (the first save learns the live one and replaces it).
        self.generation: int | None = None
        self.thread: threading.Thread | None = None
        self.last_write = time.monotonic()
        self._warned_size = False

    def write(self, data: bytes, status: str, epochs: int, retry: RetryPolicy, document: Any = None) -> None:
        """Upload ``data`` over the generation we last wrote; the caller holds :attr:`lock`."""
        self._check_size(data, document)
        try:
            generation = self.store.write(data, if_generation_match=self.generation, retry=retry)
        except MetricsSaveError as error:
            if error.generation is not None:
                # The failed upload still created this generation (a checksum
                # mismatch): the next save replaces it rather than being refused.
                self.generation = error.generation
            raise
        if self.store.is_gcs:
            self.generation = generation
        self.last_write = time.monotonic()
        logger.info("saved %s (%s, %d epochs, %d bytes)", self.store.uri, status, epochs, len(data))

    def _check_size(self, data: bytes, document: Any) -> None:
        if self._warned_size:
            return
        cap, most = limits.FUNCTION_DEFAULT_MAX_BYTES, limits.MAX_VALUES
        values = None
        # Each value takes 2 bytes at least ("0,"): below 2 x the limit, no need to count.
        if most is not None and document is not None and len(data) >= 2 * most:
            values = count_values(document)
        over_bytes, over_values = len(data) > cap, values is not None and values > most
        if not (over_bytes or over_values):
            return
        self._warned_size = True
        figures = []
        if over_bytes:
            figures.append(
                f"{len(data):,} bytes, over the ingestion function's default cap of {cap:,} (MAX_METRICS_BYTES): "
                f"deploy the function with MAX_METRICS_BYTES={1 << (len(data) * 2 - 1).bit_length():,} or more "
                "and give it memory to match (the function's memory grows with the file it checks)"
            )
        if over_values:
            figures.append(f"{values:,} values, over the format's limit of {most:,} (x-maxValues): the function refuses it whatever its settings")
        logger.warning(
            "LARGE METRICS FILE: %s is written (the data is kept) but the ingestion function will refuse it: %s. "
            "Log fewer series or epochs, or ingest it after raising the cap (metrics-ingest replay). Warned once per run.",
            self.store.uri, "; ".join(figures),
        )

    def start_flush(self, data: bytes, epochs: int, document: Any, done: Callable[[], None]) -> None:
        """Upload ``data`` on a background thread; the caller acquired :attr:`lock`, which the thread releases."""

        def run() -> None:
            try:
                self.write(data, "running", epochs, self.flush_retry, document)
            except (MetricsSaveError, OSError) as error:
                logger.warning("periodic flush of %s failed, training continues: %s", self.store.uri, error)
            finally:
                # From the end of this flush, not its start: after a long failing
                # flush the next one waits a full period.
                self.last_write = time.monotonic()
                done()
                self.lock.release()

        thread = threading.Thread(target=run, name="trainer-callbacks-flush", daemon=True)
        thread.start()
        self.thread = thread

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the flush in flight, if any; False if ``timeout`` seconds passed first."""
        thread = self.thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def write_local_copy(self, data: bytes) -> str | None:
        """For a GCS target, write ``data`` to the local fallback path at once (the SIGTERM save's first step)."""
        if not self.store.is_gcs:
            return None
        local = self.store.fallback_path
        try:
            atomic_write(local, data)
        except OSError as error:
            logger.error("could not write the local copy %s (%s)", local, error)
            return None
        logger.warning("the metrics are on local disk at %s; now uploading to %s", local, self.store.uri)
        return local

    def write_terminated(self, data: bytes, epochs: int, deadline: float, status: str = "failed") -> str:
        """The SIGTERM (and exit) save: the local copy first (GCS targets), then the upload within ``deadline`` seconds.

        Returns where the document is now; raises :class:`MetricsSaveError` if the upload failed
        (the local copy, named in it, stands).
        """
        local = self.write_local_copy(data)
        started = time.monotonic()
        if not self.lock.acquire(timeout=deadline):  # a flush in flight: wait for it, within the deadline
            raise MetricsSaveError(
                f"a periodic flush of {self.store.uri} was still in flight after {deadline:.0f} s; "
                f"the document was written to {local}", uri=self.store.uri, fallback_path=local,
            )
        try:
            left = max(1.0, deadline - (time.monotonic() - started))
            policy = RetryPolicy(initial=0.5, maximum=4.0, deadline=left, timeout=min(10.0, left))
            self.write(data, status, epochs, policy)
        finally:
            self.lock.release()
        return self.store.uri
