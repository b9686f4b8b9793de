"""Benchmark of the ingestion function; every figure is a ratio to a baseline measured in the same run.

1. Non-matching events (model files) through a real functions-framework server:
   p50 latency and events/s, against an empty CloudEvent function served the same way.
2. A matching metrics file (50 epochs x 140 metrics + 4 histograms x 50 bins):
   p50/p95 from posting the event to the committed row, against the floor: a
   minimal CloudEvent function served the same way (functions-framework; download
   + json.loads + one UPDATE), so both sides pay the request, same emulator and database.
3. Cold start: importing functions/main.py in a fresh interpreter, against
   importing functions_framework alone (what any Python function pays).
4. Row lookup by gcs_artifacts_path on a 1,000,000-row platform table (after
   `metrics-ingest migrate`): the plan and the time, against a primary-key lookup.
5. Parse alone and validation alone (``ingest.document``), on the benchmark
   file and a 20 MB file, each in a fresh interpreter: time (median) and peak
   RSS; and json.loads against orjson on those and on dense worst cases.

With ``--before REV`` (a git revision), the function as it was at REV is
exported beside it and measured in the same run: the matching file through
its own functions-framework server (section 2), its cold start (3) and its
parse and validation (5), so "before" and "after" share the machine's state.

Run from the repository root (starts PostgreSQL from pip and a GCS emulator)::

    python bench/bench_ingest.py                                   # ~60 s on 2 cores
    python bench/bench_ingest.py --before 3a157e2 --rows 100000    # before/after in one run
    python bench/bench_ingest.py --before 3a157e2 --db-latency-ms 1 # each database query 1 ms away
    python bench/bench_ingest.py --events 4000 --files 60 --rows 1000000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "functions"), str(ROOT)]

import psycopg2  # noqa: E402
import requests  # noqa: E402
from cloudevents.conversion import to_binary  # noqa: E402
from cloudevents.http import CloudEvent  # noqa: E402
from google.cloud import storage  # noqa: E402
from psycopg2 import sql  # noqa: E402

from metrics_ingest.localstack.emulator import GcsEmulator  # noqa: E402
from metrics_ingest.migrations import apply_migrations, create_dev_platform_table  # noqa: E402
from tests.support.documents import megabyte_document  # noqa: E402
from tests.support.wire import QueryCounter  # noqa: E402

BUCKET = "bench-artifacts"
EMPTY_FUNCTION = textwrap.dedent(
    '''
    import functions_framework

    @functions_framework.cloud_event
    def noop(cloud_event):
        return None
    '''
)


# The floor of section 2: what any function that ingests the file must do, served
# like ours (a lazy client and one connection, reused across events).
FLOOR_FUNCTION = textwrap.dedent(
    '''
    import json
    import os
    import threading

    import functions_framework
    import psycopg2
    from google.cloud import storage

    _lock = threading.Lock()
    _state = {}

    @functions_framework.cloud_event
    def floor(cloud_event):
        data = cloud_event.data
        with _lock:
            if "client" not in _state:
                _state["client"] = storage.Client()
                _state["conn"] = psycopg2.connect(os.environ["DATABASE_URL"])
            blob = _state["client"].bucket(data["bucket"]).blob(data["name"], generation=int(data["generation"]))
            raw = blob.download_as_bytes(raw_download=True)
            json.loads(raw)
            folder = "gs://" + data["bucket"] + "/" + data["name"].rsplit("/", 1)[0]
            conn = _state["conn"]
            with conn, conn.cursor() as cur:
                cur.execute("UPDATE ml_platform_quicktest SET training_history_json = %s::jsonb"
                            " WHERE gcs_artifacts_path = %s", (raw.decode(), folder))
    '''
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    import pgserver

    pgdata = Path(tempfile.mkdtemp(prefix="metrics-ingest-bench-pg-"))
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


@contextlib.contextmanager
def scratch_database(admin_url: str, purpose: str) -> Iterator[str]:
    """A fresh database on the bench's server for one part of the run (dropped after)."""
    from psycopg2.extensions import make_dsn, parse_dsn

    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    name = f"bench_{purpose}_{os.getpid()}"
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_dsn(**{**parse_dsn(admin_url), "dbname": name})
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


@contextlib.contextmanager
def function_server(source: Path, target: str, env: dict[str, str], log: Path) -> Iterator[str]:
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "functions-framework"),
        "--target", target, "--signature-type", "cloudevent", "--source", str(source),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{target} did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def event(resource: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    return to_binary(
        CloudEvent(
            {
                "type": "google.cloud.storage.object.v1.finalized",
                "source": f"//storage.googleapis.com/projects/_/buckets/{resource['bucket']}",
                "subject": f"objects/{resource['name']}",
            },
            resource,
        )
    )


def resource_of(blob: storage.Blob) -> dict[str, Any]:
    # No md5Hash/crc32c: every generation here holds the same bytes, which the
    # function would decide 'unchanged' without a download; the full path is measured.
    return {
        "bucket": blob.bucket.name,
        "name": blob.name,
        "generation": str(blob.generation),
        "metageneration": "1",
        "size": str(blob.size),
        "contentType": "application/json",
    }


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def line(label: str, value: str, ratio: float | None = None, goal: str = "") -> None:
    ratio_text = f"{ratio:6.2f}x" if ratio is not None else "       "
    print(f"  {label:<58} {value:>22}  {ratio_text}  {goal}")


# ---------------------------------------------------------------- 1. non-matching


def bench_nonmatching(ours: str, empty: str, n: int) -> None:
    resource = {"bucket": BUCKET, "name": "quick_tests/1/model/variables/variables.data-00000-of-00001",
                "generation": "1", "size": "1048576", "contentType": "application/octet-stream"}  # fmt: skip
    headers, body = event(resource)

    def latencies(url: str, count: int) -> list[float]:
        out = []
        with requests.Session() as session:
            for _ in range(count):
                t = time.perf_counter()
                response = session.post(url, headers=headers, data=body)
                out.append(time.perf_counter() - t)
                assert response.status_code == 200, response.text
        return out

    def throughput(url: str, count: int, workers: int = 4) -> float:
        per = count // workers
        t = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda _: latencies(url, per), range(workers)))
        return per * workers / (time.perf_counter() - t)

    latencies(ours, 50), latencies(empty, 50)  # warm up both
    lat: dict[str, list[float]] = {ours: [], empty: []}
    rate: dict[str, list[float]] = {ours: [], empty: []}
    rounds = 20  # short alternating bursts: a noisy neighbour slows both alike
    for i in range(rounds):
        order = (empty, ours) if i % 2 == 0 else (ours, empty)
        for url in order:
            lat[url] += latencies(url, max(n // (2 * rounds), 1))
        for url in order:
            rate[url].append(throughput(url, max(n // (2 * rounds), 8)))
    p50_ours, p50_empty = statistics.median(lat[ours]), statistics.median(lat[empty])
    eps_ours, eps_empty = statistics.median(rate[ours]), statistics.median(rate[empty])
    print("\n1. Non-matching events through functions-framework (ratio to an empty CloudEvent function)")
    line("empty function: p50 latency", f"{p50_empty * 1000:.2f} ms")
    line("ingest_training_metrics: p50 latency", f"{p50_ours * 1000:.2f} ms", p50_ours / p50_empty, "goal <= 1.2x")
    line("empty function: events/s (4 client threads)", f"{eps_empty:.0f} /s")
    line("ingest_training_metrics: events/s (4 client threads)", f"{eps_ours:.0f} /s", eps_empty / eps_ours,
         "goal <= 1.2x (time per event)")  # fmt: skip


# ---------------------------------------------------------------- 2. matching file


def bench_matching(targets: dict[str, tuple[str, Path]], floor_url: str, db_url: str, files: int, metrics: int,
                   db_latency_ms: float = 0.0) -> None:
    """``targets``: label ('after', maybe 'before') -> (function URL, its log file); ``floor_url``: the
    minimal function (FLOOR_FUNCTION) served the same way."""
    doc = megabyte_document(metrics)
    data = json.dumps(doc, indent=2).encode()
    bucket = storage.Client().bucket(BUCKET)
    conn = psycopg2.connect(db_url)
    row_ids: dict[str, int] = {}
    with conn, conn.cursor() as cur:
        for folder in [*targets, "floor"]:
            cur.execute("INSERT INTO ml_platform_quicktest (gcs_artifacts_path) VALUES (%s) RETURNING id",
                        (f"gs://{BUCKET}/quick_tests/{folder}",))  # fmt: skip
            row_ids[folder] = cur.fetchone()[0]

    def upload(folder: str) -> dict[str, Any]:
        blob = bucket.blob(f"quick_tests/{folder}/training_metrics.json")
        blob.upload_from_string(data, content_type="application/json")
        return resource_of(blob)

    def e2e(session: requests.Session, label: str) -> float:
        resource = upload(label)
        headers, body = event(resource)
        url = floor_url if label == "floor" else targets[label][0]
        t = time.perf_counter()
        response = session.post(url, headers=headers, data=body)
        elapsed = time.perf_counter() - t
        assert response.status_code == 200, response.text
        return elapsed

    def floor(session: requests.Session) -> float:
        return e2e(session, "floor")

    times: dict[str, list[float]] = {label: [] for label in [*targets, "floor"]}
    with requests.Session() as session:
        for label in targets:  # warm up: first-use imports, pool, validator
            e2e(session, label)
        floor(session)
        for i in range(files):
            # Alternating order: neither side always runs right after the other.
            order = list(targets) if i % 2 == 0 else list(reversed(targets))
            for label in order:
                times[label].append(e2e(session, label))
            times["floor"].append(floor(session))
    for label in targets:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT training_history_json -> 'source' ->> 'generation' FROM ml_platform_quicktest"
                        " WHERE id = %s", (row_ids[label],))  # fmt: skip
            row_generation = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM training_metrics_ingestions WHERE outcome = 'ingested'"
                        " AND quicktest_id = %s", (row_ids[label],))  # fmt: skip
            ingested = cur.fetchone()[0]
        assert ingested == files + 1, f"{label}: expected {files + 1} ingested generations, found {ingested}"
        assert row_generation == str(bucket.get_blob(f"quick_tests/{label}/training_metrics.json").generation)
    conn.close()
    f50, f95 = pct(times["floor"], 50), pct(times["floor"], 95)
    print(f"\n2. Matching file, {len(data) / 1e6:.2f} MB (50 epochs x {metrics} metrics + 4 histograms x 50 bins, indent=2),"
          f" {files} generations (ratio to the floor)"
          + (f"; every database query {db_latency_ms:g} ms later (modelled latency)" if db_latency_ms else ""))  # fmt: skip
    line("floor, served (download + json.loads + one UPDATE): p50", f"{f50 * 1000:.1f} ms")
    line("floor: p95", f"{f95 * 1000:.1f} ms")
    for label, (_, log) in targets.items():
        e50, e95 = pct(times[label], 50), pct(times[label], 95)
        line(f"[{label}] event -> committed row through the function: p50", f"{e50 * 1000:.1f} ms", e50 / f50,
             "goal <= 1.2x")  # fmt: skip
        line(f"[{label}] event -> committed row through the function: p95", f"{e95 * 1000:.1f} ms", e95 / f95,
             "goal <= 1.2x")  # fmt: skip
        own = [e["duration_ms"] for e in map(json.loads, filter(lambda x: x.startswith("{"), log.read_text().splitlines()))
               if e.get("outcome") == "ingested"][1:]  # fmt: skip
        line(f"[{label}]   of which inside ingest_object (its log's duration_ms): p50",
             f"{statistics.median(own):.1f} ms", statistics.median(own) / 1000 / f50)  # fmt: skip


# ---------------------------------------------------------------- 3. cold start


def bench_cold_start(runs: int, before: Path | None = None) -> None:
    probe = textwrap.dedent(
        """
        import sys, time
        t = time.perf_counter()
        import {module}
        elapsed = time.perf_counter() - t
        heavy = [m for m in ("google.cloud.storage", "psycopg2", "jsonschema", "jsonschema_rs") if m in sys.modules]
        print(elapsed, ",".join(heavy))
        """
    )
    trees = {"after": ROOT / "functions", **({"before": before / "functions"} if before else {})}

    def measure(module: str, functions: Path) -> tuple[float, str]:
        env = {**os.environ, "PYTHONPATH": str(functions)}
        result = subprocess.run([sys.executable, "-c", probe.format(module=module)], env=env, capture_output=True,
                                text=True, check=True, cwd=functions)  # fmt: skip
        seconds, heavy = result.stdout.split()[0], (result.stdout.split() + [""])[1]
        return float(seconds), heavy

    for functions in trees.values():
        measure("main", functions), measure("functions_framework", functions)  # warm the file cache
    base: list[float] = []
    ours: dict[str, list[float]] = {label: [] for label in trees}
    heavy: dict[str, str] = {}
    for _ in range(runs):
        base.append(measure("functions_framework", ROOT / "functions")[0])
        for label, functions in trees.items():
            seconds, heavy[label] = measure("main", functions)
            ours[label].append(seconds)
    b = statistics.median(base)
    print(f"\n3. Cold start: import in a fresh interpreter, median of {runs}")
    line("import functions_framework (any Python function pays this)", f"{b * 1000:.0f} ms")
    for label in trees:
        o = statistics.median(ours[label])
        line(f"[{label}] import functions/main.py", f"{o * 1000:.0f} ms", o / b, "goal < 300 ms")
        line(f"[{label}] heavy clients loaded at import", heavy[label] or "none (load on first use)")


# ---------------------------------------------------------------- 4. row lookup


def bench_lookup(admin_url: str, rows: int, repeats: int = 300) -> None:
    with scratch_database(admin_url, "lookup") as url:
        create_dev_platform_table(url)
        conn = psycopg2.connect(url)
        t = time.perf_counter()
        with conn, conn.cursor() as cur:
            # One set-based INSERT: the whole table in a single statement.
            cur.execute(
                "INSERT INTO ml_platform_quicktest (name, gcs_artifacts_path, training_history_json)"
                " SELECT 'qt ' || i, 'gs://ml-artifacts/quick_tests/' || i, NULL FROM generate_series(1, %s) AS i",
                (rows,),
            )
        fill = time.perf_counter() - t
        t = time.perf_counter()
        apply_migrations(url)  # post-apply hook: the gcs_artifacts_path index
        migrate = time.perf_counter() - t
        with conn, conn.cursor() as cur:
            cur.execute("ANALYZE ml_platform_quicktest")
        target = rows * 2 // 3
        lookup = ("SELECT id, training_history_json -> 'source' FROM ml_platform_quicktest"
                  " WHERE gcs_artifacts_path IN (%s, %s) ORDER BY id DESC LIMIT 1 FOR UPDATE")  # fmt: skip
        params = (f"gs://ml-artifacts/quick_tests/{target}", f"gs://ml-artifacts/quick_tests/{target}/")
        by_id = "SELECT id, training_history_json -> 'source' FROM ml_platform_quicktest WHERE id = %s FOR UPDATE"

        def timed(query: str, args: tuple) -> float:
            out = []
            for _ in range(repeats):
                with conn, conn.cursor() as cur:
                    t0 = time.perf_counter()
                    cur.execute(query, args)
                    assert cur.fetchone()[0] == target
                    out.append(time.perf_counter() - t0)
            return statistics.median(out)

        with conn, conn.cursor() as cur:
            cur.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + lookup, params)
            plan = [r[0] for r in cur.fetchall()]
        pk, path = timed(by_id, (target,)), timed(lookup, params)
        conn.close()
    print(f"\n4. Row lookup by gcs_artifacts_path, {rows:,} rows (filled in {fill:.1f} s, migrate/index {migrate:.1f} s)")
    for row in plan:
        print(f"     {row}")
    index_scan = any("Index" in r and "gcs_artifacts_path" in r or "Index Scan using metrics_ingest" in r for r in plan)
    line("lookup by primary key (baseline), median round trip", f"{pk * 1000:.3f} ms")
    line("lookup by gcs_artifacts_path (the function's), median", f"{path * 1000:.3f} ms", path / pk,
         "index lookup" if index_scan else "NOT AN INDEX LOOKUP")  # fmt: skip


# ---------------------------------------------------------------- 5. parse and validate alone

# Run in a fresh interpreter per (tree, file) so peak RSS is that work's alone:
# VmHWM (the address space's peak RSS, reset by exec, unlike ru_maxrss, which
# a child inherits from this large process) is read before and after each step.
_DOCUMENT_PROBE = textwrap.dedent(
    """
    import inspect, json, resource, statistics, sys, time
    from ingest import document
    data = open(sys.argv[1], "rb").read()
    repeats = int(sys.argv[2])
    def peak():
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    with_text = "text" in inspect.signature(document.validate).parameters
    document.validate({"epochs": []})  # the validator is built once per process: not the file's cost
    rss0 = peak()
    doc = document.parse(data)
    text = data.decode()
    rss1 = peak()
    document.validate(doc, text) if with_text else document.validate(doc)
    rss2 = peak()
    def timed(step):
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            step()
            out.append(time.perf_counter() - t)
        return statistics.median(out)
    parse_s = timed(lambda: document.parse(data))
    validate_s = timed(lambda: document.validate(doc, text) if with_text else document.validate(doc))
    print(json.dumps({"parse_s": parse_s, "validate_s": validate_s, "parse_rss": rss1 - rss0, "validate_rss": rss2 - rss1}))
    """
)

_PARSER_PROBE = textwrap.dedent(
    """
    import json, resource, sys, time
    data = open(sys.argv[1], "rb").read()
    parser = sys.argv[2]
    if parser == "orjson":
        import orjson
        parse = orjson.loads  # takes the bytes; checks UTF-8 itself
    else:
        parse = lambda raw: json.loads(raw.decode("utf-8"), parse_constant=lambda _: None)  # as ingest.document does
    def peak():
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    rss0 = peak()
    t = time.perf_counter()
    value = parse(data)
    elapsed = time.perf_counter() - t
    rss1 = peak()
    print(json.dumps({"s": elapsed, "rss": rss1 - rss0}))
    """
)


def _probe(script: str, functions: Path, *args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(functions)}
    result = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                            check=True, cwd=functions)  # fmt: skip
    return json.loads(result.stdout.splitlines()[-1])


def bench_documents(tmp: Path, before: Path | None) -> None:
    files: dict[str, tuple[Path, int]] = {}

    def write(label: str, data: bytes, repeats: int) -> None:
        path = tmp / f"{label.split()[0]}.json"
        path.write_bytes(data)
        files[label] = (path, repeats)

    bench = json.dumps(megabyte_document(140), indent=2).encode()
    write(f"bench {len(bench) / 1e6:.2f} MB", bench, 30)
    big = json.dumps(megabyte_document(13_800), indent=2).encode()
    write(f"big {len(big) / 1e6:.1f} MB", big, 3)
    trees = {**({"before": before / "functions"} if before else {}), "after": ROOT / "functions"}
    print("\n5. Parse alone and validation alone (ingest.document), fresh interpreters; time median, peak RSS; best of 3")
    for label, (path, repeats) in files.items():
        # Alternating fresh interpreters, best of 3 per tree: a noisy neighbour only ever slows a run.
        runs: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
        for _ in range(3):
            for tree, functions in trees.items():
                runs[tree].append(_probe(_DOCUMENT_PROBE, functions, str(path), str(repeats)))
        results = {tree: {k: min(r[k] for r in rs) for k in rs[0]} for tree, rs in runs.items()}
        base = results.get("before")
        for step in ("parse", "validate"):
            for tree, r in results.items():
                ratio = r[f"{step}_s"] / base[f"{step}_s"] if base and tree == "after" else None
                line(f"[{tree}] {step} {label}", f"{r[f'{step}_s'] * 1000:9.2f} ms {r[f'{step}_rss'] / 2**20:6.1f} MiB",
                     ratio, "vs before (time)" if ratio is not None else "")  # fmt: skip
    # json.loads (what ingest.document uses) against orjson. Dense worst cases
    # sit at the schema's x-maxValues (4,000,000 values): the most a file may hold.
    write("dense-ints 8.0 MB, 4M values", b'{"epochs": [], "v": [' + b"1," * 3_999_999 + b"1]}", 1)
    write("dense-floats 20 MB, 4M values", b'{"epochs": [], "v": [' + b"0.123," * 3_999_999 + b"0.123]}", 1)
    print("   json.loads(bytes.decode()) against orjson.loads(bytes): time, peak RSS (fresh interpreters, best of 3)")
    for label, (path, _) in files.items():
        size = path.stat().st_size
        plain = fast = {"s": float("inf"), "rss": float("inf")}
        for _ in range(3):  # alternating, best of 3
            p = _probe(_PARSER_PROBE, ROOT / "functions", str(path), "json")
            o = _probe(_PARSER_PROBE, ROOT / "functions", str(path), "orjson")
            plain = {k: min(plain[k], p[k]) for k in p}
            fast = {k: min(fast[k], o[k]) for k in o}
        line(f"json.loads   {label}", f"{plain['s'] * 1000:9.1f} ms {plain['rss'] / size:5.1f}x size")
        line(f"orjson.loads {label}", f"{fast['s'] * 1000:9.1f} ms {fast['rss'] / size:5.1f}x size", fast["s"] / plain["s"],
             f"time vs json; RSS {fast['rss'] / max(plain['rss'], 1):.2f}x")  # fmt: skip


def export_revision(rev: str, tmp: Path) -> Path:
    """The repository's files at ``rev`` (git archive), for the "before" measurements."""
    folder = tmp / f"before-{rev}"
    folder.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="non-matching events per function (default 2000)")
    parser.add_argument("--files", type=int, default=30, help="matching file generations timed (default 30)")
    parser.add_argument("--metrics", type=int, default=140,
                        help="per-epoch metrics in the matching file (default 140: 0.46 MB; 540: 1.0 MB)")  # fmt: skip
    parser.add_argument("--rows", type=int, default=1_000_000, help="platform table rows for the lookup (default 1M)")
    parser.add_argument("--cold-runs", type=int, default=7, help="fresh interpreters per import measured (default 7)")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"),
                        help="a superuser URL of a PostgreSQL to use (default: start one with pgserver)")  # fmt: skip
    parser.add_argument("--before", metavar="REV",
                        help="also measure the function as it was at this git revision, in the same run")  # fmt: skip
    parser.add_argument("--only-documents", action="store_true", help="section 5 only (no servers, no database)")
    parser.add_argument("--db-latency-ms", type=float, default=0.0,
                        help="section 2: hold every database query this long (a modelled remote database; default 0)")  # fmt: skip
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(f"bench_ingest: python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    scratch = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        before = export_revision(args.before, scratch) if args.before else None
        if args.only_documents:
            bench_documents(scratch, before)
            return 0
        bench_cold_start(args.cold_runs, before)
        bench_documents(scratch, before)
        run(args, before)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


def run(args: argparse.Namespace, before: Path | None) -> None:
    with postgres(args.database_url) as admin_url, GcsEmulator() as emulator, tempfile.TemporaryDirectory() as tmp:
        bench_lookup(admin_url, args.rows)
        with scratch_database(admin_url, "ingest") as db_url:
            create_dev_platform_table(db_url)
            apply_migrations(db_url)
            emulator.create_bucket(BUCKET)
            os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
            os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "bench")
            empty_source = Path(tmp) / "empty_main.py"
            empty_source.write_text(EMPTY_FUNCTION)
            floor_source = Path(tmp) / "floor_main.py"
            floor_source.write_text(FLOOR_FUNCTION)
            relays = contextlib.ExitStack()
            if args.db_latency_ms:
                # Every query of the function and of the floor waits that long: a remote database.
                db_url = relays.enter_context(QueryCounter(db_url, args.db_latency_ms / 1000)).url
            env = {"PYTHONPATH": str(ROOT / "functions"), "DATABASE_URL": db_url,
                   "STORAGE_EMULATOR_HOST": emulator.url, "GOOGLE_CLOUD_PROJECT": "bench"}  # fmt: skip
            with relays, contextlib.ExitStack() as servers:
                ours = servers.enter_context(
                    function_server(ROOT / "functions" / "main.py", "ingest_training_metrics", env, Path(tmp) / "ours.log")
                )
                empty = servers.enter_context(function_server(empty_source, "noop", env, Path(tmp) / "empty.log"))
                floor_url = servers.enter_context(function_server(floor_source, "floor", env, Path(tmp) / "floor.log"))
                targets = {"after": (ours, Path(tmp) / "ours.log")}
                if before is not None:
                    old_env = {**env, "PYTHONPATH": str(before / "functions")}
                    old = servers.enter_context(function_server(before / "functions" / "main.py",
                                                                "ingest_training_metrics", old_env, Path(tmp) / "old.log"))  # fmt: skip
                    targets = {"before": (old, Path(tmp) / "old.log"), **targets}
                bench_nonmatching(ours, empty, args.events)
                bench_matching(targets, floor_url, db_url, args.files, args.metrics, args.db_latency_ms)


if __name__ == "__main__":
    sys.exit(main())
