"""WeightNormCallback: L2 norms of the weights, in total and per tower."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from trainer_callbacks.collector import MetricsCollector
from trainer_callbacks._xla_stats import on_cpu, sum_of_squares64
from trainer_callbacks.keras_compat import CollectorCallback, guarded
from trainer_callbacks.stats import check_strategy, traced_once
from trainer_callbacks.towers import TowerSpec, resolve_towers, unique
from trainer_callbacks.weight_summary import WeightSummary, shared_key

logger = logging.getLogger("trainer_callbacks")


class WeightNormCallback(CollectorCallback):
    """Records the L2 norm of all trainable weights and of each tower's at every epoch end.

    The norms land in the document's ``gradient`` section (``total`` plus one
    series per tower), the platform's historical name for them. They are computed
    with TensorFlow ops where the weights live, in one compiled function, and one
    small array comes back to the host per epoch. Next to a WeightStatsCallback
    with the same towers on the same collector, it takes the towers' sums of
    squares from that callback's pass over the weights instead of making its own.

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
        super().__init__(collector)
        self.towers = towers
        self._norms: Any = None
        self._names: list[str] = []
        self._shared: WeightSummary | None = None
        self._jit = False

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        # Not guarded: an unsupported strategy stops the run here, with the reason.
        check_strategy(self.model, type(self).__name__)
        # A tf-keras subclassed model creates its variables in the first step, so
        # the towers are resolved at the first epoch end.
        self._norms = None
        self._shared = None

    def _build(self, jit: bool = True) -> None:
        shared = self.collector.shared.get(shared_key(self.model))
        if shared is not None and shared.towers_spec is self.towers:
            # WeightStatsCallback reads every weight anyway: take the towers' sums
            # of squares from its summary and read only the weights outside the towers.
            self._shared = shared
            towers = shared.resolve()
        else:
            towers = resolve_towers(self.model, self.towers)
        in_towers = {id(v) for group in towers.values() for v in group}
        rest = [v for v in unique(list(self.model.trainable_variables)) if id(v) not in in_towers]
        groups = {"__rest__": rest} if self._shared is not None else {"__rest__": rest, **towers}
        self._names = list(groups)
        variable_groups = list(groups.values())

        jit = self._jit = jit and on_cpu([v for group in variable_groups for v in group])

        def sums_of_squares() -> tf.Tensor:
            if jit:  # XLA reads the variables in place (see _xla_stats); float64 row sums keep the digits
                return tf.stack([
                    tf.add_n([tf.constant(0.0, tf.float64)] + [sum_of_squares64(v) for v in group]) for group in variable_groups
                ])
            # l2_loss (sum(x^2)/2) is one fused pass, with no temporary the size of a table.
            return tf.stack([
                tf.add_n([tf.constant(0.0, tf.float64)] + [2.0 * tf.cast(tf.nn.l2_loss(tf.cast(v, tf.float32)), tf.float64) for v in group])
                for group in variable_groups
            ])

        self._norms = traced_once(sums_of_squares, jit_compile=jit or None)

    @guarded
    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self._norms is None:
            self._build()
        try:
            values = self._norms()
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.NotFoundError) as error:
            if not self._jit:
                raise
            logger.info("the XLA norms could not be compiled here; using TensorFlow ops: %s", error)
            self._build(jit=False)
            values = self._norms()
        squares = dict(zip(self._names, values.numpy().tolist()))
        if self._shared is not None:
            self._shared.for_epoch(epoch)
            squares.update(self._shared.program.sum_of_squares)
        rest = squares.pop("__rest__")
        norms = {"total": math.sqrt(rest + sum(squares.values())), **{t: math.sqrt(s) for t, s in squares.items()}}
        self.collector.log_weight_norms(norms, step=epoch)
