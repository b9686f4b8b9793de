"""The memory budget's weights against what parsing really costs: dense worst-case files,
valid and schema-invalid, measured in child processes (peak RSS) through ingest.document's
public parse, and under a real functions-framework worker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests
from cloudevents.conversion import to_binary

from ingest.config import MEMORY_BUDGET_BYTES, Settings
from ingest.memory import PARSE_COST_PER_BYTE, memory_budget, memory_weight
from ingest.objects import ObjectRef
from tests.support.documents import DENSE_SHAPES, NESTED
from tests.support.function_server import ROOT, finalize_event, serve_function
from tests.support.platform_db import Artifacts, PlatformDb

MIB = 2**20

# Peak RSS above the baseline while ingest.document.prepare parses a dense file
# of ``size`` bytes (the file's own bytes counted, as after a download).
_CHILD = r"""
import json, os, sys


def peak_rss():
    # VmHWM: this process's own peak (ru_maxrss would include the forking parent's RSS).
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


sys.path[:0] = [sys.argv[1] + "/functions", sys.argv[1]]
from ingest import document
from ingest.errors import Rejected
head, unit, tail, size = sys.argv[2].encode(), sys.argv[3].encode(), sys.argv[4].encode(), int(sys.argv[5])
document.prepare(b'{"epochs": [0], "loss": {"loss": [1.0]}}')
data = head + unit * ((size - len(head) - len(tail)) // len(unit) - 1) + unit[:-1] + tail
with open("/proc/self/statm") as f:
    base = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") - len(data)
try:
    document.prepare(data)
except Rejected:
    pass
peak = peak_rss()
print(json.dumps({"size": len(data), "cost": peak - base}))
"""


def _parse_cost(shape: tuple[str, str, str], size: int) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(ROOT), *shape, str(size)], check=True, capture_output=True, text=True
    )
    found = json.loads(out.stdout)
    return found["size"], found["cost"]


# (head, unit repeated, tail): the densest shapes (bench/bench_memory.py measures them all),
# a valid array and files that fail the schema where the value is large.
SHAPES = {
    "floats": DENSE_SHAPES["floats"],
    "objects": DENSE_SHAPES["objects"],
    "nested objects": DENSE_SHAPES["nested"],
    "schema-invalid unknown key": DENSE_SHAPES["report"],
    "schema-invalid series": DENSE_SHAPES["invalid-series"],
    "schema-invalid params": DENSE_SHAPES["invalid-params"],
}


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_dense_file_costs_no_more_than_its_admission_weight(shape: tuple[str, str, str]) -> None:
    """Parsing (and rejecting) a 2 MiB dense file peaks under PARSE_COST_PER_BYTE x its size."""
    size, cost = _parse_cost(shape, 2 * MIB)
    assert cost <= PARSE_COST_PER_BYTE * size, f"{shape!r}: {cost / size:.1f}x the file, admitted at {PARSE_COST_PER_BYTE}x"


def _vm(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def test_hostile_files_stay_within_their_weight_under_a_real_worker(
    platform_db: PlatformDb, artifacts: Artifacts, tmp_path: Path
) -> None:
    """The 13.4 MiB schema-invalid file of the report (and a nested-objects one), served by
    functions-framework: rejected with one record, the worker's peak RSS growth under the admission weight."""
    env = {"DATABASE_URL": platform_db.url, "STORAGE_EMULATOR_HOST": artifacts.emulator.url}
    hostile = {
        "report": b'{"epochs":[0],"loss":{"l":[1]},"zz":[' + b",".join([b'{"":0}'] * 1_999_990) + b"]}",
        "nested": b'{"epochs":[0],"loss":{"l":[' + NESTED.encode() * 500_000 + b'{}]}}',
    }
    with serve_function(env, tmp_path / "server.log") as (process, url):
        workers = [process.pid] + [c.pid for c in psutil.Process(process.pid).children(recursive=True)]

        def deliver(data: bytes) -> tuple[dict, str]:
            _row, folder = platform_db.new_quicktest()
            resource = artifacts.upload(folder, data)
            headers, body = to_binary(finalize_event(resource, uuid.uuid4().hex))
            answer = requests.post(url, headers=headers, data=body, timeout=120)
            assert answer.status_code == 200, answer.text
            return resource, folder

        deliver(b'{"epochs": [0], "loss": {"loss": [1.0]}}')  # imports and clients loaded: the runtime
        for name, data in hostile.items():
            base = max(_vm(pid, "VmRSS") for pid in workers)
            before = max(_vm(pid, "VmHWM") for pid in workers)
            resource, _folder = deliver(data)
            [record] = platform_db.ingestions(resource["bucket"], resource["name"])
            assert record["outcome"] == "rejected", record
            grown = max(_vm(pid, "VmHWM") for pid in workers) - max(base, 0)
            weight = memory_weight(ObjectRef.from_resource(resource), Settings().max_metrics_bytes)
            assert before < base + weight  # the earlier peak does not hide this one
            assert grown <= weight, f"{name}: grew {grown / MIB:.0f} MiB, admitted at {weight / MIB:.0f} MiB"


def test_one_file_at_the_default_cap_fits_the_budget_alone() -> None:
    """With the default MAX_METRICS_BYTES, a file at the cap (or a gzip one, weighted at the cap) fits the budget at its worst."""
    settings = Settings()
    at_cap = ObjectRef("b", "q/training_metrics.json", 1, size=settings.max_metrics_bytes)
    gzipped = ObjectRef("b", "q/training_metrics.json", 1, size=1000, content_encoding="gzip")
    cap = settings.max_metrics_bytes
    assert memory_weight(at_cap, cap) == PARSE_COST_PER_BYTE * cap <= MEMORY_BUDGET_BYTES
    assert memory_weight(gzipped, cap) == memory_weight(at_cap, cap)
    assert memory_budget(settings.memory_budget_bytes).capacity == MEMORY_BUDGET_BYTES
    # A real file (the benchmark's 50 epochs x 140 metrics, ~0.3 MB) never waits for another.
    real = ObjectRef("b", "q/training_metrics.json", 1, size=300_000)
    assert 8 * memory_weight(real, cap) < MEMORY_BUDGET_BYTES


def test_over_cap_event_weighs_nothing() -> None:
    """An event over the cap is rejected from its size without a download: it holds no memory."""
    settings = Settings()
    over = ObjectRef("b", "q/training_metrics.json", 1, size=settings.max_metrics_bytes + 1)
    assert memory_weight(over, settings.max_metrics_bytes) == 0
