"""Keras callbacks and an in-memory MetricsCollector that write one training_metrics.json.

``MetricsCollector`` needs no TensorFlow; the callbacks import it on first use,
subclassing the Keras that ``tf.keras`` resolves to (Keras 3, or tf-keras with
``TF_USE_LEGACY_KERAS=1``).

Example::

    from trainer_callbacks import MetricsCollector, MetricsCallback, WeightNormCallback, \\
        WeightStatsCallback, GradientStatsCallback

    with MetricsCollector("gs://bucket/quick_tests/42") as collector:
        model.fit(ds, epochs=50, callbacks=[
            MetricsCallback(collector), WeightNormCallback(collector),
            WeightStatsCallback(collector), GradientStatsCallback(collector, probe_batch)])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trainer_callbacks._destination import DestinationError
from trainer_callbacks._preemption import TrainingTerminated
from trainer_callbacks.collector import MetricsCollector
from trainer_callbacks.storage import MetricsSaveError, MetricsUploadError, RetryPolicy

if TYPE_CHECKING:  # static analysis sees the callbacks; at run time they load lazily (TensorFlow)
    from trainer_callbacks.gradient_stats import GradientStatsCallback
    from trainer_callbacks.metrics_callback import MetricsCallback
    from trainer_callbacks.weight_norm import WeightNormCallback
    from trainer_callbacks.weight_stats import WeightStatsCallback

__all__ = [
    "DestinationError",
    "GradientStatsCallback",
    "MetricsCallback",
    "MetricsCollector",
    "MetricsSaveError",
    "MetricsUploadError",
    "RetryPolicy",
    "TrainingTerminated",
    "WeightNormCallback",
    "WeightStatsCallback",
]

_CALLBACKS = {
    "MetricsCallback": "trainer_callbacks.metrics_callback",
    "WeightNormCallback": "trainer_callbacks.weight_norm",
    "WeightStatsCallback": "trainer_callbacks.weight_stats",
    "GradientStatsCallback": "trainer_callbacks.gradient_stats",
}


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str) -> Any:
    # TensorFlow is imported only when a callback is first used.
    if name in _CALLBACKS:
        return getattr(importlib.import_module(_CALLBACKS[name]), name)
    raise AttributeError(f"module 'trainer_callbacks' has no attribute {name!r}")
