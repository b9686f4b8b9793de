"""SIGTERM (Vertex AI's preemption notice) inside a collector's ``with`` block saves the epochs so far.

Each run is a child process, as a training job is: the signal is real (``os.kill``),
and the process's exit status is what the platform would see.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.format_checks import check_document

REPO = Path(__file__).resolve().parents[1]
FILE = "training_metrics.json"


def run_child(code: str, tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (with ``args`` in sys.argv) in a fresh interpreter with the trainer package importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "trainer_callbacks" / "src"), str(REPO)]),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_sigterm_saves_the_epochs_so_far_and_exits_143(tmp_path: Path) -> None:
    """A SIGTERM between epochs saves them as `failed` with the reason, and the process still ends with 143."""
    done = run_child(f"""
        import os, signal
        from trainer_callbacks import MetricsCollector
        with MetricsCollector({str(tmp_path / "run")!r}) as collector:
            for epoch in range(3):
                collector.log_metric("loss", 1.0 / (epoch + 1), step=epoch)
            os.kill(os.getpid(), signal.SIGTERM)
            collector.log_metric("loss", 0.0, step=99)  # never reached
    """, tmp_path)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    doc = json.loads((tmp_path / "run" / FILE).read_text())
    check_document(doc)
    assert doc["status"] == "failed"
    assert doc["epochs"] == [0, 1, 2]
    assert "terminated by SIGTERM" in doc["error"]


def test_a_handler_of_your_own_is_left_alone(tmp_path: Path) -> None:
    """With a SIGTERM handler already installed, the collector does not replace it (and puts nothing back wrong)."""
    done = run_child(f"""
        import os, signal
        from trainer_callbacks import MetricsCollector
        seen = []
        signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
        with MetricsCollector({str(tmp_path / "run")!r}) as collector:
            collector.log_metric("loss", 1.0, step=0)
            os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM], seen
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        print("handled")
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "handled" in done.stdout
    assert json.loads((tmp_path / "run" / FILE).read_text())["status"] == "completed"


def test_the_default_handler_is_back_after_the_block(tmp_path: Path) -> None:
    """Outside the block SIGTERM means what it always did; save_on_sigterm=False never touches it."""
    done = run_child(f"""
        import signal
        from trainer_callbacks import MetricsCollector
        with MetricsCollector({str(tmp_path / "a")!r}) as collector:
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        with MetricsCollector({str(tmp_path / "b")!r}, save_on_sigterm=False):
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        print("ok")
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.slow
def test_keras_run_preempted_by_sigterm_then_restarted_keeps_every_epoch(tmp_path: Path) -> None:
    """A real Keras 3 fit() that gets SIGTERM at epoch 2, then a restart with BackupAndRestore: every epoch once."""
    script = f"""
        import os, signal, sys
        import tensorflow as tf
        from tests.support import trainer_models as tm
        from trainer_callbacks import MetricsCallback, MetricsCollector
        first = sys.argv[1] == "first"

        def preempt(epoch, logs):
            if first and epoch == 2:
                os.kill(os.getpid(), signal.SIGTERM)

        with MetricsCollector({str(tmp_path / "run")!r}) as collector:
            tm.two_tower_keras().fit(tm.keras_dataset(64), epochs=5, verbose=0, callbacks=[
                MetricsCallback(collector),
                tf.keras.callbacks.BackupAndRestore({str(tmp_path / "backup")!r}),
                tf.keras.callbacks.LambdaCallback(on_epoch_end=preempt)])
    """
    first = run_child(script, tmp_path, "first")
    assert first.returncode == 143, first.stderr[-2000:]
    saved = json.loads((tmp_path / "run" / FILE).read_text())
    assert saved["status"] == "failed" and saved["epochs"] == [0, 1, 2]

    second = run_child(script, tmp_path, "second")
    assert second.returncode == 0, second.stderr[-2000:]
    doc = json.loads((tmp_path / "run" / FILE).read_text())
    check_document(doc)
    assert doc["status"] == "completed"
    assert doc["epochs"] == [0, 1, 2, 3, 4]
    assert all(v is not None for v in doc["loss"]["loss"])
