"""The memory budget's weights against what parsing really costs: dense worst-case files
measured in child processes (peak RSS), through ingest.document's public parse."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ingest.config import Settings
from ingest.memory import BUDGET_BYTES, PARSE_COST_PER_BYTE, memory_budget, memory_weight
from ingest.objects import ObjectRef
from tests.support.function_server import ROOT

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
unit, size = sys.argv[2].encode(), int(sys.argv[3])
document.prepare(b'{"epochs": [0], "loss": {"loss": [1.0]}}')
data = b"[" + unit * ((size - 1) // len(unit) - 1) + unit[:-1] + b"]"
with open("/proc/self/statm") as f:
    base = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") - len(data)
try:
    document.prepare(data)
except Rejected:
    pass
peak = peak_rss()
print(json.dumps({"size": len(data), "cost": peak - base}))
"""


def _parse_cost(unit: str, size: int) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(ROOT), unit, str(size)], check=True, capture_output=True, text=True
    )
    found = json.loads(out.stdout)
    return found["size"], found["cost"]


@pytest.mark.parametrize("unit", ["1,", "0.5,", "999,", '"ab",', "{},", "[],"], ids=["ints", "floats", "ints3", "strings", "objects", "lists"])
def test_dense_file_costs_no_more_than_its_admission_weight(unit: str) -> None:
    """Parsing a 4 MiB dense file (the worst shapes: one tiny value per few bytes) peaks under PARSE_COST_PER_BYTE x its size."""
    size, cost = _parse_cost(unit, 4 * MIB)
    assert cost <= PARSE_COST_PER_BYTE * size, f"{unit!r}: {cost / size:.1f}x the file, admitted at {PARSE_COST_PER_BYTE}x"


def test_one_file_at_the_default_cap_fits_the_budget_alone() -> None:
    """With the default MAX_METRICS_BYTES, a file at the cap (or a gzip one, weighted at the cap) fits the budget at its worst."""
    settings = Settings()
    at_cap = ObjectRef("b", "q/training_metrics.json", 1, size=settings.max_metrics_bytes)
    gzipped = ObjectRef("b", "q/training_metrics.json", 1, size=1000, content_encoding="gzip")
    assert memory_weight(at_cap, settings) == PARSE_COST_PER_BYTE * settings.max_metrics_bytes <= BUDGET_BYTES
    assert memory_weight(gzipped, settings) == memory_weight(at_cap, settings)
    assert memory_budget(settings).capacity == BUDGET_BYTES
    # A real file (the benchmark's 50 epochs x 140 metrics, ~0.3 MB) never waits for another.
    real = ObjectRef("b", "q/training_metrics.json", 1, size=300_000)
    assert 8 * memory_weight(real, settings) < BUDGET_BYTES


def test_over_cap_event_weighs_nothing() -> None:
    """An event over the cap is rejected from its size without a download: it holds no memory."""
    settings = Settings()
    over = ObjectRef("b", "q/training_metrics.json", 1, size=settings.max_metrics_bytes + 1)
    assert memory_weight(over, settings) == 0
