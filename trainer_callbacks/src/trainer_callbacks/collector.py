"""MetricsCollector: everything a training run reports, in memory, saved as one file.

The rules live in private modules, one job each: ``_aligned_document`` (the
document, aligned by construction), ``_arguments`` (what the constructor accepts),
``_resume`` (when a file is continued and what of it is kept), ``_fits`` (one fit()
after another), ``_saving`` (what a save writes, and when), ``_flusher`` (writes,
flushes, the SIGTERM save), ``_preemption`` (the SIGTERM handler), ``_cluster``
(which worker writes), ``_backup_sync`` (saves in step with BackupAndRestore, the
fit's end), ``_destination`` (the writability check), ``_exit_save`` (saving at exit).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from trainer_callbacks import _arguments, _exit_save, _values, limits
from trainer_callbacks._aligned_document import AlignedDocument
from trainer_callbacks._cluster import role_from_env
from trainer_callbacks._destination import DestinationError, check_writable
from trainer_callbacks._fits import Fits
from trainer_callbacks._flusher import Writer
from trainer_callbacks._preemption import Preemption, TrainingTerminated
from trainer_callbacks._resume import TO_READ, UNDECIDED, Resume
from trainer_callbacks._saving import Saving
from trainer_callbacks.storage import DEFAULT_FILENAME, MetricsSaveError, MetricsStore, RetryPolicy

logger = logging.getLogger("trainer_callbacks")

__all__ = ["DestinationError", "MetricsCollector", "TrainingTerminated"]

FINAL_PREFIXES = ("final_", "test_")
# Periodic flushes run in the background; a final save waits for one in flight,
# so their backoff is short: a flush that gives up is replaced by the next one.
DEFAULT_FLUSH_RETRY = RetryPolicy(initial=1.0, maximum=8.0, deadline=30.0, timeout=20.0)


class MetricsCollector(Saving):
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
        # What Vertex AI and TensorFlow tell a job through the environment, read here, once.
        env = os.environ
        self.store = MetricsStore(output_path, filename=filename, retry=retry, fallback_dir=fallback_dir, client=client,
                                  durable_dir=env.get("AIP_CHECKPOINT_DIR") or None)
        self.flush_retry = flush_retry or DEFAULT_FLUSH_RETRY
        self.role = role_from_env(env)  # TF_CONFIG, CLUSTER_SPEC
        self._resume = Resume(self.store, mode=self.resume, run_id=_arguments.run_id(run_id), job_id=env.get("CLOUD_ML_JOB_ID") or None)
        self._writer = Writer(self.store, self.flush_retry)
        self._preemption = Preemption()
        self._lock = threading.RLock()  # guards the document
        self._doc = AlignedDocument()
        self._saved_changes = 0
        self._in_with = self._closed = self._checked = self._tracked = False
        # Work shared between callbacks of this collector (WeightNormCallback reads the
        # sums of squares WeightStatsCallback computes anyway).
        self.shared: dict[Any, Any] = {}
        self._fits = Fits()  # one fit() at a time: its callbacks, its hooks, its numbering
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
            if self._fits.begun:
                self._note_fit_epoch()
        if not self._tracked:  # saved at interpreter exit if it is never saved otherwise
            self._tracked = True
            _exit_save.track(self)
        self._preemption.raise_if_pending()

    def _note_fit_epoch(self) -> None:
        last = self._doc.last_epoch()
        if last is not None:
            self._doc.note_fit_epoch(last)

    def _step(self, step: Any) -> int:
        if step is not None:
            return _values.check_step(step) + self._fits.offset
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
            if self._fits.pending:
                self._fits.number(self._doc, epoch)
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

    def _fit_begin(self, callback: Any, callback_list: Any, keras_params: Mapping[str, Any]) -> None:
        """A collector callback's ``on_train_begin``; the first of a fit sets the fit up."""
        if self._fits.joins_open_fit(callback, callback_list):
            return
        if self._closed:
            raise RuntimeError(f"this MetricsCollector's with block has ended and {self.store.uri} was saved; use a new collector for this fit")
        if self.check_destination and self.is_chief and not self._checked:
            check_writable(self.store)  # before the first epoch: a wrong bucket fails now, not hours later
            self._checked = True
        self._fits.open(callback, callback_list, keras_params, self._save_for_backup, self._fit_end)
        if not self._in_with and self.save_on_sigterm:
            self._fits.sigterm_installed = self._preemption.install()

    def _callback_train_end(self, callback: Any) -> None:
        """A collector callback's ``on_train_end`` where no callback list was found: the last one ends the fit."""
        if self._fits.callback_ended(callback):
            self._fit_end()

    def _fit_end(self) -> None:
        self._fits.close()
        if self._fits.sigterm_installed:
            self._preemption.uninstall()
            self._fits.sigterm_installed = False
        if not self._in_with and not self._closed:
            self.save("completed")  # used without a with block: the run is saved when training ends

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
        checked = None if step is None else _values.check_step(step) + self._fits.offset
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
                than the schema's bound (8,000 characters) or holding NUL or a lone
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
        at = None if epoch is None else _values.check_step(epoch, "epoch") + self._fits.offset
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
        # During the final save a SIGTERM is noted, not raised: the save finishes (Vertex AI's
        # SIGKILL comes after its grace period), and the handler goes back only then.
        self._preemption.quiet = True
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
            self._preemption.uninstall()
            self._preemption.quiet = False
            _exit_save.untrack(self)
        # Returning None re-raises the original exception.

