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


def guarded(hook: F) -> F:
    """Run a callback hook so that a failure in it cannot end the training run.

    The first failure is logged with its traceback and the callback turns itself
    off (``self.disabled``): a broken statistic should cost a warning, not a job.
    """

    @functools.wraps(hook)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "disabled", False):
            return None
        try:
            return hook(self, *args, **kwargs)
        except Exception:
            self.disabled = True
            logger.warning(
                "%s.%s failed; this callback is disabled for the rest of the run (training continues)",
                type(self).__name__, hook.__name__, exc_info=True,
            )
            return None

    return wrapper  # type: ignore[return-value]
