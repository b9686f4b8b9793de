"""MetricsCollector: everything a training run reports, in memory, saved as one file."""

from __future__ import annotations

import bisect
import copy
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import numpy as np

from trainer_callbacks import document, limits
from trainer_callbacks.storage import DEFAULT_FILENAME, MetricsSaveError, MetricsStore, RetryPolicy

logger = logging.getLogger("trainer_callbacks")

FINAL_PREFIXES = ("final_", "test_")
STAT_NAMES = limits.STAT_NAMES
# Periodic flushes run in the background; a final save waits for one in flight,
# so their backoff is short: a flush that gives up is replaced by the next one.
DEFAULT_FLUSH_RETRY = RetryPolicy(initial=1.0, maximum=8.0, deadline=30.0, timeout=20.0)
# An error message is one line of context, not a log: the exception's own text, clipped
# (shorter still if the schema bounds `error`).
_ERROR_CHARS = min(4000, limits.MAX_ERROR_LENGTH or 4000)

# Where the document stands with respect to an existing file.
_UNDECIDED = "undecided"  # resume=None, training not started: calls are journaled
_TO_READ = "to-read"  # the existing file must be read (and continued) before anything else
_READY = "ready"  # continuing a file read, or a new document


class TrainingTerminated(SystemExit):
    """Raised in the training thread when the process receives SIGTERM inside a
    collector's ``with`` block (Vertex AI's notice of preemption, a job cancelled).

    It unwinds ``fit()`` so that the block saves the epochs so far as ``failed``,
    then ends the process with status 143 (128 + SIGTERM), as the signal would have.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"terminated by {signal.Signals(self.signum).name} (preempted or cancelled)"


class MetricsCollector:
    """Collects a run's metrics in memory and saves them as one training_metrics.json.

    Nothing touches the network until :meth:`save` (or a periodic flush, if asked
    for; or the one read of the existing file when a run is continued). Every
    per-epoch series is aligned to ``epochs``, with ``None`` where an epoch has no
    value. Used as a context manager, it saves ``completed`` when the block ends
    normally and ``failed`` (with the error) when it raises, then re-raises.

    **Restarts** (``resume=None``, the default): when Keras starts training past
    epoch 0 (``BackupAndRestore`` restored a backup after a preemption, or
    ``fit(initial_epoch=N)``), the existing file is read, once, and continued: its
    epochs, series, histogram edges and params are kept, and each epoch run again
    replaces its row whole. Training that starts at epoch 0 is a new run: a new
    document, whose first save replaces whatever an earlier attempt left. The
    callbacks tell the collector where training starts (:meth:`training_started`)
    at the first epoch; until then, what is logged (params, say) is kept and
    re-applied on top of a file that is continued. A ``failed`` save before any
    training started (the job died loading data) continues the existing file
    rather than replacing it with nothing; another save before training is a new
    document.

    Args:
        output_path: a local folder or ``gs://BUCKET/FOLDER`` (str or PathLike).
        resume: ``None`` (default): decided by where Keras starts training, as
            above. ``True``: always continue the existing file (the read happens
            when the ``with`` block is entered, so a bad or unreachable file stops
            the job before it trains, or at the first use without ``with``; never
            in ``__init__``). ``False``: always a new document. ``NaN``/``Infinity``
            tokens in a continued file are read as null.
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
        fallback_dir: where the document goes when a save fails, whatever failed
            (default ``$TMPDIR/trainer_callbacks``).
        save_on_sigterm: inside the ``with`` block, turn SIGTERM (preemption) into
            :class:`TrainingTerminated`, so the epochs so far are saved before the
            process ends (default True). Only from the main thread, and only while
            SIGTERM has its default handler: a handler of your own is left alone.
        client: a ``google.cloud.storage.Client`` to use (default: created at the first save).

    Names and values are checked when they are logged: ``log_*`` raise
    ``ValueError`` naming the argument for anything the format (its schema,
    shipped as ``trainer_callbacks/schema/``) or the ingestion function would
    refuse, so a bad name fails where it was written, not at the end of the run.

    Example::

        with MetricsCollector("gs://ml-artifacts/quick_tests/42") as collector:
            collector.log_params({"epochs": 2, "embedding_dim": 32})
            model.fit(ds, epochs=2, callbacks=[
                tf.keras.callbacks.BackupAndRestore("/tmp/backup"),  # a restarted job goes on where it stopped...
                MetricsCallback(collector)])                        # ...and so does its file
            collector.log_metric("test_recall_at_100", 0.075)
    """

    def __init__(
        self,
        output_path: str | os.PathLike[str],
        *,
        resume: bool | None = None,
        flush_every: float | None = None,
        filename: str = DEFAULT_FILENAME,
        retry: RetryPolicy | None = None,
        flush_retry: RetryPolicy | None = None,
        fallback_dir: str | os.PathLike[str] | None = None,
        client: Any = None,
        save_on_sigterm: bool = True,
    ) -> None:
        if resume is not None and not isinstance(resume, bool):
            raise ValueError(
                f"Invalid value for argument `resume`. Received: resume={resume!r}. "
                "Expected None (continue the file when Keras starts past epoch 0), True or False."
            )
        if flush_every is not None and not flush_every > 0:
            raise ValueError(
                f"Invalid value for argument `flush_every`. Received: flush_every={flush_every!r}. "
                "Expected a positive number of seconds or None."
            )
        self.store = MetricsStore(output_path, filename=filename, retry=retry, fallback_dir=fallback_dir, client=client)
        self.resume = resume
        self.flush_every = flush_every
        self.save_on_sigterm = save_on_sigterm
        self._saved_sigterm: Any = None
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
        # upload. None: not known yet (the first save learns the live one and
        # replaces it: a new document).
        self._generation: int | None = None
        self._last_flush = time.monotonic()
        # Work shared between callbacks of this collector (WeightNormCallback reads
        # the sums of squares WeightStatsCallback computes anyway); see ``shared``.
        self.shared: dict[Any, Any] = {}
        # No I/O here (constructing an object reads nothing): a file to continue
        # is read at __enter__ (resume=True) or when training starts (resume=None).
        self._state = _UNDECIDED if resume is None else _TO_READ if resume else _READY
        # While undecided, every change is also recorded here, to be applied
        # again on top of the file if it is continued.
        self._journal: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        # Epochs that came from the continued file and have not been logged again:
        # the first write to one of them clears its row (a re-run replaces it whole).
        self._stale: set[int] = set()
        self._start_seen = False

    # -- continuing a file, or not ----------------------------------------
    def training_started(self, initial_epoch: int) -> None:
        """Tell the collector the epoch Keras training starts at; only the first call counts.

        The callbacks call it at each epoch begin (you need not). With
        ``resume=None``: past epoch 0 (a ``BackupAndRestore`` restore,
        ``initial_epoch > 0``), the existing file is read now and continued;
        at epoch 0 the run is a new document. With ``resume=True`` the file is
        read if it was not yet.

        Raises:
            whatever reading the file raised (unreachable storage, a file that
            cannot be continued): training must not go on over epochs it could
            not read, and no save replaces that file.
        """
        if self._start_seen:
            return
        epoch = self._check_step(initial_epoch, "initial_epoch")
        with self._lock:
            if self._start_seen:
                return
            why = f"training starts at epoch {epoch}" if self.resume is None else "resume=True"
            if self._state == _UNDECIDED:
                if epoch > 0:
                    self._state = _TO_READ
                else:
                    self._start_new(why)
            if self._state == _TO_READ:
                try:
                    self._continue_file(why)
                except Exception as error:  # noqa: BLE001 - annotated and re-raised
                    if hasattr(error, "add_note"):  # Python 3.11+
                        error.add_note(f"trainer_callbacks: {why}, so {self.store.uri} must be read to be continued")
                    raise
            if epoch > 0 and self.resume is not False:
                self._warn_missing(f"training starts at epoch {epoch}", epoch)
            self._start_seen = True

    def _ensure_loaded(self) -> None:
        """Read the file to continue, if one must be read, before anything else touches the document."""
        if self._state != _TO_READ:
            return
        with self._lock:
            if self._state == _TO_READ:
                self._continue_file("resume=True" if self.resume else "continuing the file")

    def _start_new(self, why: str) -> None:
        """A new document: what was logged so far stands, and the first save replaces any file."""
        self._journal = []
        self._state = _READY
        logger.info("%s: a new document; its first save replaces any earlier %s", why, self.store.uri)

    def _continue_file(self, why: str) -> None:
        """Read the existing file and continue it; the caller holds ``_lock``.

        On failure the state stays ``_TO_READ``: the next use tries again, and no
        save replaces a file that could not be read.
        """
        existing = self.store.read()
        if existing is None:
            self._journal = []
            self._generation = 0
            logger.info("%s: no %s to continue; starting a new one", why, self.store.uri)
        else:
            data, generation = existing
            # The plan's sketch wrote json.dumps' NaN/Infinity tokens: read them
            # as null, as the ingestion function does.
            loaded = document.normalize(document.loads(data, non_finite="null"))
            journal, self._journal = self._journal, []  # only now: a file refused above leaves it for the next try
            loaded.pop("error", None)
            loaded["status"] = "running"
            self._doc = loaded
            self._stale = set(loaded["epochs"])
            self._generation = generation
            for operation, args in journal:  # what this process logged before the decision
                try:
                    operation(*args)
                except ValueError as error:  # e.g. histogram edges other than the file's
                    logger.warning("%s: a value logged before training started does not fit the file and is dropped: %s", why, error)
            logger.info("%s: continuing %s (%d epochs kept)", why, self.store.uri, len(loaded["epochs"]))
        self._state = _READY

    def _warn_missing(self, why: str, first_epoch: int) -> None:
        """Warn about epochs before ``first_epoch`` that the continued file does not have.

        They were trained by an earlier attempt that ended without saving them: a
        process killed outright (SIGKILL, or SIGTERM with Python's default
        handler) runs no ``with`` block, so only periodic flushes reach storage.
        """
        present = {e for e in self._doc["epochs"] if e < first_epoch}
        if len(present) == first_epoch:
            return
        missing, epoch = [], 0
        while len(missing) < 5 and epoch < first_epoch:  # bounded: at most len(present) + 5 steps
            if epoch not in present:
                missing.append(epoch)
            epoch += 1
        logger.warning(
            "%s, but %s has no record of %d earlier epoch(s) (%s%s): the attempt that trained them ended "
            "without saving them. Use flush_every=SECONDS to keep epochs through a preemption.",
            why, self.store.uri, first_epoch - len(present), ", ".join(map(str, missing)),
            "..." if first_epoch - len(present) > len(missing) else "",
        )

    def _record(self, operation: Callable[..., None], *args: Any) -> None:
        """Apply a checked change to the document (journaled while undecided); the caller holds ``_lock``."""
        operation(*args)
        if self._state == _UNDECIDED:
            self._journal.append((operation, args))

    @property
    def uri(self) -> str:
        """Where the document is saved (``gs://...`` or a local file path)."""
        return self.store.uri

    @property
    def epochs(self) -> list[int]:
        """The epochs logged so far (a copy)."""
        with self._lock:
            self._ensure_loaded()
            return list(self._doc["epochs"])

    # -- checks ----------------------------------------------------------
    @staticmethod
    def _check_step(step: Any, argument: str = "step") -> int:
        """``step`` as an int epoch index, or ValueError naming ``argument``."""
        if type(step) is int:  # what Keras passes: no conversion needed
            return limits.check_epoch(step, argument=argument)
        expected = "an integer epoch index >= 0"
        if isinstance(step, bool | np.bool_):
            raise limits.invalid(argument, step, expected, "a bool")
        try:
            number = document.to_number(step)  # a NumPy or tensor scalar too
        except (document.NotAScalar, document.NotAJsonNumber) as error:
            raise limits.invalid(argument, step, expected, str(error)) from error
        if number is None or (isinstance(number, float) and not number.is_integer()):
            # Truncating 2.9 to 2 would file the values under another epoch.
            raise limits.invalid(argument, step, expected, "not a whole number")
        return limits.check_epoch(int(number), argument=argument)

    @staticmethod
    def _number(value: Any, argument: str, of: str = "") -> float | int | None:
        try:
            return document.to_number(value)
        except (document.NotAScalar, document.NotAJsonNumber) as error:
            raise ValueError(
                f"Invalid value for argument `{argument}`{of}. Received: {argument}={limits.clipped_repr(value)}. "
                f"Expected one number (NaN and infinities are stored as null): {error}"
            ) from error

    # -- alignment -------------------------------------------------------
    def _row(self, step: int) -> int:
        """Index of ``step`` in ``epochs``, inserting it (and a None in every series) if new."""
        epochs = self._doc["epochs"]
        index = bisect.bisect_left(epochs, step)
        if index < len(epochs) and epochs[index] == step:
            if step in self._stale:
                # An epoch run again after a restore: the earlier attempt's row
                # is replaced whole, not patched value by value.
                self._stale.discard(step)
                self._clear_row(index)
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

    def _clear_row(self, index: int) -> None:
        for section in document.TOP_LEVEL_SERIES:
            for series in self._doc[section].values():
                series[index] = None
        for section in document.STATS_SECTIONS:
            for stats in self._doc[section].values():
                for name, series in stats.items():
                    (series["counts"] if name == "histogram" else series)[index] = None

    def _current_step(self, step: Any) -> int:
        if step is not None:
            return self._check_step(step)
        if not self._doc["epochs"]:
            raise ValueError("Invalid value for argument `step`. Received: step=None. Expected an epoch index (no epoch is logged yet).")
        return self._doc["epochs"][-1]

    def _series(self, mapping: dict[str, list[Any]], name: str) -> list[Any]:
        if name not in mapping:
            mapping[name] = [None] * len(self._doc["epochs"])
        return mapping[name]

    # -- changes (checked values only; journaled while undecided) ----------
    def _put_final(self, name: str, number: float | int | None) -> None:
        self._doc["final_metrics"][name] = number

    def _put_series(self, section: str, name: str, step: int, number: float | int | None) -> None:
        index = self._row(step)
        self._series(self._doc[section], name)[index] = number

    def _put_param(self, name: str, value: Any) -> None:
        self._doc["params"][name] = value

    def _put_norms(self, norms: dict[str, float | int | None], step: int) -> None:
        index = self._row(step)
        for name, number in norms.items():
            self._series(self._doc["gradient"], name)[index] = number

    def _put_stats(
        self, section: str, tower: str, stats: dict[str, Any], histogram: tuple[list[Any], list[int]] | None, step: int
    ) -> None:
        stored = self._doc[section].get(tower, {}).get("histogram")
        if histogram is not None and stored is not None and stored["bin_edges"] != histogram[0]:
            raise ValueError(f"{section}.{tower}: histogram bin edges are fixed for the run and cannot change")
        index = self._row(step)
        tower_stats = self._doc[section].setdefault(tower, {})
        for name, number in stats.items():
            self._series(tower_stats, name)[index] = number
        if histogram is not None:
            edges, counts = histogram
            if stored is None:
                stored = tower_stats["histogram"] = {"bin_edges": list(edges), "counts": [None] * len(self._doc["epochs"])}
            stored["counts"][index] = list(counts)

    # -- logging ---------------------------------------------------------
    def log_metric(self, name: str, value: Any, step: int | None = None) -> None:
        """Record one value.

        With a ``step`` (the epoch index) it joins a per-epoch series: names
        containing ``loss`` go to ``loss``, everything else to ``metrics``. Names
        starting ``final_`` or ``test_``, and values logged without a step, are
        end-of-run values (``final_metrics``). Non-finite values are stored as null.

        Raises:
            ValueError: naming the argument: a name the format refuses (empty,
                longer than the schema allows, NUL, a lone surrogate); a step that
                is not a whole number >= 0; a value that is not one number, or an
                integer too large for a JSON number.
        """
        if not isinstance(name, str):
            limits.check_name(name, argument="name", section="metrics")  # raises, naming the argument
        final = step is None or name.startswith(FINAL_PREFIXES)
        section = "final_metrics" if final else "loss" if "loss" in name else "metrics"
        limits.check_name(name, argument="name", section=section)
        checked_step = None if step is None else self._check_step(step)
        number = self._number(value, "value", f" of metric {name!r}")
        with self._lock:
            self._ensure_loaded()
            if final:
                self._record(self._put_final, name, number)
            else:
                self._record(self._put_series, section, name, checked_step, number)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """:meth:`log_metric` for each item."""
        for name, value in metrics.items():
            self.log_metric(name, value, step=step)

    def log_param(self, name: str, value: Any) -> None:
        """Record a hyperparameter (numbers and bools as such, anything else as a string).

        Raises:
            ValueError: naming the argument: a name the format refuses (see
                :meth:`log_metric`), a string with NUL or a lone surrogate, an
                integer too large for a JSON number.
        """
        limits.check_name(name, argument="name", section="params")
        try:
            converted = document.to_param(value)
        except document.NotAJsonNumber as error:
            raise limits.invalid("value", value, f"a number, bool, string or None for param {name!r}", str(error)) from error
        if isinstance(converted, str):
            limits.check_text(converted, argument="value")
        with self._lock:
            self._ensure_loaded()
            self._record(self._put_param, name, converted)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """:meth:`log_param` for each item."""
        for name, value in params.items():
            self.log_param(name, value)

    def log_weight_norms(self, norms: Mapping[str, Any], step: int | None = None) -> None:
        """Record weight L2 norms (``total`` and one per tower) for an epoch, in ``gradient``
        (the platform's historical name for this series). Names and values are checked as in :meth:`log_metric`."""
        checked = {
            limits.check_name(name, argument="norms", section="gradient"): self._number(value, f"norms[{name!r}]")
            for name, value in norms.items()
        }
        with self._lock:
            self._ensure_loaded()
            self._record(self._put_norms, checked, self._current_step(step))

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

        Raises:
            ValueError: naming the argument: a tower name the format refuses (see
                :meth:`log_metric`), an unknown statistic, a value that is not one
                number, a histogram whose edges are not increasing finite numbers or
                whose counts are not B whole numbers >= 0, or a step as in :meth:`log_metric`.
        """
        self._log_stats("weight_stats", tower, stats, histogram, step)

    def log_gradient_stats(
        self, tower: str, stats: Mapping[str, Any], histogram: Mapping[str, Any] | None = None, step: int | None = None
    ) -> None:
        """Like :meth:`log_weight_stats` for gradients; ``stats`` may also hold ``norm``."""
        self._log_stats("gradient_stats", tower, stats, histogram, step)

    def histogram_edges(self, section: str, tower: str) -> list[float] | None:
        """The bin edges already fixed for a tower (a resumed run keeps them), or None."""
        with self._lock:
            self._ensure_loaded()
            histogram = self._doc[section].get(tower, {}).get("histogram")
            return list(histogram["bin_edges"]) if histogram else None

    def _log_stats(
        self, section: str, tower: str, stats: Mapping[str, Any], histogram: Mapping[str, Any] | None, step: int | None
    ) -> None:
        limits.check_name(tower, argument="tower", section=section)
        unknown = set(stats) - set(STAT_NAMES)
        if unknown:
            raise ValueError(
                f"Invalid value for argument `stats`. Received: unknown statistics {sorted(map(str, unknown))}. "
                f"Expected some of {list(STAT_NAMES)}."
            )
        numbers = {name: self._number(value, f"stats[{name!r}]") for name, value in stats.items()}
        checked = None if histogram is None else self._check_histogram(histogram)
        with self._lock:
            self._ensure_loaded()
            self._record(self._put_stats, section, tower, numbers, checked, self._current_step(step))

    def _check_histogram(self, histogram: Mapping[str, Any]) -> tuple[list[Any], list[int]]:
        """``(bin_edges, counts)`` as the format and the ingestion function take them, or ValueError."""
        if not isinstance(histogram, Mapping) or "bin_edges" not in histogram or "counts" not in histogram:
            raise limits.invalid("histogram", histogram, '{"bin_edges": [B+1 numbers], "counts": [B whole numbers]}')
        raw_edges, raw_counts = histogram["bin_edges"], histogram["counts"]
        raw_edges, raw_counts = _plain(raw_edges), _plain(raw_counts)
        edges = [self._number(e, "histogram['bin_edges']") for e in raw_edges]
        expected = f"at least {limits.MIN_BIN_EDGES} finite, strictly increasing numbers"
        if len(edges) < limits.MIN_BIN_EDGES or None in edges:
            raise limits.invalid("histogram['bin_edges']", histogram["bin_edges"], expected)
        if any(not b > a for a, b in zip(edges, edges[1:])):
            raise limits.invalid("histogram['bin_edges']", histogram["bin_edges"], expected, "not strictly increasing")
        counts = []
        expected = f"{len(edges) - 1} whole numbers" + (f" >= {limits.MIN_COUNT}" if limits.MIN_COUNT is not None else "")
        for raw in raw_counts:
            count = self._number(raw, "histogram['counts']")
            if count is None or (isinstance(count, float) and not count.is_integer()):
                raise limits.invalid("histogram['counts']", histogram["counts"], expected, f"{raw!r} is not a whole number")
            count = int(count)
            if limits.MIN_COUNT is not None and count < limits.MIN_COUNT:
                raise limits.invalid("histogram['counts']", histogram["counts"], expected, f"{count} is below {limits.MIN_COUNT}")
            counts.append(count)
        if len(counts) != len(edges) - 1:
            raise limits.invalid("histogram['counts']", histogram["counts"], expected, f"{len(counts)} counts for {len(edges)} edges")
        return edges, counts

    # -- output ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the document as it would be saved now."""
        with self._lock:
            self._ensure_loaded()
            return copy.deepcopy(self._doc)

    def save(self, status: str = "completed", error: str | BaseException | None = None) -> str:
        """Write the document (one upload for ``gs://``, an atomic replace locally).

        Waits first for a periodic flush still in flight, so the last write wins.
        Whatever fails (the upload, the credentials, a local write, turning the
        document into JSON, reading the file a restarted run continues), what
        could be kept is written to a local file first, and the error names it.

        Args:
            status: ``completed`` (default), ``running`` or ``failed``.
            error: why the run failed (a message or the exception), stored as
                ``error`` (NUL and lone surrogates escaped, clipped).

        Returns:
            Where it was written.

        Raises:
            MetricsSaveError: the save failed; ``fallback_path`` is the local
                copy (:class:`MetricsUploadError` when the upload failed).
        """
        if status not in document.STATUSES:
            raise ValueError(f"Invalid value for argument `status`. Received: status={status!r}. Expected one of {document.STATUSES}.")
        with self._write_lock:
            read_error = self._settle(status)
            data, epochs, unwritable = self._serialize(status, error)
            if read_error is not None:
                self.store.keep_locally(
                    data, read_error, f"could not read {self.store.uri} to continue it, so it was not replaced"
                )
            if unwritable is not None:
                self.store.keep_locally(data, unwritable, f"could not turn the document into JSON for {self.store.uri}")
            self._write(data, status, epochs, self.store.retry)
        return self.store.uri

    def _settle(self, status: str) -> Exception | None:
        """Decide, before a save, what it continues; returns the error if the file to continue cannot be read."""
        with self._lock:
            if self._state == _UNDECIDED:
                if status == "failed":
                    # The run failed before training started (loading data, say): a
                    # restarted job must not replace its earlier attempt's epochs with nothing.
                    self._state = _TO_READ
                else:
                    self._start_new("saved before any training started")
            if self._state != _TO_READ:
                return None
            try:
                self._continue_file("saving a run that continues the file")
            except Exception as error:  # noqa: BLE001 - any failure to read: the save keeps a local copy and raises it
                return error
            return None

    def _serialize(self, status: str, error: str | BaseException | None) -> tuple[bytes, int, Exception | None]:
        """The document's bytes with this status, its number of epochs, and the error if
        strict JSON failed (the bytes are then what :func:`document.salvage` could keep)."""
        with self._lock:
            self._doc["status"] = status
            self._doc["saved_at"] = document.utc_now()
            if error is not None:
                text = error if isinstance(error, str) else _describe_exception(error)
                self._doc["error"] = limits.printable_text(text, _ERROR_CHARS)
            elif status != "failed":
                self._doc.pop("error", None)
            epochs = len(self._doc["epochs"])
            try:
                return document.dumps(self._doc), epochs, None
            except Exception as problem:  # noqa: BLE001 - whatever it is, the data is kept locally and the error raised
                return document.salvage(self._doc), epochs, problem

    def _write(self, data: bytes, status: str, epochs: int, retry: RetryPolicy) -> None:
        """Upload ``data`` over the generation we last wrote; the caller holds ``_write_lock``."""
        try:
            generation = self.store.write(data, if_generation_match=self._generation, retry=retry)
        except MetricsSaveError as error:
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
        failed flush is logged (the fallback copy is written) and training goes
        on: the final save still has everything. Returns True if a flush was started.
        """
        if self.flush_every is None or time.monotonic() - self._last_flush < self.flush_every:
            return False
        with self._lock:
            if self._state == _UNDECIDED:  # no Keras training told us where it starts: logged by hand
                self._start_new("a periodic flush before any training started")
            self._ensure_loaded()
        if not self._write_lock.acquire(blocking=False):
            logger.info("a flush of %s is still in flight; skipping this one", self.store.uri)
            return False
        try:
            data, epochs, unwritable = self._serialize("running", None)
            self._last_flush = time.monotonic()
            if unwritable is not None:
                try:
                    self.store.keep_locally(data, unwritable, f"could not turn the document into JSON for {self.store.uri}")
                except MetricsSaveError as error:
                    logger.warning("periodic flush of %s failed, training continues: %s", self.store.uri, error)
                self._write_lock.release()
                return False
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
        except (MetricsSaveError, OSError) as error:
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
        # With resume=None nothing is read yet: that waits for training to start.
        self._ensure_loaded()
        self._install_sigterm()
        return self

    def _install_sigterm(self) -> None:
        # Without this, a preempted job dies where it stands and the file keeps
        # only its last flush; the restarted run would lack the epochs since.
        if not self.save_on_sigterm or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def terminate(signum: int, frame: Any) -> None:
            raise TrainingTerminated(signum)

        self._saved_sigterm = signal.signal(signal.SIGTERM, terminate)

    def _restore_sigterm(self) -> None:
        if self._saved_sigterm is not None:
            signal.signal(signal.SIGTERM, self._saved_sigterm)
            self._saved_sigterm = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._restore_sigterm()
        if exc is None:
            self.save(status="completed")
            return
        try:
            self.save(status="failed", error=exc)
        except (MetricsSaveError, OSError) as save_error:
            # The training error is the one to surface; the save error names the local copy.
            logger.error("saving the failed run's metrics also failed: %s", save_error)
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(f"trainer_callbacks: saving the metrics also failed: {save_error}")
        # Returning None re-raises the original exception.

    # -- timing and callback errors (minimal; the collector split owns the full version) --
    def log_timing(self, values: Mapping[str, float | int | None], step: int | None = None) -> None:
        """Record what an epoch cost in ``timing`` (``epoch_seconds``, ``steps_per_second``, ...), aligned to ``epochs``."""
        checked = {
            limits.check_name(name, argument="values", section="timing"): self._number(value, f"values[{name!r}]")
            for name, value in values.items()
        }
        with self._lock:
            self._ensure_loaded()
            self._record(self._put_timing, checked, self._current_step(step))

    def _put_timing(self, values: dict[str, float | int | None], step: int) -> None:
        index = self._row(step)
        timing = self._doc.setdefault("timing", {})
        n = len(self._doc["epochs"])
        for series in timing.values():  # _row does not know this section: pad to the epochs
            series.extend([None] * (n - len(series)))
        for name, number in values.items():
            self._series(timing, name)[index] = number

    def record_callback_error(self, callback: str, epoch: int | None, error: str) -> None:
        """Record in ``callback_errors`` that ``callback`` failed at ``epoch`` (None: outside an epoch) and why."""
        entry = {"callback": str(callback)[:256] or "?", "epoch": epoch, "error": limits.printable_text(str(error), 4096)}
        with self._lock:
            self._ensure_loaded()
            self._record(self._put_callback_error, entry)

    def _put_callback_error(self, entry: dict[str, Any]) -> None:
        errors = self._doc.setdefault("callback_errors", [])
        if len(errors) < 1000:  # the schema's bound
            errors.append(dict(entry))


def _plain(values: Any) -> Any:
    """A NumPy array of integers or float64 as Python numbers in one call, not one conversion per bin
    (float32 keeps going through ``to_number``, for its shortest spelling)."""
    if isinstance(values, np.ndarray) and (values.dtype.kind in "iub" or values.dtype == np.float64):
        return values.tolist()
    return values


def _describe_exception(error: BaseException) -> str:
    lines = traceback.format_exception_only(type(error), error)
    return "".join(lines).strip()
