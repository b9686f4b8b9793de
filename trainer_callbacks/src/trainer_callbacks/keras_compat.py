"""The Keras the model uses: Keras 3 by default, tf-keras with TF_USE_LEGACY_KERAS=1.

``tf.keras`` follows ``TF_USE_LEGACY_KERAS`` (read when TensorFlow is imported), so
subclassing ``tf.keras.callbacks.Callback`` gives callbacks of the same flavour as
the models built in this process (TensorFlow Recommenders builds on ``tf.keras``).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import tensorflow as tf

from trainer_callbacks._backup_sync import find_callback_list

logger = logging.getLogger("trainer_callbacks")

Callback = tf.keras.callbacks.Callback

F = TypeVar("F", bound=Callable[..., Any])


def _unsupported_strategy(strategy: Any) -> str | None:
    """Why the collector refuses ``strategy``, or None. Parameter servers run callbacks on the
    coordinator while variables live elsewhere, and TPUs were never tried: both refused, plainly."""
    refused = [tf.distribute.TPUStrategy, tf.distribute.experimental.ParameterServerStrategy]
    refused += [getattr(tf.distribute, "ParameterServerStrategy", refused[-1]), tf.distribute.experimental.TPUStrategy]
    if isinstance(strategy, tuple(refused)):
        return (
            f"trainer_callbacks does not support {type(strategy).__name__}: it supports no strategy, "
            "MirroredStrategy and MultiWorkerMirroredStrategy. Train without the trainer_callbacks callbacks "
            "under this strategy, or log values yourself with collector.log_metric on the chief."
        )
    return None


class CollectorCallback(Callback):
    """A callback that writes into a MetricsCollector and keeps it informed of the fit.

    Whatever a subclass overrides, these run around its hooks (``__init_subclass__``):
    before ``on_train_begin``, the fit is set up on the collector (the distribution
    strategy checked and asked which worker writes, the destination checked once,
    BackupAndRestore hooked so the file is saved with each backup); before each
    ``on_epoch_begin``, ``collector.training_started(epoch)`` (a run restored past
    epoch 0 continues the file). These are deliberately not :func:`guarded`: a
    destination that cannot be written, or a file to continue that cannot be read,
    stops training rather than go on towards a save that would fail or replace
    epochs it never read.

    Args:
        collector: the MetricsCollector to write into.
    """

    def __init__(self, collector: Any) -> None:
        super().__init__()
        from trainer_callbacks.collector import MetricsCollector

        if not isinstance(collector, MetricsCollector):
            raise ValueError(
                f"Invalid value for argument `collector`. Received: collector={collector!r}. Expected a MetricsCollector."
            )
        self.collector = collector

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, hook in (("on_train_begin", _before_train_begin), ("on_epoch_begin", _before_epoch_begin),
                           ("on_train_end", _after_train_end)):
            own = cls.__dict__.get(name)
            if own is not None and not getattr(own, "_collector_hook", False):
                setattr(cls, name, hook(own))

    def on_train_begin(self, logs: Any = None) -> None:
        _fit_begin(self, sys._getframe(1))

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.collector.training_started(epoch)

    def on_train_end(self, logs: Any = None) -> None:
        self.collector._callback_train_end(self)


def _fit_begin(callback: CollectorCallback, frame: Any) -> None:
    model = getattr(callback, "model", None)
    strategy = getattr(model, "distribute_strategy", None) if model is not None else None
    if strategy is None and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    if strategy is not None:
        refusal = _unsupported_strategy(strategy)
        if refusal:
            raise ValueError(refusal)
        if type(strategy).__name__ != "_DefaultDistributionStrategy":
            callback.collector._strategy_says(bool(strategy.extended.should_checkpoint), type(strategy).__name__)
    callback.collector._fit_begin(callback, find_callback_list(frame), dict(getattr(callback, "params", None) or {}))


def _before_train_begin(hook: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(hook)
    def wrapper(self: Any, logs: Any = None) -> Any:
        _fit_begin(self, sys._getframe(1))
        return hook(self, logs)

    wrapper._collector_hook = True  # type: ignore[attr-defined]
    return wrapper


def _before_epoch_begin(hook: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(hook)
    def wrapper(self: Any, epoch: int, logs: Any = None) -> Any:
        self.collector.training_started(epoch)
        return hook(self, epoch, logs)

    wrapper._collector_hook = True  # type: ignore[attr-defined]
    return wrapper


def _after_train_end(hook: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(hook)
    def wrapper(self: Any, logs: Any = None) -> Any:
        try:
            return hook(self, logs)
        finally:
            self.collector._callback_train_end(self)

    wrapper._collector_hook = True  # type: ignore[attr-defined]
    return wrapper


def guarded(hook: F) -> F:
    """Run a callback hook so that a failure in it cannot end the training run.

    The first failure is logged with its traceback, recorded in the document's
    ``callback_errors`` (which callback, at which epoch, why) and the callback
    turns itself off (``self.disabled``): a broken statistic should cost a
    warning and a visible note in the run's file, not a job.
    """

    @functools.wraps(hook)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "disabled", False):
            return None
        try:
            return hook(self, *args, **kwargs)
        except Exception as error:
            self.disabled = True
            logger.warning(
                "%s.%s failed; this callback is disabled for the rest of the run (training continues)",
                type(self).__name__, hook.__name__, exc_info=True,
            )
            record_failure(self, hook.__name__, _epoch_argument(hook.__name__, args, kwargs), error)
            return None

    return wrapper  # type: ignore[return-value]


def _epoch_argument(hook_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    epoch = kwargs.get("epoch", args[0] if args and "epoch" in hook_name else None)
    return epoch if type(epoch) is int and epoch >= 0 else None


def record_failure(callback: Any, where: str, epoch: int | None, error: BaseException) -> None:
    """Note in the collector's document that ``callback`` failed (in hook ``where``) and why."""
    reason = f"{where}: {type(error).__name__}: {error}"
    try:
        callback.collector.record_callback_error(type(callback).__name__, epoch, reason)
    except (ValueError, TypeError, RuntimeError) as problem:  # the note is best effort: training goes on
        logger.warning("could not record %s's failure in the document: %s", type(callback).__name__, problem)
