"""A preempted and restarted Keras 3 run keeps every epoch once, with the plain MetricsCollector(path).

The preemption is an exception raised from a callback at epoch N (after the
collector logged epoch N, before BackupAndRestore backed it up, so the restart
runs epoch N again); the restart is a second fit() with a new model and a new
collector, as a new process would have.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import tensorflow as tf

from metrics_ingest.localstack.emulator import GcsEmulator
from tests.support import trainer_models as tm
from tests.support.format_checks import check_document, check_strict_json
from trainer_callbacks import MetricsCallback, MetricsCollector, WeightStatsCallback

pytestmark = pytest.mark.slow
FILE = "training_metrics.json"
EPOCHS = 5
BUCKET = "trainer-restart"


class Preempted(Exception):
    """Stands for the VM going away."""


def attempt(collector: MetricsCollector, number: int, *, backup: Path | None, preempt_at: int | None = None) -> None:
    """One attempt of the job: fit() with the collector's callbacks, marking each epoch with the attempt number."""

    def mark(epoch: int, logs: Any) -> None:
        collector.log_metric("attempt", number, step=epoch)
        if epoch == preempt_at:
            raise Preempted(f"preempted at epoch {epoch}")

    callbacks = [MetricsCallback(collector), WeightStatsCallback(collector, bins=4), tf.keras.callbacks.LambdaCallback(on_epoch_end=mark)]
    if backup is not None:  # last: the epoch that is preempted is not backed up, so it runs again
        callbacks.append(tf.keras.callbacks.BackupAndRestore(str(backup)))
    tm.two_tower_keras().fit(tm.keras_dataset(64), epochs=EPOCHS, callbacks=callbacks, verbose=0)


@pytest.fixture(params=["local", "gcs"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    """Where the run writes (a local folder or gs:// on the emulator) and how to read the file back."""
    if request.param == "local":
        return str(tmp_path / "run"), lambda: (tmp_path / "run" / FILE).read_bytes()
    from google.cloud import storage

    emulator: GcsEmulator = request.getfixturevalue("gcs_env")
    emulator.create_bucket(BUCKET)
    folder = f"quick_tests/{uuid.uuid4().hex[:12]}"
    return f"gs://{BUCKET}/{folder}", lambda: storage.Client().bucket(BUCKET).blob(f"{folder}/{FILE}").download_as_bytes()


def test_a_backup_and_restore_restart_keeps_every_epoch_once(target: tuple[str, Any], tmp_path: Path) -> None:
    """Preempted at epoch 2 and restored by BackupAndRestore: the final file has epochs 0-4 once each, epoch 2 from the second attempt, histogram edges of the first."""
    path, read = target
    backup = tmp_path / "backup"
    with pytest.raises(Preempted), MetricsCollector(path) as first:
        attempt(first, 1, backup=backup, preempt_at=2)
    before = check_strict_json(read())
    assert before["status"] == "failed" and before["epochs"] == [0, 1, 2]

    with MetricsCollector(path) as second:  # the restarted job: the same plain constructor
        attempt(second, 2, backup=backup)
    doc = check_strict_json(read())
    check_document(doc)
    assert doc["status"] == "completed" and "error" not in doc
    assert doc["epochs"] == list(range(EPOCHS))
    assert doc["metrics"]["attempt"] == [1, 1, 2, 2, 2]
    assert None not in doc["loss"]["loss"]
    assert doc["final_metrics"]["final_loss"] == doc["loss"]["loss"][-1]
    for tower in ("query", "candidate"):
        histogram = doc["weight_stats"][tower]["histogram"]
        assert histogram["bin_edges"] == before["weight_stats"][tower]["histogram"]["bin_edges"]
        assert None not in histogram["counts"]
        assert histogram["counts"][:2] == before["weight_stats"][tower]["histogram"]["counts"][:2]


@pytest.mark.parametrize("target", ["gcs"], indirect=True)  # where generation preconditions could refuse the save
def test_a_restart_from_epoch_0_replaces_the_file_and_its_final_save_succeeds(target: tuple[str, Any]) -> None:
    """Without BackupAndRestore the restarted job trains from epoch 0: its flushes and final save replace the earlier attempt's file (no refused precondition), epochs once each."""
    path, read = target
    with pytest.raises(Preempted), MetricsCollector(path, flush_every=1e-6) as first:
        attempt(first, 1, backup=None, preempt_at=3)
    assert check_strict_json(read())["epochs"] == [0, 1, 2, 3]

    with MetricsCollector(path) as second:
        attempt(second, 2, backup=None)
    doc = check_strict_json(read())
    check_document(doc)
    assert doc["status"] == "completed" and doc["epochs"] == list(range(EPOCHS))
    assert doc["metrics"]["attempt"] == [2] * EPOCHS


def test_fit_with_initial_epoch_continues_the_file(tmp_path: Path) -> None:
    """fit(initial_epoch=2) without BackupAndRestore is also training past epoch 0: the earlier epochs are kept."""
    with MetricsCollector(tmp_path) as first:
        tm.two_tower_keras().fit(tm.keras_dataset(64), epochs=2, callbacks=[MetricsCallback(first)], verbose=0)
    with MetricsCollector(tmp_path) as second:
        tm.two_tower_keras().fit(tm.keras_dataset(64), epochs=3, initial_epoch=2, callbacks=[MetricsCallback(second)], verbose=0)
    doc = json.loads((tmp_path / FILE).read_bytes())
    assert doc["epochs"] == [0, 1, 2] and None not in doc["loss"]["loss"]
    check_document(doc)
