"""MetricsCollector: everything a training run reports, in memory, saved as one file.

The rules live in private modules, one job each: ``_aligned_document`` (the
document, aligned by construction), ``_arguments`` (what the constructor accepts),
``_resume`` (when a file is continued and what of it is kept), ``_flusher`` (writes,
flushes, the SIGTERM save), ``_preemption`` (the SIGTERM handler), ``_cluster``
(which worker writes), ``_backup_sync`` (saves in step with BackupAndRestore, the
fit's end), ``_destination`` (the writability check), ``_exit_save`` (saving at exit).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from trainer_callbacks import _arguments, _exit_save, _values, document, limits
from trainer_callbacks._aligned_document import AlignedDocument
from trainer_callbacks._backup_sync import FitHooks
from trainer_callbacks._cluster import role_from_env
from trainer_callbacks._destination import DestinationError, check_writable
from trainer_callbacks._flusher import Writer
from trainer_callbacks._preemption import Preemption, TrainingTerminated
from trainer_callbacks._resume import READY, TO_READ, UNDECIDED, Resume
from trainer_callbacks.storage import DEFAULT_FILENAME, MetricsSaveError, MetricsStore, RetryPolicy

logger = logging.getLogger("trainer_callbacks")

__all__ = ["DestinationError", "MetricsCollector", "TrainingTerminated"]

FINAL_PREFIXES = ("final_", "test_")
# Periodic flushes run in the background; a final save waits for one in flight,
# so their backoff is short: a flush that gives up is replaced by the next one.
DEFAULT_FLUSH_RETRY = RetryPolicy(initial=1.0, maximum=8.0, deadline=30.0, timeout=20.0)
# An error message is one line of context, not a log: the exception's own text, clipped.
_ERROR_CHARS = min(4000, limits.MAX_ERROR_LENGTH or 4000)


class MetricsCollector:
    """Collects a run's metrics in memory and saves them as one training_metrics.json.

    Nothing touches the network until a save, except the one writability check when
    training starts and the one read of the file a restarted run continues. Every
    per-epoch series is aligned to ``epochs``. Used as a context manager (the
    documented way), it saves ``completed`` when the block ends and ``failed`` (with
    the error) when it raises, then re-raises; logging after the block raises.
    Without the block it saves ``completed`` when ``fit()`` ends, and whatever is
    unsaved at interpreter exit (``failed`` on an uncaught exception).

    A second ``fit()`` from epoch 0 on the same collector continues the document
    after its last epoch (recorded in ``fits``). A restart continues the file only
    past epoch 0 and only if it is this run's (``run_id``); see the README.

    Args:
        output_path: ``gs://BUCKET/FOLDER`` or a local folder (``file://`` accepted);
            anything else shaped like a URL raises ``ValueError``.
        resume: None (default: continue the file when Keras starts past epoch 0),
            True (always continue, read at ``__enter__``) or False (never read).
        flush_every: seconds between background saves with status ``running``
            (default None: none; BackupAndRestore's backups bring saves of their own).
        filename: the file's base name (default ``training_metrics.json``).
        retry: backoff of the final save (default 1 s doubling to 32 s, 300 s in all).
        flush_retry: backoff of flushes and of the saves made with backups (default 30 s in all).
        fallback_dir: where a document that could not be saved is kept (default ``$TMPDIR/trainer_callbacks``).
        client: a ``google.cloud.storage.Client`` (default: created at the first GCS use).
        save_on_sigterm: turn SIGTERM into a ``failed`` save then exit 143 (default True).
        sigterm_deadline: seconds the SIGTERM save may spend uploading, after writing
            the local copy (default 25, within Vertex AI's 30 s grace period).
        check_destination: check once when training starts that the destination can be
            written (default True); False skips it.
        run_id: this run's identity (default: ``CLOUD_ML_JOB_ID`` where Vertex AI sets it, else generated).

    Example::

        with MetricsCollector("gs://ml-artifacts/quick_tests/42") as collector:
            model.fit(ds, epochs=2, callbacks=[MetricsCallback(collector)])
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
        sigterm_deadline: float = 25.0,
        check_destination: bool = True,
        run_id: str | None = None,
    ) -> None:
        self.resume = _arguments.resume_mode(resume)
        self.flush_every = _arguments.positive_seconds("flush_every", flush_every, optional=True)
        self.sigterm_deadline = _arguments.positive_seconds("sigterm_deadline", sigterm_deadline, optional=False)
        self.save_on_sigterm = _arguments.flag("save_on_sigterm", save_on_sigterm)
        self.check_destination = _arguments.flag("check_destination", check_destination)
        self.store = MetricsStore(output_path, filename=filename, retry=retry, fallback_dir=fallback_dir, client=client)
        self.flush_retry = flush_retry or DEFAULT_FLUSH_RETRY
        self.role = role_from_env(os.environ)
        self._resume = Resume(self.store, mode=self.resume, run_id=_arguments.run_id(run_id), job_id=os.environ.get("CLOUD_ML_JOB_ID"))
        self._writer = Writer(self.store, self.flush_retry)
        self._preemption = Preemption()
        self._lock = threading.RLock()  # guards the document
        self._doc = AlignedDocument()
        self._saved_changes = 0
        self._in_with = self._closed = self._checked = False
        # Work shared between callbacks of this collector (WeightNormCallback reads the
        # sums of squares WeightStatsCallback computes anyway).
        self.shared: dict[Any, Any] = {}
        # One fit() at a time: its hooks, whether its first epoch was seen, its numbering.
        self._fit_hooks: FitHooks | None = None
        self._fit_callbacks: set[int] = set()
        self._fit_pending = False
        self._fit_epochs: int | None = None
        self._fits_begun = 0
        self._offset = 0
        self._sigterm_for_fit = False
        self._restart_epoch: int | None = None  # where a restarted run starts: later epochs of the file are dropped

    # -- identity -----------------------------------------------------------
    @property
    def uri(self) -> str:
        """Where the document is saved (``gs://...`` or a local file path)."""
        return self.store.uri

    @property
    def is_chief(self) -> bool:
        """Whether this process writes (the chief of a cluster, or the only process)."""
        return self.role.chief

    @property
    def epochs(self) -> list[int]:
        """The epochs logged so far (a copy)."""
        with self._lock:
            self._ensure_loaded()
            return list(self._doc.epochs)

    # -- applying changes -------------------------------------------------------
    def _apply(self, operation: str, *args: Any) -> None:
        """Apply a checked change (journaled while undecided), then act on a SIGTERM that came meanwhile."""
        if self._closed:
            raise RuntimeError(
                f"this MetricsCollector's with block has ended and {self.store.uri} was saved: log inside the block "
                "(nothing logged after it would be saved)"
            )
        with self._lock:
            self._ensure_loaded()
            getattr(self._doc, operation)(*args)
            self._resume.record(operation, args)
            if self._fits_begun:
                self._note_fit_epoch()
        _exit_save.track(self)
        self._preemption.raise_if_pending()

    def _note_fit_epoch(self) -> None:
        last = self._doc.last_epoch()
        if last is not None:
            self._doc.note_fit_epoch(last)

    def _step(self, step: Any) -> int:
        if step is not None:
            return _values.check_step(step) + self._offset
        self._ensure_loaded()
        if not self._doc.epochs:
            raise ValueError("Invalid value for argument `step`. Received: step=None. Expected an epoch index (no epoch is logged yet).")
        return self._doc.epochs[-1]

    # -- where training starts ------------------------------------------------------
    def training_started(self, initial_epoch: int) -> None:
        """Tell the collector the epoch Keras training starts at (the callbacks call it at each epoch begin).

        The first call decides the resume rules (see the class docstring); the first
        call of each ``fit()`` numbers that fit.

        Raises:
            whatever reading the file to continue raised: training must not go on over
            epochs it could not read, and no save replaces that file.
        """
        epoch = _values.check_step(initial_epoch, "initial_epoch")
        with self._lock:
            if not self._resume.start_seen:
                self._decide(epoch)
                self._resume.start_seen = True
            if self._fit_pending:
                self._fit_pending = False
                self._begin_fit(epoch)
        self._preemption.raise_if_pending()

    def _decide(self, epoch: int) -> None:
        resume = self._resume
        why = f"training starts at epoch {epoch}" if self.resume is None else "resume=True"
        if not self.is_chief:
            resume.start_new(self._doc, f"{why} on {self.role.task}, not the chief (nothing is read or written here)")
            return
        if resume.state == UNDECIDED:
            if epoch > 0:
                resume.state = TO_READ
            else:
                resume.start_new(self._doc, why)
        if resume.state == TO_READ:
            self._restart_epoch = epoch if self.resume is None else None
            try:
                self._doc, self._writer.generation = resume.continue_file(self._doc, why, first_epoch=self._restart_epoch)
            except Exception as error:  # noqa: BLE001 - annotated and re-raised
                error.add_note(f"trainer_callbacks: {why}, so {self.store.uri} must be read to be continued")
                raise
        if epoch > 0 and self.resume is not False:
            resume.warn_missing(self._doc, f"training starts at epoch {epoch}", epoch)

    def _ensure_loaded(self) -> None:
        """Read the file to continue (resume=True), if it must be read, before anything else touches the document."""
        if self._resume.state == TO_READ and self.is_chief:
            with self._lock:
                if self._resume.state == TO_READ:
                    why = "resume=True" if self.resume else "continuing the file"
                    self._doc, self._writer.generation = self._resume.continue_file(self._doc, why, first_epoch=self._restart_epoch)

    def _begin_fit(self, epoch: int) -> None:
        """Number a new fit: one from epoch 0 after an earlier fit continues after its last epoch."""
        last = self._doc.last_epoch()
        self._offset = last + 1 if self._fits_begun and epoch == 0 and last is not None else 0
        self._fits_begun += 1
        self._doc.begin_fit(self._offset + epoch, epoch)
        if self._offset:
            logger.info("a new fit() from epoch 0 on this collector: its epochs are numbered from %d", self._offset)
            if self._fit_epochs is not None:
                self._doc.put_param("epochs", self._offset + self._fit_epochs)

    # -- the fit's lifecycle (called by the callbacks; see keras_compat) ----------------
    def _fit_begin(self, callback: Any, callback_list: Any, keras_params: Mapping[str, Any]) -> None:
        """A collector callback's ``on_train_begin``; the first of a fit sets the fit up."""
        if callback_list is not None and self._fit_hooks is not None and self._fit_hooks.callback_list is callback_list:
            return
        if callback_list is None and self._fit_callbacks:
            self._fit_callbacks.add(id(callback))
            return
        if self._closed:
            raise RuntimeError(f"this MetricsCollector's with block has ended and {self.store.uri} was saved; use a new collector for this fit")
        if self.check_destination and self.is_chief and not self._checked:
            check_writable(self.store)  # before the first epoch: a wrong bucket fails now, not hours later
            self._checked = True
        self._fit_pending = True
        epochs = keras_params.get("epochs")
        self._fit_epochs = epochs if isinstance(epochs, int) else None
        if callback_list is not None:
            self._fit_hooks = FitHooks.attach(callback_list, self._save_for_backup, self._fit_end)
        else:
            self._fit_callbacks = {id(callback)}
        if not self._in_with and self.save_on_sigterm:
            self._sigterm_for_fit = self._preemption.install()

    def _callback_train_end(self, callback: Any) -> None:
        """A collector callback's ``on_train_end`` where no callback list was found: the last one ends the fit."""
        if self._fit_hooks is None and id(callback) in self._fit_callbacks:
            self._fit_callbacks.discard(id(callback))
            if not self._fit_callbacks:
                self._fit_end()

    def _fit_end(self) -> None:
        self._fit_hooks = None
        self._fit_pending = False
        if self._sigterm_for_fit:
            self._preemption.uninstall()
            self._sigterm_for_fit = False
        if not self._in_with and not self._closed:
            self.save("completed")  # used without a with block: the run is saved when training ends

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

    def _strategy_says(self, should_write: bool, strategy: str) -> None:
        """The distribution strategy's own view of whether this worker writes (it has the last word)."""
        if should_write != self.role.chief:
            from trainer_callbacks._cluster import Role

            self.role = Role(should_write, self.role.task, f"{strategy}.extended.should_checkpoint")
            logger.info("%s: this worker %s", strategy, "writes the metrics" if should_write else "does not write the metrics")

    # -- logging ----------------------------------------------------------------
    def log_metric(self, name: str, value: Any, step: int | None = None) -> None:
        """Record one value.

        With a ``step`` (the epoch of the current ``fit()``) it joins a per-epoch
        series: names containing ``loss`` go to ``loss``, everything else to
        ``metrics``. Names starting ``final_`` or ``test_``, and values logged without
        a step, are end-of-run values (``final_metrics``); a ``final_``/``test_`` name
        logged with a step at several epochs also keeps its series in ``metrics``.

        Raises:
            ValueError: naming the argument: a name the format refuses, a step that
                is not a whole number >= 0, a value that is not one number.
            RuntimeError: the ``with`` block has ended.
        """
        if not isinstance(name, str):
            limits.check_name(name, argument="name", section="metrics")  # raises, naming the argument
        final = step is None or name.startswith(FINAL_PREFIXES)
        section = "final_metrics" if final else "loss" if "loss" in name else "metrics"
        limits.check_name(name, argument="name", section=section)
        checked = None if step is None else _values.check_step(step) + self._offset
        number = _values.number(value, "value", f" of metric {name!r}")
        if final:
            self._apply("put_final", name, number, checked)
        else:
            self._apply("put_series", section, name, checked, number)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """:meth:`log_metric` for each item."""
        for name, value in metrics.items():
            self.log_metric(name, value, step=step)

    def log_param(self, name: str, value: Any) -> None:
        """Record a hyperparameter: numbers and bools as such, dicts and lists as JSON text, anything else as a string.

        Raises:
            ValueError: naming the argument: a name the format refuses, a string longer
                than the schema's bound (6,000 characters) or holding NUL or a lone
                surrogate, an integer too large for a JSON number.
        """
        self._apply("put_param", name, _values.param(name, value))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """:meth:`log_param` for each item."""
        for name, value in params.items():
            self.log_param(name, value)

    def log_weight_norms(self, norms: Mapping[str, Any], step: int | None = None) -> None:
        """Record weight L2 norms (``total`` and one per tower) in ``gradient`` (the platform's historical name)."""
        checked = {limits.check_name(n, argument="norms", section="gradient"): _values.number(v, f"norms[{n!r}]") for n, v in norms.items()}
        with self._lock:
            step = self._step(step)
        self._apply("put_norms", checked, step)

    def log_timing(self, values: Mapping[str, float | int | None], step: int | None = None) -> None:
        """Record what an epoch cost (``epoch_seconds``, ``steps_per_second``...) in ``timing``, aligned to epochs."""
        checked = {limits.check_name(n, argument="values", section="timing"): _values.number(v, f"values[{n!r}]") for n, v in values.items()}
        with self._lock:
            step = self._step(step)
        self._apply("put_timing", checked, step)

    def record_callback_error(self, callback: str, epoch: int | None, error: str) -> None:
        """Record in ``callback_errors`` that ``callback`` failed at ``epoch`` (None: outside an epoch) and why."""
        limits.check_name(callback, argument="callback", section="params")
        at = None if epoch is None else _values.check_step(epoch, "epoch") + self._offset
        self._apply("put_callback_error", callback, at, str(error))

    def log_weight_stats(self, tower: str, stats: Mapping[str, Any], histogram: Mapping[str, Any] | None = None, step: int | None = None) -> None:
        """Record one epoch's weight statistics of a tower (``mean``, ``std``, ``min``, ``max``; a histogram
        ``{"bin_edges": [B+1], "counts": [B]}`` whose edges stay the same for the run)."""
        self._log_stats("weight_stats", tower, stats, histogram, step)

    def log_gradient_stats(self, tower: str, stats: Mapping[str, Any], histogram: Mapping[str, Any] | None = None, step: int | None = None) -> None:
        """Like :meth:`log_weight_stats` for gradients; ``stats`` may also hold ``norm``."""
        self._log_stats("gradient_stats", tower, stats, histogram, step)

    def _log_stats(self, section: str, tower: str, stats: Mapping[str, Any], histogram: Mapping[str, Any] | None, step: int | None) -> None:
        numbers = _values.check_stats(section, tower, stats)
        checked = None if histogram is None else _values.check_histogram(histogram)
        with self._lock:
            step = self._step(step)
        self._apply("put_stats", section, tower, numbers, checked, step)

    def histogram_edges(self, section: str, tower: str) -> list[float] | None:
        """The bin edges already fixed for a tower (a resumed run keeps them), or None."""
        with self._lock:
            self._ensure_loaded()
            histogram = self._doc.data[section].get(tower, {}).get("histogram")
            return list(histogram["bin_edges"]) if histogram else None

    # -- output -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the document as it would be saved now."""
        with self._lock:
            self._ensure_loaded()
            return copy.deepcopy(self._doc.data)

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

    # -- the with block, SIGTERM, exit ----------------------------------------------------------
    def __enter__(self) -> MetricsCollector:
        # With resume=True, read the existing file now: a file that cannot be continued
        # (or GCS that cannot be reached) stops the job before it trains.
        self._ensure_loaded()
        self._in_with = True
        if self.save_on_sigterm:
            self._preemption.install()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._preemption.uninstall()
        self._in_with = False
        try:
            if exc is None:
                self.save(status="completed")
            elif isinstance(exc, TrainingTerminated) or self._preemption.received is not None:
                self._save_terminated(exc)
            else:
                try:
                    self.save(status="failed", error=exc)
                except (MetricsSaveError, OSError) as save_error:
                    # The training error is the one to surface; the save error names the local copy.
                    logger.error("saving the failed run's metrics also failed: %s", save_error)
                    exc.add_note(f"trainer_callbacks: saving the metrics also failed: {save_error}")
        finally:
            self._closed = True
            _exit_save.untrack(self)
        # Returning None re-raises the original exception.

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
