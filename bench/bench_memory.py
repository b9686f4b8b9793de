"""Peak memory of parsing, and of a whole instance, for dense worst-case files.

Every figure is measured in a child process of its own (peak RSS: its
``VmHWM``), through ``ingest.document.prepare`` (whatever parser it
uses) and ``ingest.memory`` (the admission budget the pipeline holds), and
printed as a ratio to a baseline measured in the same run:

1. One file: peak RSS above the process's baseline, as a multiple of the file's
   size, against its admission weight (``PARSE_COST_PER_BYTE``), for dense
   shapes (``[1,1,...]``, ``[0.5,0.5,...]``, ``[{},{},...]``, nested one-key
   objects, the worst found), files that fail the schema where the failing
   value is large (the hostile report's ``"zz": [{"":0}, ...]``, such objects
   in a series or a parameter: their errors must not copy the value), and a
   real file (the benchmark's 50 epochs x 140 metrics, scaled up).
   A file over ``MAX_METRICS_BYTES`` is rejected from the event's size,
   never downloaded: its row says so.
2. An instance: ``--concurrency`` events at once (the deployed 8), each a
   worst-case file just under ``MAX_METRICS_BYTES``, admitted by the memory
   budget as the pipeline does; peak RSS against the deployed 1 GiB and
   against the runtime's own (functions-framework, GCS client, psycopg2,
   jsonschema imported, nothing parsed).

Run from the repository root::

    python bench/bench_memory.py                       # ~3 min on 2 cores, up to ~2 GB of memory
    python bench/bench_memory.py --sizes 4 16 --shapes nested report invalid-series
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
INSTANCE_MEMORY = 1024 * MIB  # deploy.sh: --memory 1GiB

sys.path.insert(0, str(ROOT))
from tests.support.documents import DENSE_SHAPES as UNITS  # noqa: E402 - each dense shape as (head, unit, tail)

CHILD = r'''
import json, os, sys, threading
sys.path[:0] = [sys.argv[1] + "/functions", sys.argv[1]]
mode, shape, size, concurrency = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
import functions_framework, google.cloud.storage, psycopg2  # the runtime's own weight
from ingest import document
from ingest.config import Settings
from ingest.errors import Rejected
from ingest.memory import memory_budget, memory_weight
from ingest.objects import ObjectRef

UNITS = json.loads(sys.argv[6])


def peak_rss():
    # VmHWM: this process's own peak (ru_maxrss would include the forking parent's RSS).
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make(shape, size):
    if shape == "real":
        from tests.support.documents import dumps, megabyte_document
        one = dumps(megabyte_document(140))
        doc = json.loads(one)
        reps = max(1, size // len(one))
        # The real layout, more epochs: every series grows, the structure stays.
        doc["epochs"] = list(range(50 * reps))
        def grow(node):
            if isinstance(node, list) and len(node) == 50:
                return node * reps
            if isinstance(node, dict):
                return {k: grow(v) for k, v in node.items()}
            return node
        return json.dumps(grow(doc)).encode()
    head, unit, tail = (part.encode() for part in UNITS[shape])
    n = max(1, (size - len(head) - len(tail)) // len(unit))  # the last unit's comma dropped: at most ``size`` bytes
    return head + unit * (n - 1) + unit[:-1] + tail


def prepare(data):
    try:
        document.prepare(data)
    except Rejected:
        pass  # a shape the schema refuses is parsed all the same: parsing is the peak


document.prepare(b'{"epochs": [0], "loss": {"loss": [1.0]}}')  # the validator, built once per process
settings = Settings()
base = rss()
if mode == "one":
    data = make(shape, size)
    size = len(data)
    admitted = size <= settings.max_metrics_bytes
    if admitted:
        base = rss()  # with the file's bytes in memory, as after the download
        prepare(data)
    del data
    print(json.dumps({"size": size, "admitted": admitted, "base": base,
                      "peak": peak_rss()}))
else:
    size = settings.max_metrics_bytes - 1024
    errors = []
    def event(i):
        ref = ObjectRef("b", f"q{i}/training_metrics.json", i + 1, size=size)
        try:
            with memory_budget(settings.memory_budget_bytes).hold(memory_weight(ref, settings.max_metrics_bytes)):
                data = make(shape, size)  # the download: inside the hold, as in the pipeline
                prepare(data)
                del data
        except BaseException as exc:
            errors.append(repr(exc))
    threads = [threading.Thread(target=event, args=(i,)) for i in range(concurrency)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(json.dumps({"size": size, "base": base, "errors": errors, "cap": settings.max_metrics_bytes,
                      "peak": peak_rss()}))
'''


def child(mode: str, shape: str, size: int, concurrency: int = 1) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), mode, shape, str(size), str(concurrency), json.dumps(UNITS)],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 4, 16, 64], help="file sizes in MiB")
    parser.add_argument("--shapes", nargs="+", default=[*UNITS, "real"])
    parser.add_argument("--concurrency", type=int, default=8, help="events at once per instance (deployed: 8)")
    parser.add_argument("--instance-shapes", nargs="+", default=["floats", "nested", "report"])
    args = parser.parse_args()

    print("1. one file: peak RSS above the process's baseline (file bytes included), as a multiple of the file")
    from ingest.memory import PARSE_COST_PER_BYTE

    print(f"   {'shape':15} {'size':>8} {'peak RSS':>10} {'over base':>10} {'x file':>7}  admitted at")
    for shape in args.shapes:
        for mib in args.sizes:
            r = child("one", shape, int(mib * MIB))
            if not r["admitted"]:
                print(f"   {shape:15} {r['size'] / MIB:7.1f}M {'-':>10} {'-':>10} {'-':>7}  over MAX_METRICS_BYTES: "
                      "rejected from the event's size, never downloaded")
                continue
            over = r["peak"] - r["base"]
            ratio = (over + r["size"]) / r["size"]
            verdict = "ok" if ratio <= PARSE_COST_PER_BYTE else "OVER"
            print(f"   {shape:15} {r['size'] / MIB:7.1f}M {r['peak'] / MIB:9.0f}M {over / MIB:9.0f}M "
                  f"{ratio:6.1f}x  {PARSE_COST_PER_BYTE}x {verdict}")

    print(f"\n2. an instance: {args.concurrency} events at once, each a file at MAX_METRICS_BYTES, "
          "through the memory budget")
    runtime = child("one", "ints", 0)["base"]
    print(f"   runtime alone (imports, nothing parsed): {runtime / MIB:.0f} MiB")
    for shape in args.instance_shapes:
        r = child("instance", shape, 0, args.concurrency)
        assert not r["errors"], r["errors"]
        print(f"   {shape:15} {args.concurrency} x {r['size'] / MIB:.1f} MiB: peak RSS {r['peak'] / MIB:.0f} MiB = "
              f"{r['peak'] / runtime:.1f}x the runtime, {r['peak'] / INSTANCE_MEMORY:.2f}x the 1 GiB instance "
              f"(MAX_METRICS_BYTES {r['cap']})")


if __name__ == "__main__":
    main()
