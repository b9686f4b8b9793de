"""The Keras the model uses: Keras 3 by default, tf-keras with TF_USE_LEGACY_KERAS=1.

``tf.keras`` follows ``TF_USE_LEGACY_KERAS`` (read when TensorFlow is imported), so
subclassing ``tf.keras.callbacks.Callback`` gives callbacks of the same flavour as
the models built in this process (TensorFlow Recommenders builds on ``tf.keras``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import tensorflow as tf

logger = logging.getLogger("trainer_callbacks")

Callback = tf.keras.callbacks.Callback

F = TypeVar("F", bound=Callable[..., Any])


class CollectorCallback(Callback):
    """A callback that writes into a MetricsCollector and tells it where training starts.

    At each epoch begin it calls ``collector.training_started(epoch)`` (only the
    first call of a run does anything): training restored past epoch 0 by
    ``BackupAndRestore`` continues the existing file. This hook is deliberately
    not :func:`guarded`: if the file to continue cannot be read, training stops
    rather than go on towards a save that would replace epochs it never read.

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

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.collector.training_started(epoch)


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
