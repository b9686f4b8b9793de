"""Gradient statistics from the model's own loss, or a clear ValueError before training; failures recorded in the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from tests.support import trainer_models as tm
from tests.support.format_checks import check_document, check_strict_json
from trainer_callbacks import GradientStatsCallback, MetricsCallback, MetricsCollector

pytestmark = pytest.mark.slow


def read(folder: Path) -> dict[str, Any]:
    doc = check_strict_json((folder / "training_metrics.json").read_bytes())
    check_document(doc)
    return doc


def probe_norm(model: Any, features: dict[str, tf.Tensor]) -> float:
    """The query tower's gradient L2 norm of the in-batch softmax on the probe, computed by hand."""
    with tf.GradientTape() as tape:
        loss = tm.in_batch_softmax_loss(*model(features, training=True))
    gradients = tape.gradient(loss, model.query_model.trainable_variables)
    dense = [tf.convert_to_tensor(g) for g in gradients]  # an IndexedSlices densified: untouched rows are 0
    return float(np.sqrt(sum(np.sum(np.square(g.numpy())) for g in dense)))


def test_a_custom_train_step_without_a_reachable_loss_stops_before_the_first_epoch(tmp_path: Path) -> None:
    """Keras 3 two-tower, custom train_step, in-batch softmax, no compiled loss: ValueError at train begin naming loss_fn=."""
    model = tm.two_tower_custom_step()
    epochs: list[int] = []
    seen = tf.keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: epochs.append(epoch))
    probe = next(iter(tm.tfrs_dataset()))
    with pytest.raises(ValueError, match=r"loss_fn=probe_loss") as raised, MetricsCollector(tmp_path) as collector:
        model.fit(tm.tfrs_dataset(), epochs=2, verbose=0, callbacks=[seen, GradientStatsCallback(collector, probe)])
    assert epochs == [] and "def probe_loss(batch)" in str(raised.value)
    assert read(tmp_path)["status"] == "failed"


def test_loss_fn_gives_the_custom_train_step_model_its_gradient_statistics(tmp_path: Path) -> None:
    """The same model with loss_fn=: both towers every epoch, the query norm equal to the hand-computed gradient's."""
    model = tm.two_tower_custom_step()
    probe = next(iter(tm.tfrs_dataset()))
    loss_fn = lambda batch: tm.in_batch_softmax_loss(*model(batch, training=True))  # noqa: E731
    with MetricsCollector(tmp_path) as collector:
        model.fit(tm.tfrs_dataset(), epochs=3, verbose=0,
                  callbacks=[MetricsCallback(collector), GradientStatsCallback(collector, probe, loss_fn=loss_fn)])
    doc = read(tmp_path)
    assert set(doc["gradient_stats"]) == {"query", "candidate"} and "callback_errors" not in doc
    assert all(v is not None and v > 0 for v in doc["gradient_stats"]["query"]["norm"]) and len(doc["epochs"]) == 3
    assert doc["gradient_stats"]["query"]["norm"][-1] == pytest.approx(probe_norm(model, probe), rel=1e-4)


def test_an_overridden_compute_loss_is_the_models_own_loss(tmp_path: Path) -> None:
    """Keras 3's compute_loss(x, y, y_pred, sample_weight, training) override is used without loss_fn=."""
    model = tm.two_tower_custom_step(override_compute_loss=True)
    probe = next(iter(tm.tfrs_dataset()))
    with MetricsCollector(tmp_path) as collector:
        model.fit(tm.tfrs_dataset(), epochs=2, verbose=0, callbacks=[GradientStatsCallback(collector, probe)])
    doc = read(tmp_path)
    assert doc["gradient_stats"]["query"]["norm"][-1] == pytest.approx(probe_norm(model, probe), rel=1e-4)


def test_a_failing_callback_is_recorded_in_the_file(tmp_path: Path) -> None:
    """A probe that does not fit the model: callback_errors names the callback, the epoch and the reason; training goes on."""
    model = tm.two_tower_keras()
    wrong_probe = ({"user": tf.zeros([4], tf.int32)}, tf.zeros([4]))  # no such feature names
    with MetricsCollector(tmp_path) as collector:
        model.fit(tm.keras_dataset(), epochs=2, verbose=0,
                  callbacks=[MetricsCallback(collector), GradientStatsCallback(collector, wrong_probe)])
    doc = read(tmp_path)
    assert doc["status"] == "completed" and len(doc["loss"]["loss"]) == 2
    [error] = doc["callback_errors"]
    assert error["callback"] == "GradientStatsCallback" and error["epoch"] == 0
    assert error["error"].startswith("on_epoch_end: ") and "user_id" in error["error"]


def test_metrics_callback_refuses_params_that_are_not_a_mapping() -> None:
    """MetricsCallback(c, params="x") raises Keras's kind of ValueError at construction."""
    with pytest.raises(ValueError, match=r"Invalid value for argument `params`\. Received: params='x'\. Expected a mapping"):
        MetricsCallback(MetricsCollector("unused-folder"), params="x")


def test_parameter_server_and_tpu_strategies_are_refused_with_the_reason() -> None:
    """A model under ParameterServerStrategy or TPUStrategy: the statistics callbacks refuse it, naming what is supported."""
    from trainer_callbacks.stats import check_strategy

    for name in ("ParameterServerStrategyV2", "TPUStrategy"):
        model = type("Model", (), {"distribute_strategy": type(name, (), {})()})()
        with pytest.raises(ValueError, match=rf"WeightStatsCallback does not support {name}: .* Supported: no strategy, MirroredStrategy"):
            check_strategy(model, "WeightStatsCallback")
    check_strategy(type("Model", (), {"distribute_strategy": tf.distribute.get_strategy()})(), "WeightStatsCallback")
