"""Per-epoch cost of the four trainer callbacks on a two-tower model with two 1,000,000 x 32 tables.

Epoch times swing by +-40% on shared machines, so the callbacks' own
``on_epoch_end`` hooks are timed directly (median of several calls, after a
first call that traces the compiled functions) and compared, in the same run, with:

* the training epoch they would ride on (median step time x --steps-per-epoch),
* one ``tf.reduce_sum`` pass over the same weights (the floor for anything that reads them),
* Keras's ``TensorBoard(histogram_freq=1)`` epoch-end hook,
* the same statistics in NumPy on the host (weights copied off the device),
* each op of the statistics alone (the read of the weights, reduce_sum, l2_loss,
  reduce_min, reduce_max, the histograms), as ratios to the baseline, to show where the time goes,
  for both formulations: TensorFlow ops (used on GPUs) and the XLA program (used on CPUs),
* the whole weight-statistics program in the formulation not in use on this device.

It runs where TensorFlow places the model: on a GPU when one is present (the
figures are then the GPU's), else on the CPU.

Also: size and serialization time of a 50-epoch x 140-metric document with 4 histograms.

    PYTHONPATH=.:trainer_callbacks/src python bench/bench_callbacks.py [--rows 1000000] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "trainer_callbacks" / "src")]

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer_callbacks import (  # noqa: E402
    GradientStatsCallback,
    MetricsCallback,
    MetricsCollector,
    WeightNormCallback,
    WeightStatsCallback,
)
from trainer_callbacks.document import dumps  # noqa: E402
from trainer_callbacks import _xla_stats  # noqa: E402
from trainer_callbacks.stats import TowerStatsProgram  # noqa: E402
from trainer_callbacks.stats import _chunks as stats_chunks  # noqa: E402


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_model(rows: int, dim: int) -> tf.keras.Model:
    keras = tf.keras

    def tower(name: str) -> keras.Model:
        return keras.Sequential([keras.layers.Embedding(rows, dim), keras.layers.Dense(dim)], name=name)

    class TwoTower(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.query_model, self.candidate_model = tower("query"), tower("candidate")

        def call(self, features: dict) -> tf.Tensor:
            return tf.reduce_sum(self.query_model(features["user_id"]) * self.candidate_model(features["item_id"]), axis=1)

    model = TwoTower()
    model.compile(optimizer=keras.optimizers.Adagrad(0.05), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    return model


def dataset(rows: int, batch: int, steps: int) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    n = batch * steps
    features = {"user_id": rng.integers(0, rows, n).astype("int32"), "item_id": rng.integers(0, rows, n).astype("int32")}
    labels = rng.integers(0, 2, n).astype("float32")
    return tf.data.Dataset.from_tensor_slices((features, labels)).batch(batch).cache()


def numpy_stats(model: tf.keras.Model, bins: int) -> None:
    """The same per-tower statistics the MLflow-era callbacks computed: weights copied to host, NumPy."""
    for tower in (model.query_model, model.candidate_model):
        flat = np.concatenate([v.numpy().ravel() for v in tower.trainable_variables])
        flat.mean(), flat.std(), flat.min(), flat.max(), np.linalg.norm(flat)
        np.histogram(flat, bins=bins)


def serialization(reps: int) -> tuple[int, float]:
    rng = np.random.default_rng(0)
    collector = MetricsCollector(tempfile.mkdtemp())
    edges = [float(e) for e in np.linspace(-1, 1, 51)]
    for epoch in range(50):
        collector.log_metrics({f"metric_{i}": float(rng.random()) for i in range(140)}, step=epoch)
        for tower in ("query", "candidate"):
            stats = {k: float(rng.random()) for k in ("mean", "std", "min", "max")}
            histogram = {"bin_edges": edges, "counts": rng.integers(0, 10**6, 50).tolist()}
            collector.log_weight_stats(tower, stats, histogram, step=epoch)
            collector.log_gradient_stats(tower, {**stats, "norm": 1.0}, histogram, step=epoch)
    document = collector.to_dict()
    size = len(dumps(document))
    return size, median_seconds(lambda: dumps(collector._doc.data), reps * 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per embedding table (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=32, help="embedding width (default 32)")
    parser.add_argument("--batch", type=int, default=2048, help="training batch size (default 2048)")
    parser.add_argument("--steps-per-epoch", type=int, default=500, help="steps in the reference epoch (default 500: 1M examples / 2048)")
    parser.add_argument("--timed-steps", type=int, default=20, help="training steps actually timed per epoch (default 20)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each timed hook (default 5)")
    args = parser.parse_args()

    print(f"TensorFlow {tf.__version__}, Keras {tf.keras.__name__ if hasattr(tf.keras, '__name__') else 'tf.keras'}, "
          f"devices: {[d.device_type for d in tf.config.list_logical_devices()]}")
    model = build_model(args.rows, args.dim)
    train = dataset(args.rows, args.batch, args.timed_steps)
    model.fit(train, epochs=1, verbose=0, shuffle=False)  # build, trace, warm the optimizer slots
    params = model.count_params()
    print(f"model: 2 towers x {args.rows:,} x {args.dim} embedding + dense; {params:,} parameters")

    epoch_times = []
    for _ in range(3):
        start = time.perf_counter()
        model.fit(train, epochs=1, verbose=0, shuffle=False)
        epoch_times.append(time.perf_counter() - start)
    step = statistics.median(epoch_times) / args.timed_steps
    epoch_seconds = step * args.steps_per_epoch
    print(f"training step (batch {args.batch}): {step * 1e3:.1f} ms median -> reference epoch of {args.steps_per_epoch} steps: {epoch_seconds:.2f} s")

    weights = list(model.trainable_variables)
    reduce_sum = tf.function(lambda: tf.add_n([tf.reduce_sum(v) for v in weights]))
    reduce_sum().numpy()
    baseline = median_seconds(lambda: reduce_sum().numpy(), args.reps * 2)
    print(f"baseline: one tf.reduce_sum pass over all weights: {baseline * 1e3:.1f} ms")

    # Breakdown of the weight statistics, one op at a time over all weights (the ops
    # trainer_callbacks.stats runs). The tables were updated sparsely (embedding
    # gathers, Adagrad's sparse updates), which puts their variables in TensorFlow's
    # copy-on-read mode: every ReadVariableOp outside XLA copies the whole table. The
    # baseline pays that copy once, and so does the statistics function; the read is
    # timed on its own and the ops are timed on tensors read beforehand.
    tensors = [tf.convert_to_tensor(v) for v in weights]

    def over_tensors(op: Callable[[tf.Tensor], tf.Tensor]) -> Callable[[], object]:
        fn = tf.function(lambda *ts: tf.add_n([tf.cast(op(t), tf.float64) for t in ts]), autograph=False)
        return lambda: fn(*tensors).numpy()

    def histograms(t: tf.Tensor) -> tf.Tensor:
        return tf.add_n([tf.histogram_fixed_width(c, [-1.0, 1.0], nbins=50, dtype=tf.int64) for c in stats_chunks(t)])

    read_fn = tf.function(lambda: tf.add_n([tf.reshape(tf.convert_to_tensor(v), [-1])[0] for v in weights]))
    breakdown_fns: dict[str, Callable[[], object]] = {
        "read of the weights (ReadVariableOp)": lambda: read_fn().numpy(),
        "reduce_sum": over_tensors(tf.reduce_sum),
        "l2_loss (sum of squares)": over_tensors(tf.nn.l2_loss),
        "reduce_min": over_tensors(tf.reduce_min),
        "reduce_max": over_tensors(tf.reduce_max),
        f"50-bin histograms (histogram_fixed_width, up to {max(len(stats_chunks(t)) for t in tensors)} pieces a table)": over_tensors(histograms),
    }
    def in_xla(op: Callable[[tf.Tensor], tf.Tensor]) -> Callable[[], object]:
        # XLA reads the variables in place, so these include the read.
        fn = tf.function(lambda: tf.add_n([tf.cast(op(tf.reshape(tf.convert_to_tensor(v), [-1])), tf.float64) for v in weights]),
                         jit_compile=True, autograph=False)
        return lambda: fn().numpy()

    value_range = tf.constant([-1.0, 1.0])
    breakdown_fns.update({
        "XLA: sum and sum of squares (float64 row sums)": in_xla(lambda x: _xla_stats._sum64(x) + _xla_stats._sum64(x * x)),
        "XLA: reduce_min and reduce_max": in_xla(lambda x: tf.cast(tf.reduce_min(x), tf.float64) + tf.cast(tf.reduce_max(x), tf.float64)),
        "XLA: 50-bin histogram (fused index + scatter)": in_xla(lambda x: tf.reduce_sum(_xla_stats._histogram(x, value_range, 50))),
    })
    for fn in breakdown_fns.values():
        fn()
    # The formulation not in use here, on the same weights, for comparison.
    towers = [list(model.query_model.trainable_variables), list(model.candidate_model.trainable_variables)]
    on_cpu = _xla_stats.on_cpu(weights)
    other = TowerStatsProgram(lambda: [[tf.convert_to_tensor(v) for v in g] for g in towers], ["query", "candidate"], jit=not on_cpu)
    other()
    other_name = "TensorFlow-ops formulation (the GPU path)" if on_cpu else "XLA formulation (the CPU path)"
    others: list[float] = []
    breakdown: dict[str, list[float]] = {name: [] for name in breakdown_fns}

    probe = next(iter(train))
    collector = MetricsCollector(tempfile.mkdtemp())
    callbacks = {
        "MetricsCallback": MetricsCallback(collector),
        "WeightNormCallback": WeightNormCallback(collector),
        "WeightStatsCallback": WeightStatsCallback(collector),
        "GradientStatsCallback": GradientStatsCallback(collector, probe),
    }
    logs = {"loss": 0.69}
    # As Keras's CallbackList does: every hook of every callback, in list order, each epoch.
    for callback in callbacks.values():
        callback.set_model(model)
        callback.set_params({"epochs": 100, "steps": args.steps_per_epoch, "verbose": 0})
        callback.on_train_begin()
    first = {}
    for name, callback in callbacks.items():
        first[name] = median_seconds(lambda cb=callback: cb.on_epoch_end(0, logs), 1)
    board = tf.keras.callbacks.TensorBoard(log_dir=tempfile.mkdtemp(), histogram_freq=1, write_graph=False)
    board.set_model(model)
    board.set_params({"epochs": 100, "steps": args.steps_per_epoch, "verbose": 0})
    board.on_train_begin()
    board.on_epoch_end(0, logs)

    # Rounds interleave every measurement, so load from other processes (epoch
    # times here swing by +-40%) hits ours and the comparisons alike; ratios are
    # taken within a round, then the median over rounds.
    per_epoch: dict[str, list[float]] = {name: [] for name in callbacks}
    totals, baselines, boards, hosts = [], [], [], []
    for index in range(1, args.reps + 1):
        total = 0.0
        for name, callback in callbacks.items():
            start = time.perf_counter()
            callback.on_epoch_begin(index)
            callback.on_epoch_end(index, logs)
            elapsed = time.perf_counter() - start
            per_epoch[name].append(elapsed)
            total += elapsed
        totals.append(total)
        baselines.append(median_seconds(lambda: reduce_sum().numpy(), 3))
        boards.append(median_seconds(lambda i=index: board.on_epoch_end(i, logs), 1))
        hosts.append(median_seconds(lambda: numpy_stats(model, 50), 1))
        for name, fn in breakdown_fns.items():
            breakdown[name].append(median_seconds(fn, 1) / baselines[-1])
        others.append(median_seconds(other, 1) / baselines[-1])
    board.on_train_end()
    assert all(not getattr(cb, "disabled", False) for cb in callbacks.values()), "a callback failed during the bench"

    hook_times = {name: statistics.median(times) for name, times in per_epoch.items()}
    for name, seconds in hook_times.items():
        print(f"  {name:24s} epoch hooks: {seconds * 1e3:8.1f} ms median (first call, tracing: {first[name] * 1e3:.0f} ms)")
    print("  (WeightNormCallback runs the weight pass it shares with WeightStatsCallback, which then reuses it)")
    ours = statistics.median(totals)
    weight_passes = [per_epoch["WeightNormCallback"][i] + per_epoch["WeightStatsCallback"][i] for i in range(args.reps)]
    stats_ratio = statistics.median(w / b for w, b in zip(weight_passes, baselines))
    board_ratio = statistics.median(b / t for b, t in zip(boards, totals))
    host_ratio = statistics.median(h / w for h, w in zip(hosts, weight_passes))
    tensorboard, host = statistics.median(boards), statistics.median(hosts)

    size, dump = serialization(args.reps)
    print()
    print(f"all four callbacks per epoch:          {ours * 1e3:8.1f} ms   (medians over {args.reps} interleaved rounds)")
    print(f"TensorBoard(histogram_freq=1) per epoch: {tensorboard * 1e3:8.1f} ms")
    print(f"same statistics in NumPy on the host:  {host * 1e3:8.1f} ms")
    print()
    print(f"epoch overhead ratio (epoch + four callbacks) / epoch: {(epoch_seconds + ours) / epoch_seconds:.4f}   (goal <= 1.02)")
    print(f"  (the overhead stays within 2% for any epoch longer than {ours / 0.02:.1f} s = {ours / 0.02 / step:.0f} steps of this model)")
    print(f"weight statistics and norms / one reduce_sum pass:    {stats_ratio:.1f}x   (goal <= 3x)")
    first_weights = first["WeightNormCallback"] + first["WeightStatsCallback"]
    print(f"  first epoch (traces the statistics functions, once per run): {first_weights * 1e3:.0f} ms"
          f"; later epochs: {statistics.median(weight_passes) * 1e3:.0f} ms")
    print(f"  formulation used here: {'XLA program (CPU)' if on_cpu else 'TensorFlow ops (GPU)'}; "
          f"the {other_name} on the same weights: {statistics.median(others):.1f}x")
    print("  breakdown, each op alone over all weights (ratio to the baseline of the same round, median):")
    for name, ratios in breakdown.items():
        print(f"    {name:62s} {statistics.median(ratios):5.2f}x")
    print(f"four callbacks / TensorBoard(histogram_freq=1):        1/{board_ratio:.0f}   (goal under 1/20)")
    print(f"NumPy-on-host statistics / ours (weight stats+norms):  {host_ratio:.1f}x slower")
    print(f"50 epochs x 140 metrics + 4 histograms: {size / 1000:.0f} KB, serialized in {dump * 1e3:.1f} ms   (goals < 500 KB, < 15 ms)")


if __name__ == "__main__":
    main()
