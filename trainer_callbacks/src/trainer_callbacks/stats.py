"""Per-tower statistics (count, sum, sum of squares, min, max, histogram) with TF ops.

Everything runs inside one compiled ``tf.function`` where the tensors live (GPU
or CPU); only a small ``[towers, 5 + bins]`` float64 array comes back to the host,
with one ``.numpy()`` per epoch. No tensor is concatenated: each variable is read
once per call, reduced on its own, and the partial results are combined. (A table
updated sparsely, as an embedding is, puts its variable in TensorFlow's
copy-on-read mode, where every ReadVariableOp outside XLA copies it; any
TensorFlow op reading it, ``tf.reduce_sum`` included, pays that copy.)

Two formulations, the same numbers (tests/test_trainer_stats_exact.py):

* TensorFlow ops (this module's :func:`tower_partials`; used on GPUs, and for
  gradients, whose shapes vary): four reductions (sum, l2_loss, min, max) plus
  ``histogram_fixed_width``, which on the CPU checks for NaNs and bins on one
  thread, so larger tensors are split into pieces that run in parallel.
* One XLA program (``_xla_stats``; used for weights on the CPU): reads the
  variables in place (no copy-on-read copy) and bins in one fused loop with
  TensorFlow's own bin formula. bench/bench_callbacks.py measures both on the
  same weights; on the CPU the XLA program costs about 0.8x the other.

Why neither reaches one ``reduce_sum`` pass x 3 on a CPU (measured with the
bench's breakdown, two 1,000,000 x 32 tables, TensorFlow 2.21, 2 shared cores):
an exact histogram is a data-dependent scatter, and no TensorFlow or XLA CPU
kernel does one faster than about 1.7x a ``reduce_sum`` pass (XLA's fused
scatter; ``histogram_fixed_width`` 4-5x, ``bucketize`` + ``bincount`` 12x); the
four reductions cost 1.2-1.8x more (Eigen: a copy of the table, then half a pass
each; XLA: one pass each, on one thread). Fusing statistics into fewer passes
(stacking ``[x, x*x]`` or ``[x, -x]``, a float64 segment sum of ``(1, x, x*x)``)
was slower, 4-20x.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from trainer_callbacks import _xla_stats

logger = logging.getLogger("trainer_callbacks")

# count, sum, sum of squares, min, max, then the histogram counts.
_COUNT, _SUM, _SUMSQ, _MIN, _MAX, _HEAD = 0, 1, 2, 3, 4, 5
# Histograms of larger tensors are split (a zero-copy split along the first axis)
# so TensorFlow can run the pieces on several cores at once.
_CHUNK_ELEMENTS = 1 << 21
_MAX_CHUNKS = 16


# Strategies whose variables the statistics cannot read where they live from a callback.
_UNSUPPORTED_STRATEGIES = {
    "ParameterServerStrategy": "its variables are sharded over parameter servers and callbacks run on the coordinator",
    "ParameterServerStrategyV2": "its variables are sharded over parameter servers and callbacks run on the coordinator",
    "CentralStorageStrategy": "its variables live on the parameter device and callbacks run on the coordinator",
    "TPUStrategy": "its variables live on TPU cores the statistics functions do not run on",
    "TPUStrategyV2": "its variables live on TPU cores the statistics functions do not run on",
}


def check_strategy(model: Any, callback: str) -> None:
    """ValueError when ``model`` trains under a strategy the statistics callbacks do not support.

    Supported: no strategy, ``MirroredStrategy`` and ``MultiWorkerMirroredStrategy``
    (each logical variable is summarised once, from its local copy).
    """
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    name = type(strategy).__name__ if strategy is not None else ""
    if name in _UNSUPPORTED_STRATEGIES:
        raise ValueError(
            f"{callback} does not support {name}: {_UNSUPPORTED_STRATEGIES[name]}. Supported: no strategy, "
            "MirroredStrategy and MultiWorkerMirroredStrategy. Leave the statistics callbacks out of this run "
            "(MetricsCallback works under any strategy)."
        )


def dense_gradient(gradient: Any) -> tf.Tensor | None:
    """The gradient entries a probe batch produced, as one dense tensor.

    An embedding table's gradient is ``IndexedSlices`` over the looked-up rows, with
    a row repeated when an id occurs twice: the repeats are summed (as the optimizer
    would) and the untouched rows, which have no gradient, are left out rather than
    densified to zeros (a million-row table would otherwise be copied).
    """
    if gradient is None:
        return None
    if isinstance(gradient, tf.IndexedSlices):
        rows, positions = tf.unique(gradient.indices)
        return tf.math.unsorted_segment_sum(gradient.values, positions, tf.shape(rows)[0])
    return tf.convert_to_tensor(gradient)


def _chunks(tensor: tf.Tensor) -> list[tf.Tensor]:
    shape = tensor.shape
    if shape.rank is None or shape.rank == 0 or not shape.is_fully_defined():
        return [tensor]
    pieces = min(_MAX_CHUNKS, shape.num_elements() // _CHUNK_ELEMENTS)
    while pieces > 1 and shape[0] % pieces:
        pieces -= 1
    return tf.split(tensor, pieces, axis=0) if pieces > 1 else [tensor]


def _histogram_without_nan(tensor: tf.Tensor, value_range: tf.Tensor, bins: int) -> tf.Tensor:
    """Histogram that leaves NaNs out (histogram_fixed_width refuses them).

    Only runs when the tensor's sum is NaN, so finite tensors pay nothing for it:
    NaNs are binned into the first bin, then taken out of it again.
    """
    nans = tf.math.is_nan(tensor)
    counts = tf.histogram_fixed_width(tf.where(nans, value_range[0], tensor), value_range, nbins=bins, dtype=tf.int64)
    return counts - tf.one_hot(0, bins, on_value=tf.reduce_sum(tf.cast(nans, tf.int64)), dtype=tf.int64)


def tower_partials(tensors: Sequence[tf.Tensor], value_range: tf.Tensor, bins: int) -> tf.Tensor:
    """``[5 + bins]`` float64: count, sum, sum of squares, min, max, histogram counts.

    Sums are taken per tensor in the tensor's dtype (TensorFlow reduces pairwise)
    and combined in float64. Values outside ``value_range`` land in the end bins;
    NaNs are not counted in the histogram (its counts then sum to the finite values).
    """
    counts, sums, squares, mins, maxs, histograms = [], [], [], [], [], []
    for tensor in tensors:
        tensor = tf.convert_to_tensor(tensor)
        if tensor.dtype != tf.float32:
            tensor = tf.cast(tensor, tf.float32)
        counts.append(tf.cast(tf.size(tensor, out_type=tf.int64), tf.float64))
        sums.append(tf.cast(tf.reduce_sum(tensor), tf.float64))
        # l2_loss is sum(x^2)/2 in one fused pass; square-then-sum would write a temporary the size of the table.
        squares.append(2.0 * tf.cast(tf.nn.l2_loss(tensor), tf.float64))
        mins.append(tf.reduce_min(tensor))
        maxs.append(tf.reduce_max(tensor))
        has_nan = tf.math.is_nan(sums[-1])
        for piece in _chunks(tensor):
            histograms.append(
                tf.cond(
                    has_nan,
                    lambda piece=piece: _histogram_without_nan(piece, value_range, bins),
                    lambda piece=piece: tf.histogram_fixed_width(piece, value_range, nbins=bins, dtype=tf.int64),
                )
            )
    if not tensors:
        empty = tf.constant(0.0, tf.float64)
        nan = tf.constant(math.nan, tf.float64)
        return tf.concat([tf.stack([empty, empty, empty, nan, nan]), tf.zeros([bins], tf.float64)], 0)
    head = tf.stack(
        [
            tf.add_n(counts),
            tf.add_n(sums),
            tf.add_n(squares),
            tf.cast(tf.reduce_min(tf.stack(mins)), tf.float64),
            tf.cast(tf.reduce_max(tf.stack(maxs)), tf.float64),
        ]
    )
    # float64 holds counts exactly up to 2^53.
    return tf.concat([head, tf.cast(tf.add_n(histograms), tf.float64)], 0)


def tower_extremes(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """``[2]`` float64: min and max over the tensors (NaN for none)."""
    if not tensors:
        return tf.constant([math.nan, math.nan], tf.float64)
    mins = [tf.reduce_min(tf.cast(t, tf.float32)) for t in tensors]
    maxs = [tf.reduce_max(tf.cast(t, tf.float32)) for t in tensors]
    return tf.cast(tf.stack([tf.reduce_min(tf.stack(mins)), tf.reduce_max(tf.stack(maxs))]), tf.float64)


def symmetric_range(minimum: float, maximum: float, margin: float) -> tuple[float, float]:
    """``(-r, r)`` with ``r`` = margin x the largest magnitude seen (1.0 if none is finite or all are zero).

    Weights grow and gradients shrink during training; a symmetric range with a
    margin keeps most of a run's values inside fixed edges, and the rest are
    counted in the end bins.
    """
    magnitude = max(abs(minimum), abs(maximum)) if math.isfinite(minimum) and math.isfinite(maximum) else 0.0
    radius = float(f"{magnitude * margin:.3g}") if magnitude > 0 else 1.0
    return -radius, radius


def bin_edges(value_range: tuple[float, float], bins: int) -> list[float]:
    """``bins + 1`` evenly spaced edges, rounded to 8 significant digits."""
    low, high = value_range
    return [float(f"{e:.8g}") for e in np.linspace(low, high, bins + 1)]


def summarise(partials: np.ndarray, with_norm: bool) -> tuple[dict[str, float], list[int]]:
    """Host side: turn one tower's partials into mean/std/min/max(/norm) and counts."""
    count, total, squares = float(partials[_COUNT]), float(partials[_SUM]), float(partials[_SUMSQ])
    if count > 0:
        mean = total / count
        variance = max(squares / count - mean * mean, 0.0)
        stats = {"mean": mean, "std": math.sqrt(variance), "min": float(partials[_MIN]), "max": float(partials[_MAX])}
    else:
        stats = {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    if with_norm:
        stats["norm"] = math.sqrt(squares) if math.isfinite(squares) else math.nan
    return stats, [int(c) for c in partials[_HEAD:]]


class TowerStatsProgram:
    """Statistics of several towers' tensors, one compiled function per call site.

    Args:
        produce: traced inside ``tf.function``; takes ``*inputs`` and returns one
            list of tensors per tower (weights read from variables, or gradients).
        towers: tower names, in the order ``produce`` returns them.
        bins: histogram bins (default 50).
        margin: how far beyond the first epoch's largest magnitude the fixed
            histogram range reaches (default 2.0).
        ranges: a fixed ``(low, high)`` per tower (e.g. from a resumed file); the
            others are fixed at the first call.
        jit: compute the partials with the XLA formulation (``_xla_stats``; for
            tensors of static shape, on the CPU, where it is about twice as fast);
            if XLA cannot compile it, the TensorFlow ops are used instead.

    Example::

        program = TowerStatsProgram(lambda: [[tf.convert_to_tensor(v) for v in q_vars]], ["query"])
        results = program()   # {"query": (stats, {"bin_edges": [...], "counts": [...]})}
    """

    def __init__(
        self,
        produce: Callable[..., list[list[tf.Tensor]]],
        towers: Sequence[str],
        *,
        bins: int = 50,
        margin: float = 2.0,
        with_norm: bool = False,
        ranges: dict[str, tuple[float, float]] | None = None,
        jit: bool = False,
    ) -> None:
        self.towers = list(towers)
        self.bins = bins
        self.margin = margin
        self.with_norm = with_norm
        self.ranges: dict[str, tuple[float, float]] = dict(ranges or {})
        self.edges: dict[str, list[float]] = {t: bin_edges(r, bins) for t, r in self.ranges.items()}
        self.sum_of_squares: dict[str, float] = {}  # of the last call, per tower
        self.calls = 0

        def _partials(value_ranges: tf.Tensor, *inputs: Any) -> tf.Tensor:
            groups = produce(*inputs)
            return tf.stack([tower_partials(g, value_ranges[i], bins) for i, g in enumerate(groups)])

        def _fused_partials(value_ranges: tf.Tensor, *inputs: Any) -> tf.Tensor:
            groups = produce(*inputs)
            return tf.stack([_xla_stats.tower_partials(g, value_ranges[i], bins) for i, g in enumerate(groups)])

        def _extremes(*inputs: Any) -> tf.Tensor:
            return tf.stack([tower_extremes(g) for g in produce(*inputs)])

        # reduce_retracing: the probe batch is the same structure every epoch.
        self._partials = traced_once(_partials)
        self._extremes = traced_once(_extremes)
        self._fused = traced_once(_fused_partials, jit_compile=True) if jit else None

    def __call__(self, *inputs: Any) -> dict[str, tuple[dict[str, float], dict[str, Any]]]:
        if any(t not in self.ranges for t in self.towers):
            extremes = self._extremes(*inputs).numpy()
            for tower, (low, high) in zip(self.towers, extremes):
                if tower not in self.ranges:
                    self.ranges[tower] = symmetric_range(float(low), float(high), self.margin)
                    self.edges[tower] = bin_edges(self.ranges[tower], self.bins)
        value_ranges = tf.constant([self.ranges[t] for t in self.towers], tf.float32)
        partials = self._run_partials(value_ranges, *inputs).numpy()  # the one device -> host copy
        results = {}
        self.sum_of_squares = {tower: float(row[_SUMSQ]) for tower, row in zip(self.towers, partials)}
        self.calls += 1
        for tower, row in zip(self.towers, partials):
            stats, counts = summarise(row, self.with_norm)
            results[tower] = (stats, {"bin_edges": self.edges[tower], "counts": counts})
        return results

    def _run_partials(self, value_ranges: tf.Tensor, *inputs: Any) -> tf.Tensor:
        if self._fused is not None:
            try:
                return self._fused(value_ranges, *inputs)
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.NotFoundError) as error:
                logger.info("the XLA statistics could not be compiled here; using TensorFlow ops: %s", error)
                self._fused = None
        return self._partials(value_ranges, *inputs)


def traced_once(fn: Callable[..., Any], jit_compile: bool | None = None) -> Any:
    """``tf.function`` traced once per input shape, without TensorFlow's retracing warning.

    TensorFlow counts traces per source function, not per ``tf.function``: every
    new program (a new model, a second ``fit``, the weight and the gradient
    callbacks side by side) traces its own function once, and after five of them
    TensorFlow would warn about "retracing" although none of them ever retraces.
    """
    function = tf.function(fn, reduce_retracing=True, jit_compile=jit_compile)
    if hasattr(function, "_omit_frequent_tracing_warning"):
        function._omit_frequent_tracing_warning = True
    return function
