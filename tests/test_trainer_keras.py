"""The four callbacks in real Keras 3 training of a tiny two-tower model (the default TensorFlow 2.21 Keras)."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from tests.support import trainer_models as tm
from tests.support.format_checks import check_document, check_strict_json
from trainer_callbacks import (
    GradientStatsCallback,
    MetricsCallback,
    MetricsCollector,
    WeightNormCallback,
    WeightStatsCallback,
)

pytestmark = pytest.mark.slow
FILE = "training_metrics.json"


def all_callbacks(collector: MetricsCollector, probe: Any) -> list[Any]:
    return [
        MetricsCallback(collector, params={"batch_size": 32, "embedding_dim": tm.DIM}),
        WeightNormCallback(collector),
        WeightStatsCallback(collector),
        GradientStatsCallback(collector, probe),
    ]


def fit(model: Any, callbacks: list[Any], epochs: int = 4, **kwargs: Any) -> Any:
    return model.fit(
        tm.keras_dataset(), epochs=epochs, validation_data=tm.keras_dataset(64, seed=1), validation_freq=2,
        callbacks=callbacks, verbose=0, shuffle=False, **kwargs,
    )


def read(folder: Path) -> dict[str, Any]:
    doc = check_strict_json((folder / FILE).read_bytes())
    check_document(doc)
    return doc


def probe_gradient_count(probe: Any, tower_ids: str, tower: Any) -> int:
    """Entries of a tower's probe gradient: one embedding row per distinct id, plus every dense weight."""
    features = probe[0]
    embedding_rows = len(np.unique(features[tower_ids].numpy()))
    dense = sum(int(np.prod(v.shape)) for v in tower.trainable_variables[1:])
    return embedding_rows * tm.DIM + dense


def test_training_writes_an_aligned_valid_file(tmp_path: Path) -> None:
    """4 epochs with validation every 2: valid file, val_* null on epochs 0 and 2, both towers, exact histogram counts."""
    model = tm.two_tower_keras()
    probe = next(iter(tm.keras_dataset()))
    seen_edges: list[Any] = []
    flushed: list[tuple[str, list[int], int]] = []

    def record_edges(epoch: int, logs: Any) -> None:
        document = collector.to_dict()
        seen_edges.append({s: {t: v["histogram"]["bin_edges"] for t, v in document[s].items()} for s in ("weight_stats", "gradient_stats")})

    def record_flush(epoch: int, logs: Any) -> None:
        if epoch:  # MetricsCallback flushed the finished epochs as this one began (flush_every is tiny)
            assert collector.wait_for_flush(timeout=60)  # the flush uploads in the background
            on_disk = read(tmp_path)
            flushed.append((on_disk["status"], on_disk["epochs"], on_disk["gradient_stats"]["query"]["norm"].count(None)))

    with MetricsCollector(tmp_path, flush_every=1e-6) as collector:
        recorder = tf.keras.callbacks.LambdaCallback(on_epoch_begin=record_flush, on_epoch_end=record_edges)
        fit(model, [*all_callbacks(collector, probe), recorder])
    doc = read(tmp_path)
    summary = collector.shared[("weight_summary", id(model))]
    assert summary.program.calls == 4  # one pass over the weights per epoch, shared by WeightNorm and WeightStats
    assert flushed == [("running", [0], 0), ("running", [0, 1], 0), ("running", [0, 1, 2], 0)]
    assert doc["status"] == "completed" and doc["epochs"] == [0, 1, 2, 3]
    assert doc["loss"]["val_loss"][0] is None and doc["loss"]["val_loss"][2] is None
    assert None not in doc["loss"]["val_loss"][1::2] and None not in doc["loss"]["loss"]
    assert doc["metrics"]["val_binary_accuracy"][::2] == [None, None]
    assert doc["metrics"]["learning_rate"] == [0.05] * 4
    assert doc["params"] == {"epochs": 4, "steps": 8, "optimizer": "adagrad", "learning_rate": 0.05, "batch_size": 32, "embedding_dim": 8}
    assert doc["final_metrics"]["final_loss"] == doc["loss"]["loss"][-1]
    assert doc["final_metrics"]["final_val_loss"] == doc["loss"]["val_loss"][3]

    towers = {"query": (model.query_model, "user_id"), "candidate": (model.candidate_model, "item_id")}
    assert set(doc["gradient"]) == {"total", "query", "candidate"}
    total = np.sqrt(sum(float(np.sum(np.square(v.numpy()))) for v in model.trainable_variables))
    assert doc["gradient"]["total"][-1] == pytest.approx(total, rel=1e-5)
    for name, (tower, ids) in towers.items():
        weights = [v.numpy().ravel() for v in tower.trainable_variables]
        flat = np.concatenate(weights)
        stats = doc["weight_stats"][name]
        assert stats["mean"][-1] == pytest.approx(flat.mean(), abs=1e-6)
        assert stats["std"][-1] == pytest.approx(flat.std(), rel=1e-4)
        assert (stats["min"][-1], stats["max"][-1]) == (pytest.approx(flat.min()), pytest.approx(flat.max()))
        assert doc["gradient"][name][-1] == pytest.approx(np.linalg.norm(flat), rel=1e-5)
        assert [sum(row) for row in stats["histogram"]["counts"]] == [flat.size] * 4
        expected, _ = np.histogram(np.clip(flat, stats["histogram"]["bin_edges"][0], stats["histogram"]["bin_edges"][-1]), stats["histogram"]["bin_edges"])
        assert np.abs(np.array(stats["histogram"]["counts"][-1]) - expected).sum() <= 2  # float32 vs float64 binning at edges
        gradients = doc["gradient_stats"][name]
        assert set(gradients) == {"mean", "std", "min", "max", "norm", "histogram"}
        assert [sum(row) for row in gradients["histogram"]["counts"]] == [probe_gradient_count(probe, ids, tower)] * 4
        assert all(n is not None and n > 0 for n in gradients["norm"])
    for section in ("weight_stats", "gradient_stats"):
        for name in towers:
            assert len({json.dumps(e[section][name]) for e in seen_edges}) == 1  # the same edges at every epoch
            assert seen_edges[0][section][name] == doc[section][name]["histogram"]["bin_edges"]
            assert len(doc[section][name]["histogram"]["bin_edges"]) == 51


def test_a_nan_loss_is_stored_as_null_and_training_goes_on(tmp_path: Path) -> None:
    """Weights turned NaN after epoch 1: later losses and statistics are null, all 4 epochs run, the file is strict JSON."""
    model = tm.two_tower_keras(optimizer="sgd")
    probe = next(iter(tm.keras_dataset()))

    def poison(epoch: int, logs: Any) -> None:
        if epoch == 1:  # the query tower's output bias (relu would turn a NaN embedding into zeros)
            bias = model.query_model.trainable_variables[-1]
            bias.assign(tf.fill(bias.shape, float("nan")))

    with MetricsCollector(tmp_path) as collector:
        history = fit(model, [*all_callbacks(collector, probe), tf.keras.callbacks.LambdaCallback(on_epoch_end=poison)])
    assert len(history.history["loss"]) == 4
    doc = read(tmp_path)
    assert doc["status"] == "completed"
    assert None not in doc["loss"]["loss"][:2] and doc["loss"]["loss"][2:] == [None, None]
    assert doc["loss"]["val_loss"] == [None, doc["loss"]["val_loss"][1], None, None] and doc["loss"]["val_loss"][1] is not None
    assert None not in doc["weight_stats"]["query"]["mean"][:2] and doc["weight_stats"]["query"]["mean"][2:] == [None, None]
    assert doc["gradient"]["total"][2:] == [None, None]
    assert doc["gradient_stats"]["query"]["norm"][2:] == [None, None]
    n_weights = sum(int(np.prod(v.shape)) for v in model.query_model.trainable_variables)
    sums = [sum(row) for row in doc["weight_stats"]["query"]["histogram"]["counts"]]
    assert sums[:2] == [n_weights] * 2 and max(sums[2:]) <= n_weights - tm.DIM  # NaNs are not binned
    assert doc["final_metrics"]["final_loss"] == doc["loss"]["loss"][1]  # the last finite value


class FailAt(tf.keras.callbacks.Callback):
    """Raises when epoch ``epoch`` begins, as a crash in the input pipeline or the model would."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        if epoch == self.epoch:
            raise RuntimeError(f"worker lost at epoch {epoch}")


def test_an_exception_saves_the_epochs_so_far_as_failed(tmp_path: Path) -> None:
    """An error at epoch 2: the collector saves status failed, epochs 0 and 1 and the error, and re-raises."""
    model = tm.two_tower_keras()
    probe = next(iter(tm.keras_dataset()))
    with pytest.raises(RuntimeError, match="worker lost at epoch 2"):
        with MetricsCollector(tmp_path) as collector:
            fit(model, [*all_callbacks(collector, probe), FailAt(2)])
    doc = read(tmp_path)
    assert doc["status"] == "failed"
    assert doc["epochs"] == [0, 1]
    assert doc["error"] == "RuntimeError: worker lost at epoch 2"
    assert len(doc["weight_stats"]["candidate"]["histogram"]["counts"]) == 2


def test_a_resumed_run_continues_the_file(tmp_path: Path) -> None:
    """Preempted at epoch 2 with BackupAndRestore, the rerun resumes at epoch 2 and the file gains epochs 2-3, none repeated."""
    backup = tmp_path / "backup"
    out = tmp_path / "out"
    probe = next(iter(tm.keras_dataset()))
    with pytest.raises(RuntimeError):
        with MetricsCollector(out) as collector:
            fit(tm.two_tower_keras(), [tf.keras.callbacks.BackupAndRestore(str(backup)), *all_callbacks(collector, probe), FailAt(2)])
    first = read(out)
    assert first["epochs"] == [0, 1]

    with MetricsCollector(out, resume=True) as collector:
        history = fit(tm.two_tower_keras(), [tf.keras.callbacks.BackupAndRestore(str(backup)), *all_callbacks(collector, probe)])
    assert len(history.history["loss"]) == 2  # Keras ran epochs 2 and 3 only
    doc = read(out)
    assert doc["status"] == "completed" and "error" not in doc
    assert doc["epochs"] == [0, 1, 2, 3]
    assert doc["loss"]["loss"][:2] == first["loss"]["loss"] and None not in doc["loss"]["loss"]
    assert doc["loss"]["val_loss"][0] is None and doc["loss"]["val_loss"][2] is None and None not in doc["loss"]["val_loss"][1::2]
    for section in ("weight_stats", "gradient_stats"):
        assert doc[section]["query"]["histogram"]["bin_edges"] == first[section]["query"]["histogram"]["bin_edges"]
        assert None not in doc[section]["query"]["histogram"]["counts"]


def test_no_network_during_fit_then_one_upload(gcs_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a gs:// destination and the destination check off, fit opens no connection at all (sockets are blocked); the save afterwards uploads."""
    from google.cloud import storage

    gcs_env.create_bucket("trainer-test")
    folder = f"quick_tests/{uuid.uuid4().hex[:12]}"
    attempts: list[Any] = []
    real_connect = socket.socket.connect

    def blocked(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError(f"network blocked during fit: {address}")

    collector = MetricsCollector(f"gs://trainer-test/{folder}", fallback_dir=tmp_path, check_destination=False)
    model = tm.two_tower_keras()
    probe = next(iter(tm.keras_dataset()))
    with collector:  # leaving the block is the one upload
        monkeypatch.setattr(socket.socket, "connect", blocked)
        fit(model, all_callbacks(collector, probe), epochs=3)
        monkeypatch.setattr(socket.socket, "connect", real_connect)
        assert attempts == []
    doc = json.loads(storage.Client().bucket("trainer-test").blob(f"{folder}/{FILE}").download_as_bytes())
    check_document(doc)
    assert doc["epochs"] == [0, 1, 2] and set(doc["gradient_stats"]) == {"query", "candidate"}


def test_a_broken_statistic_costs_a_warning_not_the_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A probe batch that does not fit the model: the gradient callback logs a warning and turns off, training and the other callbacks go on."""
    model = tm.two_tower_keras()
    wrong_probe = ({"user": tf.zeros([4], tf.int32)}, tf.zeros([4]))  # no such feature names
    with caplog.at_level("WARNING", logger="trainer_callbacks"):
        with MetricsCollector(tmp_path) as collector:
            history = fit(model, [MetricsCallback(collector), WeightStatsCallback(collector), GradientStatsCallback(collector, wrong_probe)])
    assert len(history.history["loss"]) == 4
    doc = read(tmp_path)
    assert doc["status"] == "completed" and doc["gradient_stats"] == {}
    assert len(doc["weight_stats"]["query"]["mean"]) == 4
    failures = [r for r in caplog.records if "GradientStatsCallback.on_epoch_end failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None


def test_a_model_without_towers_is_one_tower_and_the_probe_leaves_no_trace(tmp_path: Path) -> None:
    """A plain Sequential model with BatchNorm and Dropout: one tower 'model'; the probe's forward pass does not move BatchNorm statistics."""
    keras = tf.keras
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(128, 6)).astype("float32"), rng.normal(size=(128, 1)).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16), keras.layers.BatchNormalization(), keras.layers.Dropout(0.2), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    probe = (x[:32], y[:32])
    with MetricsCollector(tmp_path) as collector:
        model.fit(x, y, batch_size=32, epochs=3, validation_split=0.25, validation_freq=2, verbose=0,
                  callbacks=[MetricsCallback(collector), WeightNormCallback(collector), WeightStatsCallback(collector), GradientStatsCallback(collector, probe)])
        model.evaluate(x, y, verbose=0, callbacks=[MetricsCallback(collector)])
    doc = read(tmp_path)
    assert set(doc["weight_stats"]) == set(doc["gradient_stats"]) == {"model"} and set(doc["gradient"]) == {"total", "model"}
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert [sum(r) for r in doc["gradient_stats"]["model"]["histogram"]["counts"]] == [trainable] * 3  # dense: every weight
    assert doc["loss"]["val_loss"][0] is None and doc["loss"]["val_loss"][1] is not None
    assert doc["final_metrics"]["test_loss"] == pytest.approx(model.evaluate(x, y, verbose=0), rel=1e-5)

    gradients = GradientStatsCallback(MetricsCollector(tmp_path / "probe"), probe)
    gradients.set_model(model)
    gradients.on_train_begin()
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    gradients.on_epoch_end(0)
    assert not getattr(gradients, "disabled", False)
    for old, variable in zip(before, model.non_trainable_variables):
        np.testing.assert_array_equal(old, variable.numpy())
    assert gradients.collector.to_dict()["gradient_stats"]["model"]["norm"][0] > 0


def test_explicit_towers_and_weight_norms_on_their_own(tmp_path: Path) -> None:
    """Towers given as an attribute name and a layer; WeightNormCallback alone computes the same norms NumPy does."""
    model = tm.two_tower_keras()
    with MetricsCollector(tmp_path) as collector:
        fit(model, [WeightNormCallback(collector, towers={"user": "query_model", "item": model.candidate_model})], epochs=2)
    doc = read(tmp_path)
    assert set(doc["gradient"]) == {"total", "user", "item"} and doc["weight_stats"] == {}
    norm = lambda variables: float(np.sqrt(sum(np.sum(np.square(v.numpy())) for v in variables)))  # noqa: E731
    assert doc["gradient"]["user"][-1] == pytest.approx(norm(model.query_model.trainable_variables), rel=1e-5)
    assert doc["gradient"]["item"][-1] == pytest.approx(norm(model.candidate_model.trainable_variables), rel=1e-5)
    assert doc["gradient"]["total"][-1] == pytest.approx(norm(model.trainable_variables), rel=1e-5)
    with pytest.raises(ValueError, match="no attribute 'user_tower'"):
        from trainer_callbacks.towers import resolve_towers

        resolve_towers(model, {"user": "user_tower"})
