"""Train a tiny two-tower model under a distribution strategy with all four callbacks; used by the tests.

Writes ``OUT/run/training_metrics.json`` (the distributed run) and ``OUT/check.json``:
the largest relative difference between the run's last-epoch statistics and the
same callbacks on a single-device copy of the final weights (same histogram
edges), and the largest difference of any histogram count.

    python -m tests.support.distributed_stats_run mirrored OUT          # 2 logical CPUs, one process
    TF_CONFIG=... python -m tests.support.distributed_stats_run multiworker OUT   # one worker of several

The flavour follows TF_USE_LEGACY_KERAS: tf-keras trains a TensorFlow
Recommenders retrieval model (in-batch softmax), Keras 3 a compiled two-tower model.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import tensorflow as tf

if sys.argv[1] == "mirrored":  # before anything initializes the runtime
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )

from tests.support import trainer_models as tm  # noqa: E402
from trainer_callbacks import (  # noqa: E402
    GradientStatsCallback,
    MetricsCallback,
    MetricsCollector,
    WeightNormCallback,
    WeightStatsCallback,
)

LEGACY = os.environ.get("TF_USE_LEGACY_KERAS") == "1"
EPOCHS = 2


def build() -> Any:
    return tm.tfrs_retrieval_model() if LEGACY else tm.two_tower_keras()


def data() -> tf.data.Dataset:
    ds = tm.tfrs_dataset(128) if LEGACY else tm.keras_dataset(128)
    options = tf.data.Options()
    # Every worker reads the same batches (the test compares statistics, not sharding).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def callbacks(collector: MetricsCollector, probe: Any) -> list[Any]:
    return [
        MetricsCallback(collector, params={"batch_size": 32}),
        WeightNormCallback(collector),
        WeightStatsCallback(collector),
        GradientStatsCallback(collector, probe),
    ]


def last(doc: dict[str, Any]) -> dict[str, float]:
    """The last epoch's statistics, flattened to name -> number."""
    values = {f"gradient.{k}": v[-1] for k, v in doc["gradient"].items()}
    for section in ("weight_stats", "gradient_stats"):
        for tower, stats in doc[section].items():
            values.update({f"{section}.{tower}.{k}": v[-1] for k, v in stats.items() if k != "histogram"})
    return values


def counts(doc: dict[str, Any]) -> dict[str, list[int]]:
    return {f"{s}.{t}": st["histogram"]["counts"][-1] for s in ("weight_stats", "gradient_stats") for t, st in doc[s].items()}


def reference(model: Any, probe: Any, run: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The four callbacks on a single-device copy of the final weights, with the run's histogram edges."""
    copy = build()
    if LEGACY:  # a subclassed tf-keras model creates its variables when first called
        copy.fit(tm.tfrs_dataset(32), epochs=1, verbose=0)
    copy.set_weights(model.get_weights())
    collector = MetricsCollector(folder)
    for section in ("weight_stats", "gradient_stats"):
        for tower, stats in run[section].items():
            edges = stats["histogram"]["bin_edges"]
            log = collector.log_weight_stats if section == "weight_stats" else collector.log_gradient_stats
            log(tower, {}, {"bin_edges": edges, "counts": [0] * (len(edges) - 1)}, step=0)
    hooks = callbacks(collector, probe)[1:]
    for callback in hooks:
        callback.set_model(copy)
        callback.on_train_begin()
    for callback in hooks:
        callback.on_epoch_end(1)
    assert not any(getattr(c, "disabled", False) for c in hooks), collector.to_dict().get("callback_errors")
    return collector.to_dict()


def compiled_loss_check(strategy: Any, out: Path) -> float:
    """A compiled loss (its tracker a SyncOnRead variable) with BatchNorm and Dropout under the strategy:
    the relative difference of the last probe-gradient norm from a single-device copy's."""
    import numpy as np

    def build_small() -> Any:
        keras = tf.keras
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), keras.layers.BatchNormalization(), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        return model

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)).astype("float32"), rng.normal(size=(64, 1)).astype("float32")
    with strategy.scope():
        model = build_small()
    collector = MetricsCollector(out / "compiled")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[GradientStatsCallback(collector, (x[:16], y[:16]))])
    copy = build_small()
    copy.set_weights(model.get_weights())
    single = MetricsCollector(out / "compiled-reference")
    probe = GradientStatsCallback(single, (x[:16], y[:16]))
    probe.set_model(copy)
    probe.on_train_begin()
    probe.on_epoch_end(0)
    ours = collector.to_dict()["gradient_stats"]["model"]["norm"][-1]
    theirs = single.to_dict()["gradient_stats"]["model"]["norm"][-1]
    return abs(ours - theirs) / theirs


def main(kind: str, out: Path) -> None:
    strategy = tf.distribute.MirroredStrategy() if kind == "mirrored" else tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build()
    train = data()
    probe = next(iter(train))
    collector = MetricsCollector(out / "run")
    model.fit(train, epochs=EPOCHS, verbose=0, callbacks=callbacks(collector, probe))
    collector.save()
    run = collector.to_dict()
    ref = reference(model, probe, run, out / "reference")
    ours, theirs = last(run), last(ref)
    relative = {k: abs(ours[k] - theirs[k]) / max(abs(theirs[k]), 1e-12) for k in theirs}
    count_diff = {k: sum(abs(a - b) for a, b in zip(c, counts(ref)[k])) for k, c in counts(run).items()}
    out.mkdir(parents=True, exist_ok=True)  # a non-chief worker's collector creates nothing
    (out / "check.json").write_text(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "names": sorted(theirs),
        "missing": sorted(set(theirs) - set(ours)),
        "max_relative": max(relative.values()),
        "worst": max(relative, key=relative.get),
        "count_diff": count_diff,
        "callback_errors": run.get("callback_errors", []),
        "epochs": run["epochs"],
        "timing": sorted(run.get("timing", {})),
        "compiled_loss_relative": compiled_loss_check(strategy, out) if kind == "mirrored" else 0.0,
    }))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
