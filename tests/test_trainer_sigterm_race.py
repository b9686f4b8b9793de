"""SIGTERM at any moment never leaves a misaligned file; with GCS unreachable a local copy exists within 5 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.support.format_checks import check_document
from trainer_callbacks import MetricsCollector

REPO = Path(__file__).resolve().parents[1]
FILE = "training_metrics.json"
TRIALS = 40

RACE = textwrap.dedent("""
    import os, random, signal, sys, threading
    from trainer_callbacks import MetricsCollector, TrainingTerminated
    root, trials = sys.argv[1], int(sys.argv[2])
    rng = random.Random(7)
    names = [f"metric_{i}" for i in range(3000)]
    terminated = 0
    for trial in range(trials):
        timer = threading.Timer(rng.uniform(0.0, 0.25), os.kill, (os.getpid(), signal.SIGTERM))
        try:
            with MetricsCollector(os.path.join(root, str(trial))) as collector:
                timer.start()
                for epoch in range(10**6):
                    collector.training_started(0)
                    # each epoch's first value inserts a row into 3,000 series: the window a signal must not split
                    collector.log_metrics({name: epoch * 0.5 for name in names}, step=epoch)
                    collector.log_weight_stats("query", {"mean": 0.1}, {"bin_edges": [0, 1, 2], "counts": [1, 2]}, step=epoch)
        except TrainingTerminated as stop:
            assert stop.code == 143
            terminated += 1
        timer.cancel()
    print(terminated)
""")


def run(code: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "trainer_callbacks" / "src")}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_sigterm_at_many_moments_leaves_aligned_files_a_restart_continues(tmp_path: Path) -> None:
    """40 runs of 3,000 series each get SIGTERM at a random moment: every saved file is failed, aligned, valid, and continues."""
    done = run(RACE, str(tmp_path), str(TRIALS))
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout) == TRIALS
    sizes = []
    for trial in range(TRIALS):
        folder = tmp_path / str(trial)
        doc = json.loads((folder / FILE).read_bytes())
        assert doc["status"] == "failed" and "terminated by SIGTERM" in doc["error"]
        check_document(doc)
        sizes.append(len(doc["epochs"]))
        if trial % 10 == 0:  # a restart continues it
            with MetricsCollector(folder) as again:
                again.training_started(len(doc["epochs"]))
                again.log_metric("metric_0", 1.0, step=len(doc["epochs"]))
            assert json.loads((folder / FILE).read_bytes())["epochs"] == list(range(len(doc["epochs"]) + 1))
    assert len(set(sizes)) > 1, sizes  # the signal did land at different moments


def test_sigterm_with_gcs_unreachable_leaves_a_local_copy_within_5_seconds(tmp_path: Path) -> None:
    """The SIGTERM save writes the local copy before it tries the upload: it is there within 5 s while the upload still retries."""
    code = textwrap.dedent(f"""
        import os, signal, time
        from trainer_callbacks import MetricsCollector
        with MetricsCollector("gs://unreachable-bucket/run", check_destination=False) as collector:
            for epoch in range(3):
                collector.log_metric("loss", 1.0 / (epoch + 1), step=epoch)
            print("ready", flush=True)
            time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO / "trainer_callbacks" / "src"), "TMPDIR": str(tmp_path),
           "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "GOOGLE_CLOUD_PROJECT": "local-test"}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        local = tmp_path / "trainer_callbacks" / "unreachable-bucket" / "run" / FILE
        while not local.exists() and time.monotonic() - sent < 5:
            time.sleep(0.05)
        assert local.exists(), "no local copy 5 s after SIGTERM"
        assert child.poll() is None  # still trying the upload within its deadline
        doc = json.loads(local.read_bytes())
        assert doc["status"] == "failed" and doc["epochs"] == [0, 1, 2]
    finally:
        child.kill()
        child.wait(timeout=30)


def test_sigterm_during_a_fit_without_a_with_block_saves_failed(tmp_path: Path) -> None:
    """No with block: SIGTERM during fit() unwinds it, the exit save writes failed with the reason, the status is 143."""
    code = textwrap.dedent(f"""
        import os, signal
        import tensorflow as tf
        from tests.support import trainer_models as tm
        from trainer_callbacks import MetricsCallback, MetricsCollector
        collector = MetricsCollector({str(tmp_path / "run")!r})
        stop = tf.keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: e == 1 and os.kill(os.getpid(), signal.SIGTERM))
        tm.two_tower_keras().fit(tm.keras_dataset(32), epochs=5, verbose=0, callbacks=[MetricsCallback(collector), stop])
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "trainer_callbacks" / "src"), str(REPO)]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 143, done.stderr[-3000:]
    doc = json.loads((tmp_path / "run" / FILE).read_bytes())
    assert doc["status"] == "failed" and doc["epochs"] == [0, 1] and "terminated by SIGTERM" in doc["error"]
    check_document(doc)
