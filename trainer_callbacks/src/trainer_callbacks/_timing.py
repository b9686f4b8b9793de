"""What each epoch cost: wall time, steps and examples per second, peak memory.

No thread samples anything: one clock read and one read of the optimizer's step
counter at each epoch's begin and end, the process's peak resident memory from
``getrusage``, and the first GPU's peak from TensorFlow's allocator (reset at each
epoch begin, so it is that epoch's peak).
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

logger = logging.getLogger("trainer_callbacks")

# ru_maxrss is in kilobytes on Linux, in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


def host_peak_bytes() -> int:
    """The process's peak resident memory since it started, in bytes."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * _MAXRSS_UNIT


def _first_gpu() -> str | None:
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else None


def _steps(model: Any) -> int | None:
    optimizer = getattr(model, "optimizer", None)
    iterations = getattr(optimizer, "iterations", None)
    if iterations is None:
        return None
    try:
        return int(iterations.numpy() if hasattr(iterations, "numpy") else iterations)
    except (TypeError, ValueError, tf.errors.OpError):
        return None


class EpochClock:
    """Times one epoch at a time; :meth:`stop` returns the ``timing`` values of the epoch.

    Example::

        clock = EpochClock()
        clock.start(model)            # on_epoch_begin
        values = clock.stop(model, keras_params, user_params)   # on_epoch_end
        # {"epoch_seconds": 1.93, "steps_per_second": 259.1, "examples_per_second": 16582.4, ...}
    """

    def __init__(self) -> None:
        self._started: float | None = None
        self._steps: int | None = None
        self._device: str | None = None
        self._device_known = False
        self._device_reports = True

    def start(self, model: Any) -> None:
        if not self._device_known:
            self._device, self._device_known = _first_gpu(), True
        if self._device is not None and self._device_reports:
            try:
                tf.config.experimental.reset_memory_stats(self._device)
            except (ValueError, RuntimeError, tf.errors.OpError) as error:
                logger.info("device memory is not reported on %s: %s", self._device, error)
                self._device_reports = False
        self._steps = _steps(model)
        self._started = time.perf_counter()

    def stop(self, model: Any, keras_params: Mapping[str, Any], user_params: Mapping[str, Any]) -> dict[str, float | int | None] | None:
        """The epoch's timing, or None when no epoch was started (an epoch end without its begin)."""
        if self._started is None:
            return None
        seconds = time.perf_counter() - self._started
        self._started = None
        steps_now = _steps(model)
        if self._steps is not None and steps_now is not None and steps_now >= self._steps:
            steps: int | None = steps_now - self._steps
        else:
            steps = keras_params.get("steps") if isinstance(keras_params.get("steps"), int) else None
        batch_size = user_params.get("batch_size", keras_params.get("batch_size"))
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            batch_size = None
        rate = steps / seconds if steps is not None and seconds > 0 else None
        return {
            "epoch_seconds": seconds,
            "steps_per_second": rate,
            # The last, partial batch counts as a whole one.
            "examples_per_second": rate * batch_size if rate is not None and batch_size is not None else None,
            "host_peak_bytes": host_peak_bytes(),
            "device_peak_bytes": self._device_peak(),
        }

    def _device_peak(self) -> int | None:
        if self._device is None or not self._device_reports:
            return None
        try:
            return int(tf.config.experimental.get_memory_info(self._device)["peak"])
        except (ValueError, RuntimeError, tf.errors.OpError) as error:
            logger.info("device memory is not reported on %s: %s", self._device, error)
            self._device_reports = False
            return None
