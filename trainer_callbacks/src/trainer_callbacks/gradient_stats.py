"""GradientStatsCallback: per-tower gradient statistics on a fixed probe batch."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from trainer_callbacks.collector import MetricsCollector
from trainer_callbacks.keras_compat import CollectorCallback, guarded
from trainer_callbacks.stats import TowerStatsProgram, dense_gradient
from trainer_callbacks.towers import TowerSpec, resolve_towers
from trainer_callbacks.weight_stats import validate_histogram_args
from trainer_callbacks.weight_summary import fixed_ranges

# Non-trainable variables up to this size are restored after the probe's
# training-mode forward pass (BatchNorm moving statistics, dropout seeds), so the
# probe leaves no trace in the model. Larger ones (lookup tables, top-k indexes)
# are not updated by a forward pass, and copying them would cost a pass over memory.
_RESTORE_MAX_ELEMENTS = 1 << 20


def _restorable(variable: Any) -> bool:
    # Keras 3 variables report dtype and shape as a string and a tuple, tf-keras's as tf types.
    dtype = tf.as_dtype(variable.dtype)
    shape = tuple(variable.shape)
    if None in shape or not (dtype.is_floating or dtype.is_integer):
        return False
    return int(np.prod(shape, dtype=np.int64)) <= _RESTORE_MAX_ELEMENTS


def unpack_batch(batch: Any) -> tuple[Any, Any, Any]:
    """``(x, y, sample_weight)`` from a batch as a Keras dataset yields it."""
    if isinstance(batch, tuple | list):
        if not 1 <= len(batch) <= 3:
            raise ValueError(f"a Keras batch is (x,), (x, y) or (x, y, sample_weight); got a sequence of {len(batch)}")
        return (tuple(batch) + (None, None))[:3]
    return batch, None, None


def default_loss_fn(model: Any) -> Callable[[Any], tf.Tensor]:
    """The model's own training loss on a batch.

    A TensorFlow Recommenders model: ``model.compute_loss(batch, training=True)``.
    A Keras model: ``model.compute_loss(x, y, y_pred, sample_weight)`` (the compiled
    loss plus regularization losses), with ``training=True`` where the Keras
    version accepts it.
    """
    tfrs = sys.modules.get("tensorflow_recommenders")
    if tfrs is not None and isinstance(model, tfrs.models.Model):
        return lambda batch: model.compute_loss(batch, training=True)
    accepts_training = "training" in inspect.signature(model.compute_loss).parameters

    def keras_loss(batch: Any) -> tf.Tensor:
        x, y, sample_weight = unpack_batch(batch)
        y_pred = model(x, training=True)
        kwargs = {"x": x, "y": y, "y_pred": y_pred, "sample_weight": sample_weight}
        if accepts_training:
            kwargs["training"] = True
        return model.compute_loss(**kwargs)

    return keras_loss


class GradientStatsCallback(CollectorCallback):
    """Records each tower's gradient mean, std, min, max, norm and histogram at every epoch end.

    Gradients of the model's own loss on one fixed probe batch are taken with
    ``tf.GradientTape`` and summarised with TensorFlow ops in the same compiled
    function (the approach of other trackers' Keras integrations, which log
    gradients on a sample batch rather than slowing every step). An embedding's
    gradient covers the rows the probe looked up, each once. Histogram edges are
    fixed at the first epoch (see WeightStatsCallback). The probe's forward pass
    runs in training mode; small non-trainable state it updates (BatchNorm
    statistics) is restored afterwards.

    Args:
        collector: the MetricsCollector to write into.
        probe_batch: one batch exactly as the training dataset yields it: a
            features dict for a TensorFlow Recommenders model, ``(x, y)`` or
            ``(x, y, sample_weight)`` for a Keras model.
        towers: tower name -> layer, model attribute name or variables (default:
            ``query_model``/``candidate_model`` when present, else ``model``).
        bins: histogram bins (int, default 50).
        margin: histogram range as a multiple of the first epoch's largest
            magnitude (float >= 1, default 2.0).
        loss_fn: ``loss_fn(batch) -> scalar loss`` to use instead of the model's
            own (default None: see :func:`default_loss_fn`).

    Example:

    ```python
    probe = next(iter(train_ds))
    model.fit(train_ds, epochs=3, callbacks=[GradientStatsCallback(collector, probe)])
    collector.to_dict()["gradient_stats"]["candidate"]["norm"]
    ```
    """

    section = "gradient_stats"

    def __init__(
        self,
        collector: MetricsCollector,
        probe_batch: Any,
        towers: Mapping[str, TowerSpec] | None = None,
        bins: int = 50,
        margin: float = 2.0,
        loss_fn: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(collector)
        if probe_batch is None:
            raise ValueError("Invalid value for argument `probe_batch`. Received: probe_batch=None. Expected one training batch.")
        validate_histogram_args(bins, margin)
        self.probe_batch = probe_batch
        self.towers = towers
        self.bins = bins
        self.margin = margin
        self.loss_fn = loss_fn
        self._program: TowerStatsProgram | None = None
        self._probe: Any = None

    @guarded
    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._program = None

    def _build(self) -> None:
        model = self.model
        towers = resolve_towers(model, self.towers)
        names = list(towers)
        groups = list(towers.values())
        sources = [v for group in groups for v in group]
        loss_fn = self.loss_fn or default_loss_fn(model)
        restore = [v for v in getattr(model, "non_trainable_variables", []) if _restorable(v)]
        ranges, bins = fixed_ranges(self.collector, self.section, names, self.bins)

        def produce(batch: Any) -> list[list[tf.Tensor]]:
            saved = [tf.identity(tf.convert_to_tensor(v)) for v in restore]
            with tf.GradientTape() as tape:
                loss = loss_fn(batch)
            gradients = tape.gradient(loss, sources)
            for variable, value in zip(restore, saved):
                variable.assign(value)
            result, start = [], 0
            for group in groups:
                chunk = gradients[start:start + len(group)]
                start += len(group)
                result.append([g for g in (dense_gradient(g) for g in chunk) if g is not None])
            return result

        self._program = TowerStatsProgram(produce, names, bins=bins, margin=self.margin, with_norm=True, ranges=ranges)
        self._probe = tf.nest.map_structure(tf.convert_to_tensor, self.probe_batch)

    @guarded
    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self._program is None:
            self._build()
        for tower, (stats, histogram) in self._program(self._probe).items():
            self.collector.log_gradient_stats(tower, stats, histogram, step=epoch)
