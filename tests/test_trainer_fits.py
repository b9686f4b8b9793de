"""Two fits on one collector make one history; a collector without a with block is never lost silently."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import trainer_models as tm
from tests.support.format_checks import check_document, check_strict_json
from trainer_callbacks import MetricsCallback, MetricsCollector, WeightStatsCallback

REPO = Path(__file__).resolve().parents[1]
FILE = "training_metrics.json"


def read(folder: Path) -> dict:
    return check_strict_json((folder / FILE).read_bytes())


def test_a_second_fit_continues_after_the_last_epoch(tmp_path: Path) -> None:
    """fit(epochs=3) then fit(epochs=2) with the same callback objects: epochs 0-4 once each, fits recorded, final_* from epoch 4, params.epochs 5."""
    model = tm.two_tower_keras()
    with MetricsCollector(tmp_path) as c:
        callbacks = [MetricsCallback(c), WeightStatsCallback(c, bins=4)]
        first = model.fit(tm.keras_dataset(64), epochs=3, callbacks=callbacks, verbose=0).history["loss"]
        model.trainable = True  # the transfer-learning recipe: unfreeze, fit again
        second = model.fit(tm.keras_dataset(64), epochs=2, callbacks=callbacks, verbose=0).history["loss"]
    doc = read(tmp_path)
    check_document(doc)
    assert doc["epochs"] == [0, 1, 2, 3, 4]
    assert doc["loss"]["loss"] == pytest.approx(first + second, rel=1e-6)  # rows 0-2 from the first fit, 3-4 from the second
    assert doc["fits"] == [{"start_epoch": 0, "end_epoch": 2, "initial_epoch": 0}, {"start_epoch": 3, "end_epoch": 4, "initial_epoch": 0}]
    assert doc["final_metrics"]["final_loss"] == doc["loss"]["loss"][4]
    assert doc["params"]["epochs"] == 5
    assert None not in doc["weight_stats"]["query"]["histogram"]["counts"]


def test_a_second_fit_with_an_explicit_initial_epoch_keeps_its_numbers(tmp_path: Path) -> None:
    """fit(epochs=2) then fit(epochs=4, initial_epoch=2): numbered as Keras numbers them, no offset."""
    model = tm.two_tower_keras()
    with MetricsCollector(tmp_path) as c:
        model.fit(tm.keras_dataset(32), epochs=2, callbacks=[MetricsCallback(c)], verbose=0)
        model.fit(tm.keras_dataset(32), epochs=4, initial_epoch=2, callbacks=[MetricsCallback(c)], verbose=0)
    doc = read(tmp_path)
    assert doc["epochs"] == [0, 1, 2, 3] and doc["fits"][1] == {"start_epoch": 2, "end_epoch": 3, "initial_epoch": 2}
    assert doc["params"]["epochs"] == 4


def test_without_a_with_block_the_fit_end_saves_completed(tmp_path: Path) -> None:
    """No with block, no save(): the file is written, completed, when training ends."""
    c = MetricsCollector(tmp_path)
    tm.two_tower_keras().fit(tm.keras_dataset(32), epochs=2, callbacks=[MetricsCallback(c)], verbose=0)
    doc = read(tmp_path)
    assert doc["status"] == "completed" and doc["epochs"] == [0, 1] and "final_loss" in doc["final_metrics"]


def run_script(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "trainer_callbacks" / "src")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_a_script_without_with_or_save_is_saved_at_exit(tmp_path: Path) -> None:
    """Values logged after the last save are written at interpreter exit: completed after a normal exit, failed with the error after an uncaught one."""
    done = run_script(f"""
        from trainer_callbacks import MetricsCollector
        c = MetricsCollector({str(tmp_path / "ok")!r})
        c.log_metric("loss", 0.5, step=0)
        c.log_metric("test_recall_at_100", 0.07)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    doc = read(tmp_path / "ok")
    assert doc["status"] == "completed" and doc["final_metrics"] == {"test_recall_at_100": 0.07}

    done = run_script(f"""
        from trainer_callbacks import MetricsCollector
        c = MetricsCollector({str(tmp_path / "bad")!r})
        c.log_metric("loss", 0.5, step=0)
        raise RuntimeError("data not found")
    """, tmp_path)
    assert done.returncode == 1 and "RuntimeError: data not found" in done.stderr  # the user's traceback still printed
    doc = read(tmp_path / "bad")
    assert doc["status"] == "failed" and doc["error"] == "RuntimeError: data not found" and doc["epochs"] == [0]
