"""The statistics callbacks under MirroredStrategy and MultiWorkerMirroredStrategy equal a single-device run's.

Each run is a child process (tests/support/distributed_stats_run.py): logical
devices must be configured before TensorFlow starts, and Keras cannot change
flavour inside a process. A watchdog (the timeout) ends a run that hangs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PRODUCT_ENV
from tests.support.format_checks import check_document, check_strict_json

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
WATCHDOG_SECONDS = 240


def child_env(legacy: bool, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PRODUCT_ENV and k != "TF_CONFIG"}
    env.update({
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "trainer_callbacks" / "src")]),
        **extra,
    })
    if legacy:
        env["TF_USE_LEGACY_KERAS"] = "1"
    else:
        env.pop("TF_USE_LEGACY_KERAS", None)
    return env


def command(kind: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "tests.support.distributed_stats_run", kind, str(out)]


def assert_equals_single_device(out: Path, replicas: int, writes: bool = True) -> None:
    check = json.loads((out / "check.json").read_text())
    assert check["replicas"] == replicas and check["missing"] == [] and check["callback_errors"] == []
    assert len(check["names"]) == 21  # 3 norms + 2 towers x (4 weight + 5 gradient statistics)
    assert check["max_relative"] <= 1e-5, check["worst"]
    assert check["compiled_loss_relative"] <= 1e-5  # a compiled loss + BatchNorm model too (mirrored runs)
    assert all(diff == 0 for diff in check["count_diff"].values()), check["count_diff"]
    assert check["timing"] == ["device_peak_bytes", "epoch_seconds", "examples_per_second", "host_peak_bytes", "steps_per_second"]
    if not writes:  # a non-chief worker collects in memory and writes nothing anywhere
        assert not (out / "run").exists()
        return
    doc = check_strict_json((out / "run" / "training_metrics.json").read_bytes())
    check_document(doc)
    assert doc["epochs"] == [0, 1] and "callback_errors" not in doc


@pytest.mark.parametrize("legacy", [False, True], ids=["keras3", "tf-keras-tfrs"])
def test_mirrored_strategy_statistics_equal_a_single_device_run(tmp_path: Path, legacy: bool) -> None:
    """MirroredStrategy over two logical CPUs: all four callbacks record, each variable once, as on one device; a compiled loss too."""
    result = subprocess.run(command("mirrored", tmp_path), cwd=ROOT, env=child_env(legacy),
                            capture_output=True, text=True, timeout=WATCHDOG_SECONDS)
    assert result.returncode == 0, result.stderr[-4000:]
    assert_equals_single_device(tmp_path, replicas=2)


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(tmp_path: Path, legacy: bool) -> list[tuple[int, str]]:
    """Two local workers of one MultiWorkerMirroredStrategy job; both are killed if either outlives the watchdog."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers: list[Any] = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        log = open(tmp_path / f"worker{index}.log", "w")  # noqa: SIM115 - closed below
        workers.append((subprocess.Popen(command("multiworker", tmp_path / f"worker{index}"), cwd=ROOT,
                                         env=child_env(legacy, TF_CONFIG=tf_config), stdout=log, stderr=subprocess.STDOUT), log))
    results = []
    try:
        for process, log in workers:
            process.wait(timeout=WATCHDOG_SECONDS)
    finally:
        for process, log in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    for index, (process, _) in enumerate(workers):
        results.append((process.returncode, (tmp_path / f"worker{index}.log").read_text()[-4000:]))
    return results


def test_multi_worker_mirrored_strategy_every_worker_equals_a_single_device_run(tmp_path: Path) -> None:
    """Two tf-keras TFRS workers on 127.0.0.1: no hang, each worker's statistics equal the single-device reference,
    and only the chief (worker 0) writes its file."""
    for code, log in run_workers(tmp_path, legacy=True):
        assert code == 0, log
    for index in range(2):
        assert_equals_single_device(tmp_path / f"worker{index}", replicas=2, writes=index == 0)
