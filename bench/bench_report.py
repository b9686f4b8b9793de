"""Size and speed of ``metrics-ingest report`` against its budgets.

The document: 50 epochs x 140 metrics (70 training series and their ``val_``
twins) + 4 losses, 2 towers of weight and gradient statistics, 4 histograms
x 50 bins. Measured:

1. the page's size (budget 1.5 MB);
2. building it in a fresh process, imports included: ``python -m metrics_ingest
   report FILE -o OUT`` from start to exit (budget 2 s; best of ``--repeat``);
3. rendering it in headless Chromium, offline: from navigation start until
   every chart is drawn (``metricsReport.renderMs``, budget 2 s; best of ``--repeat``),
   and the same for a comparison of two runs.

Run from the repository root (needs Debian's chromium)::

    .venv/bin/python bench/bench_report.py               # ~20 s on 2 cores
    .venv/bin/python bench/bench_report.py --repeat 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "functions"), str(ROOT)]

from tests.support.browser import Browser  # noqa: E402
from tests.support.documents import v1_document  # noqa: E402

SIZE_BUDGET = 1.5e6
BUILD_BUDGET_S = 2.0
RENDER_BUDGET_S = 2.0


def bench_document(seed: int = 0, epochs: int = 50) -> dict:
    """50 epochs x 140 metrics + 4 histograms x 50 bins (the issue's size)."""
    doc = v1_document(epochs, metrics=70, bins=50, seed=seed)
    doc["metrics"].update({f"val_{name}": list(values) for name, values in doc["metrics"].items()})
    return doc


def build(source: list[Path], out: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "metrics_ingest", "report", *map(str, source), "-o", str(out)],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best is kept (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        one = folder / "a" / "training_metrics.json"
        two = folder / "b" / "training_metrics.json"
        for path, seed, epochs in ((one, 0, 50), (two, 1, 40)):
            path.parent.mkdir()
            path.write_text(json.dumps(bench_document(seed, epochs)))
        doc = json.loads(one.read_text())
        series = len(doc["loss"]) + len(doc["metrics"])
        print(f"document: {len(doc['epochs'])} epochs, {series} loss+metrics series, "
              f"4 histograms x 50 bins, {one.stat().st_size / 1e6:.2f} MB")
        page, compare = folder / "one.html", folder / "two.html"
        builds = [build([one], page) for _ in range(args.repeat)]
        build([one, two], compare)
        size = page.stat().st_size
        renders, compares, loads = [], [], []
        with Browser() as browser:
            for _ in range(args.repeat):
                opened = browser.open(page)
                assert not opened.console_errors, opened.console_errors
                renders.append(opened.evaluate("metricsReport.renderMs") / 1000)
                loads.append(opened.load_seconds)
                charts = opened.evaluate("metricsReport.charts.length")
                opened = browser.open(compare)
                compares.append(opened.evaluate("metricsReport.renderMs") / 1000)
    rows = [
        ("page size", f"{size / 1e6:.2f} MB", size <= SIZE_BUDGET, "1.5 MB"),
        ("build, fresh process", f"{min(builds):.2f} s", min(builds) <= BUILD_BUDGET_S, "2 s"),
        (f"render in Chromium ({charts} charts)", f"{min(renders):.2f} s", min(renders) <= RENDER_BUDGET_S, "2 s"),
        ("render, 2 runs compared", f"{min(compares):.2f} s", min(compares) <= RENDER_BUDGET_S, "2 s"),
    ]
    for what, value, ok, budget in rows:
        print(f"  {what:<34} {value:>9}   budget {budget:<7} {'ok' if ok else 'OVER'}")
    print(f"  (all runs: build {', '.join(f'{b:.2f}' for b in builds)} s; render {', '.join(f'{r:.2f}' for r in renders)} s;"
          f" goto+ready as seen by the driver {min(loads):.2f} s)")
    return 0 if all(ok for *_, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
