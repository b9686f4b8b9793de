"""The file the trainer writes is the file the function ingests: real training, real upload, real function."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import tensorflow as tf
from cloudevents.conversion import to_binary
from google.cloud import storage

from tests.support import trainer_models as tm
from tests.support.format_checks import check_document
from tests.support.function_server import FunctionServer, finalize_event
from tests.support.platform_db import Artifacts, PlatformDb, resource_of
from trainer_callbacks import (
    GradientStatsCallback,
    MetricsCallback,
    MetricsCollector,
    WeightNormCallback,
    WeightStatsCallback,
)

pytestmark = pytest.mark.slow


def _train(folder_uri: str, epochs: int, fail_at: int | None = None) -> None:
    model = tm.two_tower_keras()
    probe = next(iter(tm.keras_dataset()))

    def maybe_fail(epoch: int, logs: Any) -> None:
        if epoch == fail_at:
            raise RuntimeError(f"preempted at epoch {epoch}")

    with MetricsCollector(folder_uri) as collector:
        model.fit(
            tm.keras_dataset(), epochs=epochs, validation_data=tm.keras_dataset(64, seed=1), validation_freq=2,
            verbose=0, shuffle=False, callbacks=[
                MetricsCallback(collector, params={"batch_size": 32}), WeightNormCallback(collector),
                WeightStatsCallback(collector), GradientStatsCallback(collector, probe),
                tf.keras.callbacks.LambdaCallback(on_epoch_begin=maybe_fail),
            ],
        )  # fmt: skip
        collector.log_metric("test_recall_at_100", 0.5)


def _deliver(function_server: FunctionServer, blob: storage.Blob) -> int:
    headers, body = to_binary(finalize_event(resource_of(blob)))
    return requests.post(function_server.url, headers=headers, data=body, timeout=60).status_code


def test_a_trained_run_lands_in_the_row(
    function_server: FunctionServer, platform_db: PlatformDb, artifacts: Artifacts
) -> None:
    """A Keras run with all four callbacks uploads a file that the function ingests as written."""
    row_id, folder = platform_db.new_quicktest()
    _train(f"gs://{artifacts.bucket_name}/{folder}", epochs=3)

    blob = artifacts.bucket.get_blob(f"{folder}/training_metrics.json")
    written = json.loads(blob.download_as_bytes())
    check_document(written)
    assert _deliver(function_server, blob) == 200

    history = platform_db.history(row_id)
    [record] = platform_db.ingestions(artifacts.bucket_name, blob.name)
    assert (record["outcome"], record["epochs"], record["quicktest_id"]) == ("ingested", 3, row_id)
    source = history["source"]
    assert (source["bucket"], source["object"], source["generation"]) == (artifacts.bucket_name, blob.name, str(blob.generation))
    stored = {k: v for k, v in history.items() if k not in ("source", "ingested_at", "summary")}
    assert stored == written  # a current writer's file needs no normalising: nothing added, nothing lost
    assert history["loss"]["val_loss"][0] is None and history["loss"]["val_loss"][1] is not None
    assert set(history["gradient_stats"]) == {"query", "candidate"}
    assert history["final_metrics"]["test_recall_at_100"] == 0.5


def test_a_failed_run_is_ingested_with_its_epochs_and_error(
    function_server: FunctionServer, platform_db: PlatformDb, artifacts: Artifacts
) -> None:
    """A run that dies at epoch 2 still reaches the row: status failed, two epochs, the error."""
    row_id, folder = platform_db.new_quicktest()
    with pytest.raises(RuntimeError, match="preempted at epoch 2"):
        _train(f"gs://{artifacts.bucket_name}/{folder}", epochs=4, fail_at=2)

    blob = artifacts.bucket.get_blob(f"{folder}/training_metrics.json")
    assert _deliver(function_server, blob) == 200
    history = platform_db.history(row_id)
    assert (history["status"], history["epochs"]) == ("failed", [0, 1])
    assert "preempted at epoch 2" in history["error"]
