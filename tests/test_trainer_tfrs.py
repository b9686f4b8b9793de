"""The callbacks with tf-keras (TF_USE_LEGACY_KERAS=1) on a TensorFlow Recommenders retrieval model.

Keras cannot change flavour inside a process, so the training runs in a child
process (tests/support/tfrs_run.py) and this test asserts on the files it wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PRODUCT_ENV
from tests.support.format_checks import check_document, check_strict_json

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tfrs_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tfrs")
    env = {
        **{k: v for k, v in os.environ.items() if k not in PRODUCT_ENV},
        "TF_USE_LEGACY_KERAS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "trainer_callbacks" / "src")]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.tfrs_run", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def read(path: Path) -> dict:
    doc = check_strict_json((path / "training_metrics.json").read_bytes())
    check_document(doc)
    return doc


def test_callbacks_subclass_tf_keras_in_a_legacy_keras_process(tfrs_run: Path) -> None:
    """With TF_USE_LEGACY_KERAS=1 the model and our callbacks both come from tf_keras."""
    facts = json.loads((tfrs_run / "facts.json").read_text())
    assert facts["keras_module"] == "tensorflow_recommenders.models.base / tf_keras.src.engine.training"
    assert facts["callback_base"].startswith("tf_keras.")


def test_tfrs_retrieval_training_writes_an_aligned_valid_file(tfrs_run: Path) -> None:
    """4 epochs, validation every 2: top-k validation metrics null on epochs 0 and 2, both towers, exact counts."""
    doc = read(tfrs_run / "tfrs")
    facts = json.loads((tfrs_run / "facts.json").read_text())
    assert doc["status"] == "completed" and doc["epochs"] == [0, 1, 2, 3]
    assert set(doc["loss"]) == {"loss", "regularization_loss", "total_loss", "val_loss", "val_regularization_loss", "val_total_loss"}
    top_5 = doc["metrics"]["val_factorized_top_k/top_5_categorical_accuracy"]
    assert top_5[0] is None and top_5[2] is None and None not in top_5[1::2]
    assert doc["params"]["epochs"] == 4 and doc["params"]["optimizer"] == "adagrad" and doc["params"]["learning_rate"] == 0.1
    assert doc["final_metrics"]["final_val_factorized_top_k/top_5_categorical_accuracy"] == top_5[3]
    assert doc["gradient"]["total"][-1] == pytest.approx(facts["last_weight_norm"], rel=1e-5)
    for tower in ("query", "candidate"):
        weights, gradients = doc["weight_stats"][tower], doc["gradient_stats"][tower]
        assert [sum(r) for r in weights["histogram"]["counts"]] == [facts["weights"][tower]] * 4
        assert [sum(r) for r in gradients["histogram"]["counts"]] == [facts["probe_gradients"][tower]] * 4
        assert len(weights["histogram"]["bin_edges"]) == 51 == len(gradients["histogram"]["bin_edges"])
        assert None not in gradients["norm"] and all(n > 0 for n in gradients["norm"])
        assert None not in weights["std"]


def test_tfrs_failure_keeps_the_epochs_so_far(tfrs_run: Path) -> None:
    """Under tf-keras too, an error at epoch 2 leaves status failed, epochs 0-1 and the error; the error still propagates."""
    doc = read(tfrs_run / "failed")
    assert json.loads((tfrs_run / "facts.json").read_text())["raised"] == "worker lost at epoch 2"
    assert doc["status"] == "failed" and doc["epochs"] == [0, 1]
    assert doc["error"] == "RuntimeError: worker lost at epoch 2"


def test_tfrs_backup_and_restore_restart_keeps_every_epoch_once(tfrs_run: Path) -> None:
    """Under tf-keras, a run failed at epoch 2 and restarted by BackupAndRestore with the plain constructor ends with epochs 0-3 once each."""
    doc = read(tfrs_run / "restarted")
    assert doc["status"] == "completed" and doc["epochs"] == [0, 1, 2, 3]
    assert doc["metrics"]["attempt"] == [1, 1, 2, 2]  # the second attempt started at epoch 2
    assert None not in doc["loss"]["loss"]
    assert doc["params"]["attempt"] == 2  # the second attempt's params, on top of the continued file
