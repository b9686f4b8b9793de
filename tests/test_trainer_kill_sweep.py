"""SIGKILL at any moment of a real fit() with BackupAndRestore, then the same command again: every epoch the
checkpoint kept is in the file exactly once, and the final file equals an uninterrupted run's.

One child process imports TensorFlow once and forks one grandchild per attempt (an attempt
costs a fit, not an interpreter start); the grandchild kills itself with SIGKILL at the
chosen point: a batch end, between two callbacks' ``on_epoch_end`` (before or after the
collector's and the backup's), or at a time picked at random, which lands anywhere
(mid-batch, during serialization, while writing the file or the backup).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support.format_checks import check_document

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
FILE = "training_metrics.json"
EPOCHS, STEPS = 4, 6

ZYGOTE = textwrap.dedent(f"""
    import json, os, signal, sys, threading, time
    import numpy as np
    import tensorflow as tf
    from trainer_callbacks import MetricsCallback, MetricsCollector

    def attempt(job):
        tf.keras.utils.set_random_seed(0)
        tf.config.experimental.enable_op_determinism()
        rng = np.random.default_rng(0)
        x = rng.normal(size=({STEPS} * 8, 4)).astype("float32")
        y = (x @ np.array([1.0, -2.0, 0.5, 3.0], "float32"))[:, None]
        model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3, activation="relu"), tf.keras.layers.Dense(1)])
        model.compile(optimizer=tf.keras.optimizers.SGD(0.01), loss="mse")
        kill = job["kill"]
        die = lambda: os.kill(os.getpid(), signal.SIGKILL)
        if kill and kill[0] == "timer":
            threading.Timer(kill[1], die).start()

        def at(where):
            def hook(epoch, logs=None):
                if kill and kill[0] == where and kill[1] == epoch:
                    die()
            return hook

        def batch_end(batch, logs=None):
            if kill and kill[0] == "batch" and (state["epoch"], batch) == (kill[1], kill[2]):
                die()

        state = {{"epoch": 0}}
        collector = MetricsCollector(job["out"])
        backup = tf.keras.callbacks.BackupAndRestore(job["backup"], save_freq=job["save_freq"])
        marker = tf.keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: collector.log_metric("marker", 10 * e, step=e))
        first = tf.keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: state.update(epoch=e),
                                                  on_epoch_end=at("epoch_end_first"), on_train_batch_end=batch_end)
        middle = tf.keras.callbacks.LambdaCallback(on_epoch_end=at("epoch_end_middle"))
        last = tf.keras.callbacks.LambdaCallback(on_epoch_end=at("epoch_end_last"))
        ours = [MetricsCallback(collector), marker]
        # BackupAndRestore before the collector's callbacks, or after them: wherever the user put it.
        order = [first, backup, middle, *ours, last] if job["backup_first"] else [first, *ours, middle, backup, last]
        model.fit(x, y, batch_size=8, epochs={EPOCHS}, shuffle=False, verbose=0, callbacks=order)

    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                attempt(job)
                code = 0
            except BaseException as error:
                print("attempt failed:", repr(error), file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
""")


class Zygote:
    """The child that imports TensorFlow once and runs each attempt in a fork of itself."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "trainer_callbacks" / "src"), "TF_CPP_MIN_LOG_LEVEL": "3",
               "CUDA_VISIBLE_DEVICES": ""}
        self.process = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=sys.stderr, env=env, text=True)

    def run(self, **job: Any) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def zygote() -> Any:
    z = Zygote()
    yield z
    z.close()


def kill_points(save_freq: Any, rng: random.Random) -> list[list[Any]]:
    """Distinct points, in the order training reaches them (each attempt is killed at the next one)."""
    points: list[list[Any]] = []
    for epoch in range(EPOCHS):
        points.append(["batch", epoch, rng.randrange(STEPS)])
        points.append([rng.choice(["epoch_end_first", "epoch_end_middle", "epoch_end_last"]), epoch])
    return points


def final_file(zygote: Zygote, folder: Path, kills: list[list[Any]], save_freq: Any, backup_first: bool) -> tuple[dict, int]:
    """Run the job, killed at each point in turn and restarted with the same command, to completion."""
    job = {"out": str(folder / "run"), "backup": str(folder / "backup"), "save_freq": save_freq, "backup_first": backup_first}
    killed = 0
    for kill in kills:
        code = zygote.run(**job, kill=kill)
        if code == 0:
            break  # the restart began past this point: the run is complete
        assert code == -signal.SIGKILL, code
        killed += 1
    else:
        assert zygote.run(**job, kill=None) == 0
    return json.loads((folder / "run" / FILE).read_bytes()), killed


@pytest.mark.parametrize(("save_freq", "backup_first"), [("epoch", True), ("epoch", False), (4, True)])
def test_a_run_killed_anywhere_and_restarted_keeps_every_epoch_once(zygote: Zygote, tmp_path: Path, save_freq: Any, backup_first: bool) -> None:
    """SIGKILL at 8 scripted points plus random times; the final file has epochs 0-3 once each and the uninterrupted run's values."""
    reference, _ = final_file(zygote, tmp_path / "reference", [], save_freq, backup_first)
    check_document(reference)
    rng = random.Random(f"{save_freq}-{backup_first}")
    doc, killed = final_file(zygote, tmp_path / "scripted", kill_points(save_freq, rng), save_freq, backup_first)
    timed, killed_timed = final_file(zygote, tmp_path / "timed", [["timer", rng.uniform(0.3, 2.5)] for _ in range(4)], save_freq, backup_first)
    assert killed >= 6 and killed + killed_timed >= 7
    for result in (doc, timed):
        check_document(result)
        assert result["epochs"] == list(range(EPOCHS)) and result["status"] == "completed"
        assert result["metrics"]["marker"] == reference["metrics"]["marker"] == [0, 10, 20, 30]
        if save_freq == "epoch":  # a restored epoch backup makes the same epochs again, bit for bit
            assert result["loss"]["loss"] == reference["loss"]["loss"]
        else:  # Keras 3 reruns a half-backed-up epoch from its mid-epoch weights: only the count is fixed
            assert None not in result["loss"]["loss"]
