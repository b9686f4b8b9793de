"""With BackupAndRestore among the callbacks, the file holds every epoch a backup holds, at the moment it is written."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tensorflow as tf

from tests.support import trainer_models as tm
from trainer_callbacks import MetricsCallback, MetricsCollector, WeightNormCallback

FILE = "training_metrics.json"


class WatchedBackup(tf.keras.callbacks.BackupAndRestore):
    """A real BackupAndRestore that notes, as each backup is written, the epoch it restarts at and the file's epochs."""

    def __init__(self, folder: Path, target: Path, **kwargs: Any) -> None:
        super().__init__(str(folder), **kwargs)
        self.target = target
        self.seen: list[tuple[int, list[int]]] = []

    def _save_model(self) -> None:
        epochs = json.loads(self.target.read_bytes())["epochs"] if self.target.exists() else []
        self.seen.append((self._current_epoch, epochs))
        super()._save_model()


@pytest.mark.parametrize(("save_freq", "first"), [("epoch", True), ("epoch", False), (3, True)])
def test_each_backup_finds_its_epochs_already_saved(tmp_path: Path, save_freq: Any, first: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Wherever BackupAndRestore stands and whatever its save_freq, each backup (restart at epoch k) finds epochs 0..k-1 in the file; one save per backup at most."""
    backup = WatchedBackup(tmp_path / "backup", tmp_path / "run" / FILE, save_freq=save_freq, delete_checkpoint=False)
    with caplog.at_level(logging.INFO, logger="trainer_callbacks"), MetricsCollector(tmp_path / "run") as c:
        ours = [MetricsCallback(c), WeightNormCallback(c)]
        tm.two_tower_keras().fit(tm.keras_dataset(64, batch=16), epochs=3, verbose=0,
                                 callbacks=[backup, *ours] if first else [*ours, backup])
    assert backup.seen, "no backup was written"
    for restart_at, epochs in backup.seen:
        assert epochs == list(range(restart_at)), (restart_at, epochs)
    saves = [r for r in caplog.records if r.getMessage().startswith("saved ")]
    new_epochs = len({restart_at for restart_at, _ in backup.seen if restart_at > 0})
    assert len(saves) <= len(backup.seen) + 1 and len(saves) >= new_epochs  # + the final save at the block's end
    assert json.loads((tmp_path / "run" / FILE).read_bytes())["epochs"] == [0, 1, 2]


TF_KERAS_CHILD = """
import json, os, shutil, sys
import tensorflow as tf
from tests.support import trainer_models as tm
from trainer_callbacks import MetricsCallback, MetricsCollector
root = sys.argv[1]
target = os.path.join(root, "run", "training_metrics.json")
seen = {}

class Watched(tf.keras.callbacks.BackupAndRestore):
    def _backup(self, epoch, batch=0):
        epochs = json.load(open(target))["epochs"] if os.path.exists(target) else []
        seen.setdefault(str(self.save_freq), []).append([epoch, epochs])
        super()._backup(epoch, batch)

for freq in ("epoch", 3):
    shutil.rmtree(os.path.join(root, "run"), ignore_errors=True)
    with MetricsCollector(os.path.join(root, "run")) as c:
        tm.two_tower_keras().fit(tm.keras_dataset(64, batch=16), epochs=3, verbose=0, callbacks=[
            Watched(os.path.join(root, f"backup-{freq}"), save_freq=freq), MetricsCallback(c)])
print(json.dumps(seen))
"""


@pytest.mark.slow
def test_tf_keras_backups_find_their_epochs_already_saved(tmp_path: Path) -> None:
    """The same under tf-keras (TF_USE_LEGACY_KERAS=1, its `_backup(epoch, batch)`): an epoch backup finds epochs 0..e, a batch backup 0..e-1."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(repo / "trainer_callbacks" / "src"), str(repo)])}
    done = subprocess.run([sys.executable, "-c", TF_KERAS_CHILD, str(tmp_path)], env=env, cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["epoch"] == [[0, [0]], [1, [0, 1]], [2, [0, 1, 2]]]
    assert seen["3"] and all(epochs == list(range(epoch)) for epoch, epochs in seen["3"])
