"""The per-tower partials of ``stats.tower_partials`` as one XLA program, for weights on the CPU.

Same output (``[5 + bins]`` float64: count, sum, sum of squares, min, max, the
histogram counts) and the same exact counts as ``tf.histogram_fixed_width``, at
about 0.8x the cost of the TensorFlow-ops formulation on a CPU
(bench/bench_callbacks.py prints both):

* XLA reads a variable in place. Outside XLA, a table updated sparsely (an
  embedding) is in TensorFlow's copy-on-read mode and every read copies it whole.
* The histogram is one fused loop: the bin index is computed in registers and
  scattered into ``bins`` int32 counters, with no int32 index tensor written out
  and no NaN pre-pass (``histogram_fixed_width`` on the CPU checks for NaNs, writes
  an index tensor, then counts it on one thread).
* The bin index is TensorFlow's own formula (tensorflow/core/kernels/histogram_op.cc):
  clamp to the range in float32, then ``(double(x) - double(low)) / step`` in
  float64, capped at ``bins - 1``, so every value lands in the bin
  ``histogram_fixed_width`` puts it in. A NaN gets index ``bins``, which the
  scatter drops, so NaNs are not counted (as in the other path).
* Sums are taken over rows of 1024 values in float32, the row sums added in
  float64: XLA reduces a whole tensor in one sequential float32 accumulator per
  lane, which on 32M weights loses four digits of the mean.

Measured and not taken: stacking ``[x, x*x]`` or ``[x, -x]`` to get two statistics
from one reduction (XLA:CPU evaluates the stack per row and it cost 4-10x a
sum); a float32 bin index corrected against per-bin thresholds (a gather per
value, slower than the float64 division); ``bucketize`` + ``bincount`` (12x).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

_ROW = 1024
_INT32_MAX = 2**31 - 1


def on_cpu(variables: Sequence[object]) -> bool:
    """True when every variable lives on a CPU (where this formulation is the faster one)."""
    # A Keras 3 variable keeps its device on the TensorFlow variable it wraps (``.value``).
    devices = [str(getattr(v, "device", None) or getattr(getattr(v, "value", None), "device", "") or "") for v in variables]
    return bool(devices) and all("CPU" in d.upper() for d in devices)


def _sum64(flat: tf.Tensor) -> tf.Tensor:
    """float64 sum of a 1-D float32 tensor: float32 sums of 1024-value rows, added in float64."""
    n = flat.shape[0]
    whole = n - n % _ROW
    total = tf.constant(0.0, tf.float64)
    if whole:
        rows = tf.reshape(flat[:whole], [whole // _ROW, _ROW])
        total += tf.reduce_sum(tf.cast(tf.reduce_sum(rows, axis=1), tf.float64))
    if n > whole:
        total += tf.reduce_sum(tf.cast(flat[whole:], tf.float64))
    return total


def sum_of_squares64(tensor: tf.Tensor) -> tf.Tensor:
    """float64 sum of squares of a tensor of static shape (inside an XLA function)."""
    flat = tf.reshape(tf.cast(tf.convert_to_tensor(tensor), tf.float32), [-1])
    return _sum64(flat * flat)


def _histogram(flat: tf.Tensor, value_range: tf.Tensor, bins: int) -> tf.Tensor:
    low, high = value_range[0], value_range[1]
    low64 = tf.cast(low, tf.float64)
    step = (tf.cast(high, tf.float64) - low64) / bins
    position = (tf.cast(tf.clip_by_value(flat, low, high), tf.float64) - low64) / step
    index = tf.cast(tf.minimum(position, bins - 1.0), tf.int32)
    index = tf.where(tf.math.is_nan(flat), bins, index)  # out of range: dropped by the scatter
    kind = tf.int32 if flat.shape[0] <= _INT32_MAX else tf.int64
    return tf.cast(tf.math.unsorted_segment_sum(tf.ones_like(index, kind), index, bins), tf.float64)


def tower_partials(tensors: Sequence[tf.Tensor], value_range: tf.Tensor, bins: int) -> tf.Tensor:
    """``[5 + bins]`` float64 for tensors of static shape; traced inside ``tf.function(jit_compile=True)``."""
    heads, histograms = [], []
    for tensor in tensors:
        flat = tf.reshape(tf.cast(tf.convert_to_tensor(tensor), tf.float32), [-1])
        heads.append(tf.stack([
            tf.constant(float(flat.shape[0]), tf.float64),
            _sum64(flat),
            _sum64(flat * flat),
            tf.cast(tf.reduce_min(flat), tf.float64),
            tf.cast(tf.reduce_max(flat), tf.float64),
        ]))
        histograms.append(_histogram(flat, value_range, bins))
    if not tensors:
        nan = tf.constant(float("nan"), tf.float64)
        return tf.concat([tf.stack([tf.constant(0.0, tf.float64)] * 3 + [nan, nan]), tf.zeros([bins], tf.float64)], 0)
    stacked = tf.stack(heads)
    head = tf.stack([
        tf.reduce_sum(stacked[:, 0]), tf.reduce_sum(stacked[:, 1]), tf.reduce_sum(stacked[:, 2]),
        tf.reduce_min(stacked[:, 3]), tf.reduce_max(stacked[:, 4]),
    ])
    return tf.concat([head, tf.add_n(histograms)], 0)
