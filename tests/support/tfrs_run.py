"""Train a TensorFlow Recommenders retrieval model (tf-keras) with the callbacks; used by the tests.

Keras cannot switch flavours inside a process, so tests/test_trainer_tfrs.py runs
this module in a child process with TF_USE_LEGACY_KERAS=1 and asserts on what it
writes under OUT: ``tfrs/`` (a 4-epoch run, validation every 2), ``failed/`` (an
error at epoch 2), ``restarted/`` (the same error under BackupAndRestore, then a
second attempt that Keras restores at epoch 2) and ``facts.json`` (what the parent cannot compute without
TensorFlow: the Keras in use, weight and probe-gradient counts per tower).

    TF_USE_LEGACY_KERAS=1 python -m tests.support.tfrs_run OUT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from tests.support import trainer_models as tm
from trainer_callbacks import GradientStatsCallback, MetricsCallback, MetricsCollector, WeightNormCallback, WeightStatsCallback


class FailAt(tf.keras.callbacks.Callback):
    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        if epoch == 2:
            raise RuntimeError("worker lost at epoch 2")


def callbacks(collector: MetricsCollector, probe: dict) -> list:
    return [
        MetricsCallback(collector, params={"batch_size": 32}),
        WeightNormCallback(collector),
        WeightStatsCallback(collector),
        GradientStatsCallback(collector, probe),
    ]


def main(out: Path) -> None:
    train, val = tm.tfrs_dataset(), tm.tfrs_dataset(64, seed=1)
    probe = next(iter(train))
    model = tm.tfrs_retrieval_model()
    with MetricsCollector(out / "tfrs") as collector:
        model.fit(train, epochs=4, validation_data=val, validation_freq=2, verbose=0, callbacks=callbacks(collector, probe))

    towers = {"query": (model.query_model, "user_id"), "candidate": (model.candidate_model, "item_id")}
    facts = {
        "keras_module": type(model).__mro__[1].__module__ + " / " + tf.keras.Model.__module__,
        "callback_base": next(c for c in MetricsCallback.__mro__ if c.__name__ == "Callback").__module__,
        "weights": {t: int(sum(np.prod(v.shape) for v in m.trainable_variables)) for t, (m, _) in towers.items()},
        "probe_gradients": {
            t: int(len(np.unique(probe[ids].numpy())) * tm.DIM + sum(np.prod(v.shape) for v in m.trainable_variables[1:]))
            for t, (m, ids) in towers.items()
        },
        "last_weight_norm": float(np.sqrt(sum(np.sum(np.square(v.numpy())) for v in model.trainable_variables))),
    }

    try:
        with MetricsCollector(out / "failed") as collector:
            tm.tfrs_retrieval_model().fit(train, epochs=4, verbose=0, callbacks=[*callbacks(collector, probe), FailAt()])
    except RuntimeError as error:
        facts["raised"] = str(error)

    # A preempted job restarted by BackupAndRestore: the plain constructor continues the file.
    backup = str(out / "backup")
    for attempt, extra in ((1, [FailAt()]), (2, [])):
        try:
            with MetricsCollector(out / "restarted") as collector:
                mark = tf.keras.callbacks.LambdaCallback(
                    on_epoch_end=lambda epoch, logs, c=collector, a=attempt: c.log_metric("attempt", a, step=epoch))
                tm.tfrs_retrieval_model().fit(train, epochs=4, verbose=0, callbacks=[
                    MetricsCallback(collector, params={"attempt": attempt}), mark, tf.keras.callbacks.BackupAndRestore(backup), *extra])
        except RuntimeError:
            assert attempt == 1
    (out / "facts.json").write_text(json.dumps(facts))


if __name__ == "__main__":
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        sys.exit("run with TF_USE_LEGACY_KERAS=1 (TensorFlow Recommenders needs tf-keras)")
    main(Path(sys.argv[1]))
