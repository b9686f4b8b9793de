"""Replay throughput (files/s) with 1 and 8 workers, and the demo's wall time.

Runs everything locally: PostgreSQL from pgserver (or TEST_DATABASE_URL, a
superuser URL), the GCS emulator in a separate process (so it does not share
this process's GIL, as real GCS would not), and ``run_replay`` - the code
behind ``metrics-ingest replay`` - in this process. Each measurement replays
a fresh bucket whose files all have rows, so every file is really ingested.

Figures are printed as ratios to the 1-worker baseline of the same run, next
to a download-only ceiling (the same files fetched from the emulator by the
same number of threads, no database): when replay's speed-up tracks that
ceiling, the emulator, not our code, is what bounds it.

Usage::

    PYTHONPATH=functions:.:trainer_callbacks/src python bench/bench_replay.py            # all
    PYTHONPATH=functions:.:trainer_callbacks/src python bench/bench_replay.py --no-demo
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2
import psycopg2.extras

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "functions"), str(REPO_ROOT), str(REPO_ROOT / "trainer_callbacks" / "src")]

from ingest import store  # noqa: E402
from ingest.config import Settings  # noqa: E402
from metrics_ingest.localstack import ensure_database, prepare_database  # noqa: E402
from metrics_ingest.replay import GcsTarget, ReplayOptions, make_storage_client, run_replay  # noqa: E402
from tests.support.documents import dumps, v1_document  # noqa: E402

EMULATOR_SCRIPT = """
import sys, time
from metrics_ingest.gcs_emulator import GcsEmulator
emulator = GcsEmulator().start()
print(emulator.url, flush=True)
sys.stdin.read()   # until the parent closes stdin
emulator.stop()
"""


def megabyte_file() -> bytes:
    """A real-looking 1 MB training_metrics.json: 50 epochs, ~500 metric series,
    4 histograms x 50 bins, pretty-printed as the plan's sketch wrote it."""
    metrics = 500
    while True:
        data = dumps(v1_document(50, metrics=metrics, bins=50, seed=1, count_max=10**9), indent=2)
        if len(data) >= 1_000_000:
            return data
        metrics += 10


def start_emulator() -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "functions"), str(REPO_ROOT)])}
    proc = subprocess.Popen(
        [sys.executable, "-c", EMULATOR_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def fill(client, database_url: str, emulator_url: str, files: int, data: bytes) -> str:  # noqa: ANN001
    """A fresh bucket of ``files`` metrics files, each with its QuickTest row."""
    bucket_name = f"bench-{uuid.uuid4().hex[:10]}"
    client.create_bucket(bucket_name)
    bucket = client.bucket(bucket_name)
    folders = [f"quick_tests/{i:05d}" for i in range(files)]
    with cf.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda f: bucket.blob(f"{f}/training_metrics.json").upload_from_string(data), folders))
    conn = psycopg2.connect(database_url)
    with conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO ml_platform_quicktest (name, gcs_artifacts_path) VALUES %s",
            [(f, f"gs://{bucket_name}/{f}") for f in folders],
        )
    conn.close()
    return bucket_name


class CpuMeter:
    """CPU seconds (user + system) used by each part: this process (replay), the
    emulator process, and PostgreSQL (the postmaster with its backends, live
    and exited), to tell what bounds the throughput on this machine."""

    def __init__(self, parts: dict[str, int | None]) -> None:
        import psutil

        self.parts = {name: psutil.Process(pid) for name, pid in parts.items() if pid}

    def sample(self) -> dict[str, float]:
        out = {}
        for name, proc in self.parts.items():
            t = proc.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            # PostgreSQL's work is in its backends; the emulator is our child but counted on its own.
            for child in proc.children(recursive=True) if name == "postgres" else ():
                try:
                    c = child.cpu_times()
                    total += c.user + c.system
                except Exception:  # noqa: BLE001 - a backend that just exited is counted by its parent
                    continue
            out[name] = total
        return out


def replay_rate(
    settings: Settings, client, bucket: str, workers: int, meter: CpuMeter  # noqa: ANN001
) -> tuple[float, dict[str, int], dict[str, float], float]:
    before = meter.sample()
    report = run_replay(ReplayOptions(GcsTarget(bucket, "quick_tests/"), workers=workers, settings=settings), client=client)
    after = meter.sample()
    cpu = {name: after[name] - before[name] for name in after}
    return report.matched / report.duration_s, report.counts, cpu, report.duration_s


def download_rate(client, bucket: str, workers: int) -> float:  # noqa: ANN001
    blobs = list(client.list_blobs(bucket))
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda b: b.download_as_bytes(), blobs))
    return len(blobs) / (time.perf_counter() - started)


def bench_replay(database_url: str, emulator_url: str, small: int, large: int, meter: CpuMeter) -> None:
    os.environ["STORAGE_EMULATOR_HOST"] = emulator_url
    os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "bench")
    # The pipeline's per-object log lines would drown the figures (replay's own default too).
    logging.getLogger("ingest").addHandler(logging.NullHandler())
    logging.getLogger("ingest").propagate = False
    settings = Settings(database_url=database_url)
    client = make_storage_client(workers=8)
    cases = [
        (f"{small} small files", small, dumps(v1_document(10, seed=3))),
        (f"{large} files of 1 MB", large, megabyte_file()),
    ]
    print(
        f"{'case':<22}{'workers':>8}{'files/s':>10}{'MB/s':>8}{'vs 1 worker':>13}{'download-only files/s':>24}"
        f"{'(vs 1)':>8}   CPU ms per file: {' / '.join(meter.parts)}   cores busy"
    )
    for label, files, data in cases:
        base = base_dl = None
        for workers in (1, 8):
            bucket = fill(client, database_url, emulator_url, files, data)
            rate, counts, cpu, wall = replay_rate(settings, client, bucket, workers, meter)
            assert counts["ingested"] == files, counts
            dl = download_rate(client, bucket, workers)
            base, base_dl = base or rate, base_dl or dl
            print(
                f"{label:<22}{workers:>8}{rate:>10.1f}{rate * len(data) / 1e6:>8.1f}{rate / base:>12.2f}x"
                f"{dl:>24.1f}{dl / base_dl:>7.2f}x   "
                + " / ".join(f"{cpu[n] / files * 1000:.1f}" for n in meter.parts)
                + f"   {sum(cpu.values()) / wall:.2f}",
                flush=True,
            )
        print(f"  ({len(data) / 1024:.1f} KiB per file)")


def bench_demo() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "STORAGE_EMULATOR_HOST")}
        env["PYTHONPATH"] = os.pathsep.join(str(REPO_ROOT / p) for p in ("functions", ".", "trainer_callbacks/src"))
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "metrics_ingest", "demo", "--state-dir", str(Path(tmp) / "state")],
            cwd=tmp, env=env, capture_output=True, text=True, check=True,
        ).stdout
        wall = time.perf_counter() - started
    timings = dict((k.strip(), float(v)) for k, v in re.findall(r"([\w ().-]+?) ([\d.]+) s(?:,|$)", out.split("timings: ")[1].splitlines()[0]))
    print(f"demo wall time {wall:.1f} s (process start to exit), of which:")
    for name, seconds in timings.items():
        print(f"  {name:<26}{seconds:>6.1f} s  ({seconds / wall:.0%})")
    print(f"  {'python start, imports, stop':<26}{wall - timings.get('total', 0):>6.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=100)
    parser.add_argument("--no-demo", action="store_true")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    emulator, emulator_url = start_emulator()
    server = None
    try:
        admin_url = os.environ.get("TEST_DATABASE_URL")
        if not admin_url:
            import pgserver

            tmp = tempfile.mkdtemp(prefix="bench-pg-")
            server = pgserver.get_server(tmp, cleanup_mode="delete")
            admin_url = server.get_uri()
        database_url = ensure_database(admin_url, f"bench_{uuid.uuid4().hex[:8]}")
        prepare_database(database_url)
        meter = CpuMeter(
            {"replay": os.getpid(), "emulator": emulator.pid, "postgres": server.get_pid() if server else None}
        )
        bench_replay(database_url, emulator_url, args.small, args.large, meter)
        store.close_pools()
    finally:
        assert emulator.stdin is not None
        emulator.stdin.close()
        emulator.wait(10)
        if server is not None:
            server.cleanup()
    if not args.no_demo:
        bench_demo()


if __name__ == "__main__":
    main()
