"""How a MetricsCollector saves: explicit saves, background flushes, saves with backups, SIGTERM and exit saves.

A mixin of :class:`~trainer_callbacks.collector.MetricsCollector` (its state is the
collector's): the rule of what a save writes, and when it must not replace a file,
lives here; how bytes reach storage lives in ``_flusher`` and ``storage``.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from trainer_callbacks import document, limits
from trainer_callbacks._preemption import TrainingTerminated
from trainer_callbacks._resume import READY, TO_READ, UNDECIDED
from trainer_callbacks.storage import MetricsSaveError, RetryPolicy

logger = logging.getLogger("trainer_callbacks")

# An error message is one line of context, not a log: the exception's own text, clipped.
_ERROR_CHARS = min(4000, limits.MAX_ERROR_LENGTH or 4000)


class Saving:
    """The collector's saves (mixed into MetricsCollector)."""

    store: Any
    flush_every: float | None
    flush_retry: RetryPolicy
    sigterm_deadline: float
    _doc: Any
    _resume: Any
    _writer: Any
    _lock: Any
    _preemption: Any
    _saved_changes: int
    _closed: bool

    is_chief: bool

    def save(self, status: str = "completed", error: str | BaseException | None = None) -> str:
        """Write the document (one upload for ``gs://``, an atomic replace locally); returns where.

        Waits first for a periodic flush still in flight, so the last write wins. A
        worker that is not the chief writes nothing and returns the same URI.

        Raises:
            MetricsSaveError: the save failed; ``fallback_path`` (and ``copies``) name what was kept
                (:class:`MetricsUploadError` when the upload failed).
        """
        if status not in document.STATUSES:
            raise ValueError(f"Invalid value for argument `status`. Received: status={status!r}. Expected one of {document.STATUSES}.")
        self._save(status, error, self.store.retry)
        return self.store.uri

    def _save(self, status: str, error: str | BaseException | None, retry: RetryPolicy) -> None:
        if not self.is_chief:
            return
        with self._writer.lock:
            read_error = self._settle(status)
            data, epochs, unwritable, changes = self._serialize(status, error)
            try:
                if read_error is not None:
                    self.store.keep_locally(data, read_error, f"could not read {self.store.uri} to continue it, so it was not replaced")
                if unwritable is not None:
                    self.store.keep_locally(data, unwritable, f"could not turn the document into JSON for {self.store.uri}")
                self._writer.write(data, status, epochs, retry, self._doc.data)
            finally:
                # Saved, or kept locally with the error raised to the caller: either way not
                # "unsaved" (the exit save is for what nobody was told about).
                self._saved_changes = changes

    def _settle(self, status: str) -> Exception | None:
        """Decide, before a save, what it continues; returns the error if the file to continue cannot be read."""
        with self._lock:
            if self._resume.state == UNDECIDED:
                if status == "failed":
                    # The run failed before training started (loading data, say): a
                    # restarted job must not replace its earlier attempt's epochs with nothing.
                    self._resume.state = TO_READ
                else:
                    self._resume.start_new(self._doc, "saved before any training started")
            if self._resume.state != TO_READ:
                return None
            try:
                self._doc, self._writer.generation = self._resume.continue_file(self._doc, "saving a run that continues the file")
            except Exception as error:  # noqa: BLE001 - any failure to read: the save keeps a local copy and raises it
                return error
            return None

    def _serialize(self, status: str, error: str | BaseException | None) -> tuple[bytes, int, Exception | None, int]:
        """The bytes with this status, the epochs, the error if strict JSON failed (then what could be kept), the change count."""
        with self._lock:
            data = self._doc.data
            data["status"] = status
            data["saved_at"] = document.utc_now()
            if error is not None:
                text = error if isinstance(error, str) else "".join(traceback.format_exception_only(type(error), error)).strip()
                data["error"] = limits.printable_text(text, _ERROR_CHARS)
            elif status != "failed":
                data.pop("error", None)
            try:
                return document.dumps(data), len(data["epochs"]), None, self._doc.changes
            except Exception as problem:  # noqa: BLE001 - whatever it is, the data is kept locally and the error raised
                return document.salvage(data), len(data["epochs"]), problem, self._doc.changes

    def maybe_flush(self) -> bool:
        """Start a background save with status ``running`` if ``flush_every`` seconds have passed; True if started.

        While the previous flush is in flight this one is skipped; a failed flush is
        logged (the fallback copy is written) and training goes on.
        """
        if not self.is_chief or self.flush_every is None or time.monotonic() - self._writer.last_write < self.flush_every:
            return False
        with self._lock:
            if self._resume.state == UNDECIDED:  # no Keras training told us where it starts: logged by hand
                self._resume.start_new(self._doc, "a periodic flush before any training started")
            self._ensure_loaded()
        if not self._writer.lock.acquire(blocking=False):
            logger.info("a flush of %s is still in flight; skipping this one", self.store.uri)
            return False
        try:
            data, epochs, unwritable, changes = self._serialize("running", None)
            self._writer.last_write = time.monotonic()
            if unwritable is not None:
                try:
                    self.store.keep_locally(data, unwritable, f"could not turn the document into JSON for {self.store.uri}")
                except MetricsSaveError as error:
                    logger.warning("periodic flush of %s failed, training continues: %s", self.store.uri, error)
                self._saved_changes = changes
                self._writer.lock.release()
                return False
            self._writer.start_flush(data, epochs, None, lambda: setattr(self, "_saved_changes", changes))
        except BaseException:
            self._writer.lock.release()
            raise
        return True

    def wait_for_flush(self, timeout: float | None = None) -> bool:
        """Wait for the periodic flush in flight, if any; False if ``timeout`` seconds passed first."""
        return self._writer.wait(timeout)

    def _save_for_backup(self) -> bool:
        """Save before a BackupAndRestore backup; False if that failed (the backup is then skipped)."""
        if not self.is_chief or self._doc.changes == self._saved_changes:
            return True
        try:
            self._save("running", None, self.flush_retry)
        except MetricsSaveError as error:
            logger.warning("the save that goes with a backup failed; training continues: %s", error)
            return False
        return True

    def _save_terminated(self, exc: BaseException | None, status: str = "failed", deadline: float | None = None) -> None:
        """SIGTERM (and interpreter exit): the local copy first, then the upload within a deadline."""
        if not self.is_chief:
            return
        if self._resume.state != READY:  # the read that settles it may take long: what we have is on disk first
            self._writer.write_local_copy(self._serialize(status, exc)[0])
        read_error = self._settle(status)
        data, epochs, unwritable, changes = self._serialize(status, exc)
        try:
            if read_error is not None or unwritable is not None:
                problem = read_error or unwritable
                self.store.keep_locally(data, problem, f"{self.store.uri} could not be written ({problem})")
            self._writer.write_terminated(data, epochs, deadline or self.sigterm_deadline, status)
            self._saved_changes = changes
        except (MetricsSaveError, OSError) as error:
            logger.error("the save of %s did not finish: %s", self.store.uri, error)
            if exc is not None:
                exc.add_note(f"trainer_callbacks: the upload did not finish: {error}")

    def _save_at_exit(self, uncaught: BaseException | None) -> None:
        """Interpreter exit: save what a collector used without a with block has not saved yet.

        Bounded (the local copy first, then at most 10 s of upload): an exit must not hang on a network.
        """
        if self._closed or not self.is_chief or self._doc.changes == self._saved_changes:
            return
        received = self._preemption.received
        if received is not None:
            self._save_terminated(uncaught or TrainingTerminated(received))
        else:
            self._save_terminated(uncaught, "failed" if uncaught is not None else "completed", min(10.0, self.sigterm_deadline))
        logger.info("saved %s at interpreter exit", self.store.uri)
