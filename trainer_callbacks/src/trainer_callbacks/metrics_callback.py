"""MetricsCallback: every epoch log, the run's parameters and its final values."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from trainer_callbacks.collector import MetricsCollector
from trainer_callbacks.document import NotAScalar, to_number
from trainer_callbacks.keras_compat import CollectorCallback, guarded
from trainer_callbacks.limits import clipped_repr
from trainer_callbacks._timing import EpochClock

logger = logging.getLogger("trainer_callbacks")


def _learning_rate(optimizer: Any) -> Any:
    """The optimizer's current learning rate (a schedule is evaluated at the current step)."""
    rate = getattr(optimizer, "learning_rate", None)
    if rate is None:
        return None
    if callable(rate) and not hasattr(rate, "numpy"):
        rate = rate(optimizer.iterations)
    return to_number(rate)


class MetricsCallback(CollectorCallback):
    """Logs every metric Keras reports at each epoch end into a MetricsCollector.

    All keys of the epoch logs are kept (``val_*`` only appear on validation
    epochs; the collector leaves nulls in between). At train begin it records the
    run's parameters (epochs, steps, optimizer and learning rate when known, plus
    ``params``); each epoch it also records ``learning_rate`` when Keras does not;
    at train end it records ``final_<name>`` for each series (its last non-null
    value). Passed to ``model.evaluate``, it records the results as ``test_<name>``.
    At each epoch begin it lets the collector flush (see ``flush_every``), so a
    flushed file holds complete epochs. At each epoch end it records what the
    epoch cost in ``timing``: ``epoch_seconds`` (this callback's epoch begin to
    its epoch end), ``steps_per_second``, ``examples_per_second`` (when
    ``batch_size`` is in Keras's or these ``params``), ``host_peak_bytes`` (the
    process's peak resident memory so far) and ``device_peak_bytes`` (the first
    GPU's peak during the epoch; null without one). No thread samples anything:
    a clock, the optimizer's step counter and two memory queries per epoch.

    Args:
        collector: the MetricsCollector to write into.
        params: extra hyperparameters to record at train begin (default none),
            e.g. ``{"batch_size": 2048, "embedding_dim": 32}``.

    Example:

    ```python
    with MetricsCollector("/tmp/run") as collector:
        model.fit(ds, epochs=3, validation_data=val, validation_freq=2,
                  callbacks=[MetricsCallback(collector, params={"batch_size": 64})])
    ```
    """

    def __init__(self, collector: MetricsCollector, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(collector)
        if params is not None and not isinstance(params, Mapping):
            raise ValueError(
                f"Invalid value for argument `params`. Received: params={clipped_repr(params)}. "
                'Expected a mapping of parameter names to values, e.g. {"batch_size": 64}, or None.'
            )
        self.extra_params = dict(params or {})
        self._clock = EpochClock()
        self._names: set[str] = set()
        self._in_fit = False
        self._warned: set[str] = set()

    @guarded
    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._names = set()
        self._in_fit = True
        keras_params = dict(getattr(self, "params", None) or {})
        recorded: dict[str, Any] = {k: keras_params[k] for k in ("epochs", "steps", "batch_size") if keras_params.get(k) is not None}
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            recorded["optimizer"] = type(optimizer).__name__.lower()
            rate = getattr(optimizer, "learning_rate", None)
            if rate is not None and callable(rate) and not hasattr(rate, "numpy"):
                recorded["learning_rate_schedule"] = type(rate).__name__
            try:
                recorded["learning_rate"] = _learning_rate(optimizer)
            except (NotAScalar, TypeError, ValueError):
                logger.info("the optimizer's learning rate is not a number; not recorded")
        recorded.update(self.extra_params)
        self.collector.log_params(recorded)

    @guarded
    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        timing = self._clock.stop(self.model, dict(getattr(self, "params", None) or {}), self.extra_params)
        if timing is not None:
            self.collector.log_timing(timing, step=epoch)
        logs = dict(logs or {})
        if "learning_rate" not in logs and "lr" not in logs and getattr(self.model, "optimizer", None) is not None:
            try:
                logs["learning_rate"] = _learning_rate(self.model.optimizer)
            except (NotAScalar, TypeError, ValueError):
                logger.debug("learning rate not readable at epoch %s", epoch)
        for name, value in logs.items():
            self._log(name, value, epoch)

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        # First where training starts (a restored run continues the file; not
        # guarded, see CollectorCallback), then the flush.
        super().on_epoch_begin(epoch, logs)
        self._flush(epoch)
        if not getattr(self, "disabled", False):
            self._clock.start(self.model)  # last, so the flush is not counted in the epoch

    @guarded
    def _flush(self, epoch: int) -> None:
        # Flushing here rather than at the previous epoch's end means the other
        # callbacks (which may come after this one in the list) have logged it too.
        self.collector.maybe_flush()

    def _log(self, name: str, value: Any, step: int | None) -> None:
        try:
            self.collector.log_metric(name, value, step=step)
        except ValueError as error:
            if name not in self._warned:
                self._warned.add(name)
                logger.warning("metric %r is not a number and is not recorded: %s", name, error)
            return
        if step is not None:
            self._names.add(name)

    @guarded
    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        self._in_fit = False
        document = self.collector.to_dict()
        for name in sorted(self._names):
            section = "loss" if "loss" in name else "metrics"
            series = document[section].get(name, [])
            last = next((v for v in reversed(series) if v is not None), None)
            self.collector.log_metric(f"final_{name}", last)

    @guarded
    def on_test_end(self, logs: Mapping[str, Any] | None = None) -> None:
        if self._in_fit:  # validation inside fit: already in the epoch logs as val_*
            return
        for name, value in (logs or {}).items():
            self._log(name if name.startswith("test_") else f"test_{name}", value, None)
