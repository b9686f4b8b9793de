"""MetricsCollector: everything a training run reports, in memory, saved as one file."""

from __future__ import annotations

import bisect
import copy
import logging
import os
import threading
import time
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from trainer_callbacks import document
from trainer_callbacks.storage import DEFAULT_FILENAME, MetricsStore, MetricsUploadError, RetryPolicy

logger = logging.getLogger("trainer_callbacks")

FINAL_PREFIXES = ("final_", "test_")
STAT_NAMES = ("mean", "std", "min", "max", "norm")
# Periodic flushes run in the background; a final save waits for one in flight,
# so their backoff is short: a flush that gives up is replaced by the next one.
DEFAULT_FLUSH_RETRY = RetryPolicy(initial=1.0, maximum=8.0, deadline=30.0, timeout=20.0)


class MetricsCollector:
    """Collects a run's metrics in memory and saves them as one training_metrics.json.

    Nothing touches the network until :meth:`save` (or a periodic flush, if asked
    for; or, with ``resume=True``, the one read of the existing file). Every
    per-epoch series is aligned to ``epochs``, with ``None`` where an epoch has no
    value. Used as a context manager, it saves ``completed`` when the block ends
    normally and ``failed`` (with the error) when it raises, then re-raises.

    Args:
        output_path: a local folder or ``gs://BUCKET/FOLDER`` (str or PathLike).
        resume: continue the file already at ``output_path`` (a job resumed after
            preemption), keeping its epochs; an epoch logged again replaces its
            earlier values instead of being repeated. The file is read when the
            ``with`` block is entered (so a bad or unreachable file stops the job
            before it trains), or at the first use without ``with``; never in
            ``__init__``. ``NaN``/``Infinity`` tokens in it are read as null.
            Default False: start a new document (the first save replaces any
            earlier file).
        flush_every: seconds between periodic saves with status ``running``
            (triggered from :meth:`maybe_flush`, which MetricsCallback calls at each
            epoch begin); None (default) saves only at the end. A flush serializes
            the document on the training thread (milliseconds) and uploads it on a
            background thread, so a slow or failing GCS does not slow training;
            while one flush is in flight the next is skipped, and the final save
            waits for it (at most about ``flush_retry``'s deadline plus timeout).
        filename: base name of the file (default ``training_metrics.json``).
        retry: backoff of the final save (and explicit :meth:`save` calls), a
            :class:`RetryPolicy` (default: 1 s doubling to 32 s, 300 s in all).
        flush_retry: backoff of periodic flushes (default: 1 s doubling to 8 s,
            30 s in all, 20 s per request); a flush that gives up is logged and
            training goes on, the next flush or the final save carries everything.
        fallback_dir: where the document goes when an upload finally fails
            (default ``$TMPDIR/trainer_callbacks``).
        client: a ``google.cloud.storage.Client`` to use (default: created at the first save).

    Example::

        with MetricsCollector("gs://ml-artifacts/quick_tests/42") as collector:
            collector.log_params({"epochs": 2, "embedding_dim": 32})
            collector.log_metric("loss", 0.5, step=0)
            collector.log_metric("loss", 0.4, step=1)
            collector.log_metric("test_recall_at_100", 0.075)
    """

    def __init__(
        self,
        output_path: str | os.PathLike[str],
        *,
        resume: bool = False,
        flush_every: float | None = None,
        filename: str = DEFAULT_FILENAME,
        retry: RetryPolicy | None = None,
        flush_retry: RetryPolicy | None = None,
        fallback_dir: str | os.PathLike[str] | None = None,
        client: Any = None,
    ) -> None:
        if flush_every is not None and not flush_every > 0:
            raise ValueError(
                f"Invalid value for argument `flush_every`. Received: flush_every={flush_every!r}. "
                "Expected a positive number of seconds or None."
            )
        self.store = MetricsStore(output_path, filename=filename, retry=retry, fallback_dir=fallback_dir, client=client)
        self.flush_every = flush_every
        self.flush_retry = flush_retry or DEFAULT_FLUSH_RETRY
        # _lock guards the document; _write_lock makes writes one at a time and in
        # order, and guards _generation. A background flush holds _write_lock
        # until its upload ends (a Lock, unlike an RLock, may be released by
        # another thread), so a save waits for it and a flush never overlaps one.
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._flush_thread: threading.Thread | None = None
        self._doc = document.empty_document()
        # The GCS generation we last read or wrote: the precondition of the next
        # upload. None: not known yet (the first save learns the live one).
        self._generation: int | None = None
        self._last_flush = time.monotonic()
        # Work shared between callbacks of this collector (WeightNormCallback reads
        # the sums of squares WeightStatsCallback computes anyway); see ``shared``.
        self.shared: dict[Any, Any] = {}
        # resume=True: read the existing file at __enter__ or first use, not here
        # (constructing an object does no I/O).
        self._resume_pending = resume

    def _ensure_loaded(self) -> None:
        """Read the file to resume, once, before anything else touches the document."""
        if not self._resume_pending:
            return
        with self._lock:
            if not self._resume_pending:
                return
            existing = self.store.read()
            if existing is None:
                self._generation = 0
                logger.info("no %s to resume; starting a new one", self.store.uri)
            else:
                data, generation = existing
                # The plan's sketch wrote json.dumps' NaN/Infinity tokens: read them
                # as null, as the ingestion function does.
                self._doc = document.normalize(document.loads(data, non_finite="null"))
                self._doc.pop("error", None)
                self._doc["status"] = "running"
                self._generation = generation
                logger.info("resuming %s at %d epochs", self.store.uri, len(self._doc["epochs"]))
            # Only once the file was read: a failed read raises again at the next
            # use instead of silently starting a new document over the old one.
            self._resume_pending = False

    @property
    def uri(self) -> str:
        """Where the document is saved (``gs://...`` or a local file path)."""
        return self.store.uri

    @property
    def epochs(self) -> list[int]:
        """The epochs logged so far (a copy)."""
        self._ensure_loaded()
        with self._lock:
            return list(self._doc["epochs"])

    # -- alignment -------------------------------------------------------
    def _row(self, step: int) -> int:
        """Index of ``step`` in ``epochs``, inserting it (and a None in every series) if new."""
        if isinstance(step, bool) or not isinstance(step, int):
            try:
                step = int(document.to_number(step))  # a NumPy or tensor integer
            except (TypeError, document.NotAScalar) as error:
                raise ValueError(f"Invalid value for argument `step`. Received: step={step!r}. Expected an integer >= 0.") from error
        if step < 0:
            raise ValueError(f"Invalid value for argument `step`. Received: step={step!r}. Expected an integer >= 0.")
        epochs = self._doc["epochs"]
        index = bisect.bisect_left(epochs, step)
        if index < len(epochs) and epochs[index] == step:
            return index
        epochs.insert(index, step)
        for section in document.TOP_LEVEL_SERIES:
            for series in self._doc[section].values():
                series.insert(index, None)
        for section in document.STATS_SECTIONS:
            for stats in self._doc[section].values():
                for name, series in stats.items():
                    (series["counts"] if name == "histogram" else series).insert(index, None)
        return index

    def _current_step(self, step: int | None) -> int:
        if step is not None:
            return step
        if not self._doc["epochs"]:
            raise ValueError("`step` is required before any epoch is logged")
        return self._doc["epochs"][-1]

    def _series(self, mapping: dict[str, list[Any]], name: str) -> list[Any]:
        if name not in mapping:
            mapping[name] = [None] * len(self._doc["epochs"])
        return mapping[name]

    # -- logging ---------------------------------------------------------
    def log_metric(self, name: str, value: Any, step: int | None = None) -> None:
        """Record one value.

        With a ``step`` (the epoch index) it joins a per-epoch series: names
        containing ``loss`` go to ``loss``, everything else to ``metrics``. Names
        starting ``final_`` or ``test_``, and values logged without a step, are
        end-of-run values (``final_metrics``). Non-finite values are stored as null.

        Raises:
            ValueError: an empty name, a negative step, or a value that is not one number.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"Invalid value for argument `name`. Received: name={name!r}. Expected a non-empty string.")
        try:
            number = document.to_number(value)
        except document.NotAScalar as error:
            raise ValueError(f"Invalid value for metric {name!r}: {error}") from error
        self._ensure_loaded()
        with self._lock:
            if step is None or name.startswith(FINAL_PREFIXES):
                self._doc["final_metrics"][name] = number
                return
            index = self._row(step)
            section = "loss" if "loss" in name else "metrics"
            self._series(self._doc[section], name)[index] = number

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """:meth:`log_metric` for each item."""
        for name, value in metrics.items():
            self.log_metric(name, value, step=step)

    def log_param(self, name: str, value: Any) -> None:
        """Record a hyperparameter (numbers and bools as such, anything else as a string)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"Invalid value for argument `name`. Received: name={name!r}. Expected a non-empty string.")
        self._ensure_loaded()
        with self._lock:
            self._doc["params"][name] = document.to_param(value)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """:meth:`log_param` for each item."""
        for name, value in params.items():
            self.log_param(name, value)

    def log_weight_norms(self, norms: Mapping[str, Any], step: int | None = None) -> None:
        """Record weight L2 norms (``total`` and one per tower) for an epoch, in ``gradient``
        (the platform's historical name for this series)."""
        self._ensure_loaded()
        with self._lock:
            index = self._row(self._current_step(step))
            for name, value in norms.items():
                self._series(self._doc["gradient"], name)[index] = document.to_number(value)

    def log_weight_stats(
        self, tower: str, stats: Mapping[str, Any], histogram: Mapping[str, Any] | None = None, step: int | None = None
    ) -> None:
        """Record one epoch's weight statistics of a tower.

        Args:
            tower: the tower's name (``query``, ``candidate``, ...).
            stats: ``mean``, ``std``, ``min``, ``max`` (any subset).
            histogram: ``{"bin_edges": [B+1 numbers], "counts": [B ints]}``; the
                edges must stay the same for the whole run.
            step: the epoch (default: the last epoch logged).
        """
        self._log_stats("weight_stats", tower, stats, histogram, step)

    def log_gradient_stats(
        self, tower: str, stats: Mapping[str, Any], histogram: Mapping[str, Any] | None = None, step: int | None = None
    ) -> None:
        """Like :meth:`log_weight_stats` for gradients; ``stats`` may also hold ``norm``."""
        self._log_stats("gradient_stats", tower, stats, histogram, step)

    def histogram_edges(self, section: str, tower: str) -> list[float] | None:
        """The bin edges already fixed for a tower (a resumed run keeps them), or None."""
        self._ensure_loaded()
        with self._lock:
            histogram = self._doc[section].get(tower, {}).get("histogram")
            return list(histogram["bin_edges"]) if histogram else None

    def _log_stats(
        self, section: str, tower: str, stats: Mapping[str, Any], histogram: Mapping[str, Any] | None, step: int | None
    ) -> None:
        if not isinstance(tower, str) or not tower:
            raise ValueError(f"Invalid value for argument `tower`. Received: tower={tower!r}. Expected a non-empty string.")
        unknown = set(stats) - set(STAT_NAMES)
        if unknown:
            raise ValueError(f"Unknown statistics {sorted(unknown)}; expected some of {list(STAT_NAMES)}")
        self._ensure_loaded()
        with self._lock:
            index = self._row(self._current_step(step))
            tower_stats = self._doc[section].setdefault(tower, {})
            for name, value in stats.items():
                self._series(tower_stats, name)[index] = document.to_number(value)
            if histogram is not None:
                edges = [document.to_number(e) for e in histogram["bin_edges"]]
                counts = [int(c) for c in histogram["counts"]]
                if len(edges) < 2 or len(counts) != len(edges) - 1 or None in edges:
                    raise ValueError(f"{section}.{tower}: a histogram needs B+1 finite edges and B counts")
                stored = tower_stats.get("histogram")
                if stored is None:
                    stored = tower_stats["histogram"] = {"bin_edges": edges, "counts": [None] * len(self._doc["epochs"])}
                elif stored["bin_edges"] != edges:
                    raise ValueError(f"{section}.{tower}: histogram bin edges are fixed for the run and cannot change")
                stored["counts"][index] = counts

    # -- output ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the document as it would be saved now."""
        self._ensure_loaded()
        with self._lock:
            return copy.deepcopy(self._doc)

    def save(self, status: str = "completed", error: str | BaseException | None = None) -> str:
        """Write the document (one upload for ``gs://``, an atomic replace locally).

        Waits first for a periodic flush still in flight, so the last write wins.

        Args:
            status: ``completed`` (default), ``running`` or ``failed``.
            error: why the run failed (a message or the exception), stored as ``error``.

        Returns:
            Where it was written.

        Raises:
            MetricsUploadError: the upload failed; the message names the local copy.
        """
        if status not in document.STATUSES:
            raise ValueError(f"Invalid value for argument `status`. Received: status={status!r}. Expected one of {document.STATUSES}.")
        self._ensure_loaded()
        with self._write_lock:
            data, epochs = self._snapshot(status, error)
            self._write(data, status, epochs, self.store.retry)
        return self.store.uri

    def _snapshot(self, status: str, error: str | BaseException | None) -> tuple[bytes, int]:
        """The document's bytes with this status, and its number of epochs."""
        with self._lock:
            self._doc["status"] = status
            self._doc["saved_at"] = document.utc_now()
            if error is not None:
                self._doc["error"] = error if isinstance(error, str) else _describe_exception(error)
            elif status != "failed":
                self._doc.pop("error", None)
            return document.dumps(self._doc), len(self._doc["epochs"])

    def _write(self, data: bytes, status: str, epochs: int, retry: RetryPolicy) -> None:
        """Upload ``data`` over the generation we last wrote; the caller holds ``_write_lock``."""
        try:
            generation = self.store.write(data, if_generation_match=self._generation, retry=retry)
        except MetricsUploadError as error:
            if error.generation is not None:
                # The failed upload still created this generation (a checksum
                # mismatch): the next save replaces it rather than being refused.
                self._generation = error.generation
            raise
        if self.store.is_gcs:
            self._generation = generation
        self._last_flush = time.monotonic()
        logger.info("saved %s (%s, %d epochs, %d bytes)", self.store.uri, status, epochs, len(data))

    def maybe_flush(self) -> bool:
        """Start a save with status ``running`` if ``flush_every`` seconds have passed.

        The document is serialized here and uploaded on a background thread
        (with ``flush_retry``), so this returns at once even while GCS is slow or
        down. If the previous flush is still in flight this one is skipped. A
        failed flush is logged and training goes on: the final save still has
        everything. Returns True if a flush was started.
        """
        if self.flush_every is None or time.monotonic() - self._last_flush < self.flush_every:
            return False
        self._ensure_loaded()
        if not self._write_lock.acquire(blocking=False):
            logger.info("a flush of %s is still in flight; skipping this one", self.store.uri)
            return False
        try:
            data, epochs = self._snapshot("running", None)
            self._last_flush = time.monotonic()
            thread = threading.Thread(
                target=self._flush_in_background, args=(data, epochs), name="trainer-callbacks-flush", daemon=True
            )
            thread.start()
        except BaseException:
            self._write_lock.release()
            raise
        self._flush_thread = thread
        return True

    def _flush_in_background(self, data: bytes, epochs: int) -> None:
        try:
            self._write(data, "running", epochs, self.flush_retry)
        except (MetricsUploadError, OSError) as error:
            logger.warning("periodic flush of %s failed, training continues: %s", self.store.uri, error)
        finally:
            # From the end of this flush, not its start: after a long failing
            # flush the next one waits a full period.
            self._last_flush = time.monotonic()
            self._write_lock.release()

    def wait_for_flush(self, timeout: float | None = None) -> bool:
        """Wait for the periodic flush in flight, if any; False if ``timeout`` seconds passed first."""
        thread = self._flush_thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def __enter__(self) -> MetricsCollector:
        # With resume=True, read the existing file now: a file that cannot be
        # continued (or GCS that cannot be reached) stops the job before it trains.
        self._ensure_loaded()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.save(status="completed")
            return
        try:
            self.save(status="failed", error=exc)
        except (MetricsUploadError, OSError) as save_error:
            # The training error is the one to surface; the save error names the local copy.
            logger.error("saving the failed run's metrics also failed: %s", save_error)
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(f"trainer_callbacks: saving the metrics also failed: {save_error}")
        # Returning None re-raises the original exception.


def _describe_exception(error: BaseException) -> str:
    lines = traceback.format_exception_only(type(error), error)
    return "".join(lines).strip()[:4000]
