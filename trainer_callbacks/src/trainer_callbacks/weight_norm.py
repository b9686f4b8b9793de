"""WeightNormCallback: L2 norms of the weights, in total and per tower."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from trainer_callbacks.collector import MetricsCollector
from trainer_callbacks.keras_compat import Callback, guarded
from trainer_callbacks.towers import TowerSpec, resolve_towers, unique


class WeightNormCallback(Callback):
    """Records the L2 norm of all trainable weights and of each tower's at every epoch end.

    The norms land in the document's ``gradient`` section (``total`` plus one
    series per tower), the platform's historical name for them. They are computed
    with TensorFlow ops where the weights live, in one compiled function, and one
    small array comes back to the host per epoch.

    Args:
        collector: the MetricsCollector to write into.
        towers: tower name -> layer, model attribute name or variables (default:
            ``query_model``/``candidate_model`` when the model has them, else one
            tower named ``model``).

    Example:

    ```python
    model.fit(ds, epochs=3, callbacks=[WeightNormCallback(collector)])
    collector.to_dict()["gradient"]   # {"total": [...], "query": [...], "candidate": [...]}
    ```
    """

    def __init__(self, collector: MetricsCollector, towers: Mapping[str, TowerSpec] | None = None) -> None:
        super().__init__()
        if not isinstance(collector, MetricsCollector):
            raise ValueError(
                f"Invalid value for argument `collector`. Received: collector={collector!r}. Expected a MetricsCollector."
            )
        self.collector = collector
        self.towers = towers
        self._norms: tf.types.experimental.PolymorphicFunction | None = None
        self._names: list[str] = []

    @guarded
    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        # A tf-keras subclassed model creates its variables in the first step, so
        # the towers are resolved at the first epoch end.
        self._norms = None

    def _build(self) -> None:
        towers = resolve_towers(self.model, self.towers)
        groups = {"total": unique(list(self.model.trainable_variables)), **towers}
        self._names = list(groups)
        variable_groups = list(groups.values())

        # l2_loss (sum(x^2)/2) is one fused pass, with no temporary the size of a table.
        @tf.function
        def norms() -> tf.Tensor:
            return tf.stack([
                tf.sqrt(tf.add_n([2.0 * tf.cast(tf.nn.l2_loss(tf.cast(v, tf.float32)), tf.float64) for v in group]))
                for group in variable_groups
            ])

        self._norms = norms

    @guarded
    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self._norms is None:
            self._build()
        values = self._norms().numpy()
        self.collector.log_weight_norms(dict(zip(self._names, values.tolist())), step=epoch)
