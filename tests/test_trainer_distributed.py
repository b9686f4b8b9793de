"""One writer under distribution strategies, against the GCS emulator: MirroredStrategy over two logical CPUs,
MultiWorkerMirroredStrategy with two local worker processes; ParameterServerStrategy and TPUStrategy refused.

Each training runs in child processes (logical devices and a cluster must be set before TensorFlow
starts); a timeout on each child is the watchdog: a worker waiting on a collective that never comes
fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from metrics_ingest.localstack.emulator import GcsEmulator

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
FILE = "training_metrics.json"
BUCKET = "trainer-distributed"
WATCHDOG = 300

TRAIN = textwrap.dedent("""
    import json, os, sys
    import tensorflow as tf
    mode, uri = sys.argv[1], sys.argv[2]
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    from tests.support import trainer_models as tm
    from trainer_callbacks import (GradientStatsCallback, MetricsCallback, MetricsCollector,
                                   WeightNormCallback, WeightStatsCallback)
    with strategy.scope():
        model = tm.two_tower_keras()
    data = tm.keras_dataset(64, batch=16)
    probe = next(iter(data))
    with MetricsCollector(uri) as collector:
        model.fit(data, epochs=2, verbose=0, callbacks=[
            MetricsCallback(collector), WeightNormCallback(collector), WeightStatsCallback(collector, bins=4),
            GradientStatsCallback(collector, probe)])
    print(json.dumps({"chief": collector.is_chief, "generation": collector._writer.generation,
                      "replicas": strategy.num_replicas_in_sync}))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def emulator(tmp_path: Path) -> Any:
    """An emulator of this test's own, recording every finalized object."""
    finalized: list[dict] = []
    gcs = GcsEmulator(on_finalize=finalized.append).start()
    gcs.create_bucket(BUCKET)
    gcs.finalized = finalized  # type: ignore[attr-defined]
    yield gcs
    gcs.stop()


def start(mode: str, uri: str, gcs: GcsEmulator, tmp: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    tmp.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "trainer_callbacks" / "src"), str(REPO)]),
           "TF_CPP_MIN_LOG_LEVEL": "3", "STORAGE_EMULATOR_HOST": gcs.url, "GOOGLE_CLOUD_PROJECT": "local-test",
           "TMPDIR": str(tmp), "CUDA_VISIBLE_DEVICES": "", **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-c", TRAIN, mode, uri], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(child: subprocess.Popen[str]) -> dict:
    try:
        out, err = child.communicate(timeout=WATCHDOG)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        raise AssertionError(f"a worker hung past the {WATCHDOG} s watchdog:\n{err[-3000:]}") from None
    assert child.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def uploads(gcs: GcsEmulator, folder: str) -> list[dict]:
    return [o for o in gcs.finalized if o["name"] == f"{folder}/{FILE}"]  # type: ignore[attr-defined]


def test_mirrored_strategy_over_two_cpus_writes_once(emulator: GcsEmulator, tmp_path: Path) -> None:
    """MirroredStrategy over two logical CPUs, all four callbacks: one process, one save, one object generation, a valid file."""
    from google.cloud import storage

    folder = uuid.uuid4().hex
    result = finish(start("mirrored", f"gs://{BUCKET}/{folder}", emulator, tmp_path / "tmp"))
    assert result["replicas"] == 2 and result["chief"] is True
    made = uploads(emulator, folder)
    assert len(made) == 1 and int(made[0]["generation"]) == result["generation"]
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
    try:
        doc = json.loads(storage.Client(project="local-test").bucket(BUCKET).blob(f"{folder}/{FILE}").download_as_bytes())
    finally:
        del os.environ["STORAGE_EMULATOR_HOST"]
    assert doc["epochs"] == [0, 1] and set(doc["weight_stats"]) == {"query", "candidate"}


def test_multi_worker_mirrored_strategy_only_the_chief_writes(emulator: GcsEmulator, tmp_path: Path) -> None:
    """Two local workers (tf-keras, TF_CONFIG on 127.0.0.1): one object generation, written by worker 0; worker 1 writes nothing, not even a temp folder."""
    folder = uuid.uuid4().hex
    ports = [free_port(), free_port()]
    workers = []
    for index in range(2):
        config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
        workers.append(start("multi", f"gs://{BUCKET}/{folder}", emulator, tmp_path / f"tmp{index}",
                             {"TF_CONFIG": json.dumps(config), "TF_USE_LEGACY_KERAS": "1"}))
    chief, other = (finish(w) for w in workers)
    assert chief["chief"] is True and other["chief"] is False
    made = uploads(emulator, folder)
    assert len(made) == 1 and int(made[0]["generation"]) == chief["generation"]
    assert other["generation"] is None
    assert os.listdir(tmp_path / "tmp1") == []  # no fallback copy, no temp folder on the other worker


def test_parameter_server_and_tpu_strategies_are_refused_at_train_begin(tmp_path: Path) -> None:
    """Under ParameterServerStrategy or TPUStrategy the collector's callbacks raise at on_train_begin, naming what is supported."""
    import tensorflow as tf

    from trainer_callbacks import MetricsCallback, MetricsCollector
    from trainer_callbacks.keras_compat import _unsupported_strategy

    for kind in (tf.distribute.TPUStrategy, tf.distribute.experimental.ParameterServerStrategy):
        strategy = object.__new__(kind)  # a real instance of the class; no TPU or cluster here to initialise it with
        assert "MirroredStrategy and MultiWorkerMirroredStrategy" in (_unsupported_strategy(strategy) or "")
    assert _unsupported_strategy(tf.distribute.MirroredStrategy(["/cpu:0"])) is None

    callback = MetricsCallback(MetricsCollector(tmp_path))
    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
    model._distribute_strategy = object.__new__(tf.distribute.TPUStrategy)  # what Keras reads as model.distribute_strategy
    callback.set_model(model)
    with pytest.raises(ValueError, match="does not support TPUStrategy"):
        callback.on_train_begin()
