"""GradientStatsCallback: per-tower gradient statistics on a fixed probe batch."""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from trainer_callbacks.collector import MetricsCollector
from trainer_callbacks.keras_compat import CollectorCallback, guarded
from trainer_callbacks.stats import TowerStatsProgram, check_strategy, dense_gradient
from trainer_callbacks.towers import TowerSpec, resolve_towers
from trainer_callbacks.weight_stats import validate_histogram_args
from trainer_callbacks.weight_summary import fixed_ranges, variables_key

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


_LOSS_FN_EXAMPLE = """\
GradientStatsCallback needs the loss the model trains on, and this model exposes none: it was \
compiled without `loss=` and does not override `compute_loss` (a custom `train_step` computes \
its loss where Keras cannot reach it). Pass it as `loss_fn=`, a function of one probe batch \
that returns the scalar loss, e.g. for a two-tower model with an in-batch softmax:

    def probe_loss(batch):
        features = batch[0] if isinstance(batch, tuple) else batch
        scores = tf.matmul(model.query_model(features["user_id"], training=True),
                           model.candidate_model(features["item_id"], training=True), transpose_b=True)
        labels = tf.range(tf.shape(scores)[0])
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, scores))

    GradientStatsCallback(collector, probe_batch, loss_fn=probe_loss)

(or move the loss into an override of `compute_loss(self, x, y, y_pred, sample_weight, training=True)` \
that `train_step` calls, or compile the model with `loss=...`)."""

# Modules whose compute_loss is Keras's (or TFRS's) own, not the user's.
_LIBRARY_MODULES = ("keras.", "tf_keras.", "tensorflow_recommenders.", "tensorflow.")


def _compute_loss_owner(model: Any) -> type | None:
    """The class whose ``compute_loss`` the model uses when it is the user's own override, else None."""
    owner = next((c for c in type(model).__mro__ if "compute_loss" in c.__dict__), None)
    if owner is None or owner.__module__.startswith(_LIBRARY_MODULES):
        return None
    return owner


def _has_compiled_loss(model: Any) -> bool:
    if hasattr(model, "_compile_loss"):  # Keras 3
        return model._compile_loss is not None
    container = getattr(model, "compiled_loss", None)  # tf-keras: a container exists even for loss=None
    return container is not None and getattr(container, "_user_losses", None) is not None


def default_loss_fn(model: Any) -> Callable[[Any], tf.Tensor]:
    """The model's own training loss on a batch, or ValueError when the model exposes none.

    An overridden ``compute_loss``: called as Keras 3 and tf-keras call it
    (``x, y, y_pred, sample_weight`` and ``training=True`` where accepted) when
    it takes ``y_pred``, else as TensorFlow Recommenders does
    (``compute_loss(batch, training=True)``). Otherwise the compiled loss
    (``compile(loss=...)``, plus regularization losses) through Keras's own
    ``compute_loss``.

    Raises:
        ValueError: neither an override nor a compiled loss; the message shows
            how to pass ``loss_fn=``.
    """
    owner = _compute_loss_owner(model)
    if owner is None and not _has_compiled_loss(model):
        raise ValueError(_LOSS_FN_EXAMPLE)
    parameters = inspect.signature(model.compute_loss).parameters
    accepts_training = "training" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    if owner is not None and "y_pred" not in parameters:
        # TensorFlow Recommenders' signature: compute_loss(features, training=False).
        if accepts_training:
            return lambda batch: model.compute_loss(batch, training=True)
        return lambda batch: model.compute_loss(batch)

    def keras_loss(batch: Any) -> tf.Tensor:
        x, y, sample_weight = unpack_batch(batch)
        y_pred = model(x, training=True)
        kwargs = {"x": x, "y": y, "y_pred": y_pred, "sample_weight": sample_weight}
        if accepts_training:
            kwargs["training"] = True
        return model.compute_loss(**kwargs)

    return keras_loss


@contextlib.contextmanager
def _metrics_muted(model: Any) -> Iterator[None]:
    """The model's metrics (its loss tracker included) ignore updates while the probe is traced and run.

    The probe must leave no trace in the model: Keras's ``compute_loss`` updates
    the loss tracker, which would add the probe batch to the epoch's reported
    loss and, under a strategy, fails outright (a SyncOnRead variable refuses
    ``assign_add`` outside a replica). The compiled probe never contains the
    update, since it is traced while muted.
    """
    metrics = [m for m in getattr(model, "metrics", []) if hasattr(m, "update_state")]
    saved = [(m, m.__dict__.get("update_state")) for m in metrics]
    for metric in metrics:
        metric.update_state = _ignore_update
    try:
        yield
    finally:
        for metric, own in saved:
            if own is None:
                del metric.update_state  # back to the class's method
            else:
                metric.update_state = own


def _ignore_update(*args: Any, **kwargs: Any) -> None:
    return None


def _in_plain_context(fn: Callable[[], Any]) -> Any:
    """``fn()`` outside the distribution strategy whose scope is active here (tf-keras runs callbacks in it).

    In a strategy's cross-replica context the model's own loss cannot run: a
    tape cannot watch a MirroredVariable there, and the loss tracker (a
    SyncOnRead variable) refuses ``assign_add``. A strategy scope is
    thread-local, so a helper thread sees the plain default strategy: the
    mirrored variables read as their local copy (the same values on every
    replica and worker), the loss is the single-device loss of the whole probe
    batch (no per-replica scaling), and no collective op runs, so no worker can
    wait on another. The statistics therefore equal a single-device run's.
    """
    if not tf.distribute.has_strategy() or not tf.distribute.in_cross_replica_context():
        return fn()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as error:  # noqa: BLE001 - handed to the calling thread and raised there
            result["error"] = error

    thread = threading.Thread(target=run, name="trainer_callbacks-gradient-probe", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


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
            own (default None: the model's ``compute_loss`` override, Keras 3's or
            TensorFlow Recommenders' signature, else its compiled loss; a model
            with neither, such as a custom ``train_step`` computing its loss
            inline, raises ValueError at train begin showing how to pass one).

    Under ``MirroredStrategy`` and ``MultiWorkerMirroredStrategy`` the probe runs
    outside the strategy's scope on each worker, on the local copy of the
    mirrored weights: the whole probe batch, no collective op (so no worker can
    wait on another), and the statistics equal a single-device run's. Other
    strategies (parameter servers, TPUs) raise ValueError at train begin.

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
        self._program_key: Any = None
        self._loss_fn: Callable[[Any], Any] | None = None
        self._probe: Any = None

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        # Not guarded: a model whose loss cannot be reached, or a strategy the
        # statistics do not support, must stop here with the way out, not cost a
        # warning at the first epoch end and an empty section.
        check_strategy(self.model, type(self).__name__)
        self._loss_fn = self.loss_fn or default_loss_fn(self.model)
        if self._program is not None and self._program_key == (id(self.model), variables_key(self.model, self.towers)):
            return  # the same model and variables in another fit: keep the compiled program (no new trace)
        self._program = None

    def _build(self) -> None:
        model = self.model
        towers = resolve_towers(model, self.towers)
        names = list(towers)
        groups = list(towers.values())
        sources = [v for group in groups for v in group]
        loss_fn = self._loss_fn or self.loss_fn or default_loss_fn(model)
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
        self._program_key = (id(model), variables_key(model, self.towers))
        self._probe = tf.nest.map_structure(tf.convert_to_tensor, self.probe_batch)

    @guarded
    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        with _metrics_muted(self.model):
            results = _in_plain_context(self._summarise)
        for tower, (stats, histogram) in results.items():
            self.collector.log_gradient_stats(tower, stats, histogram, step=epoch)

    def _summarise(self) -> dict[str, Any]:
        if self._program is None:
            self._build()
        return self._program(self._probe)
