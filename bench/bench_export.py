"""export-mlflow: the SQL path vs the REST path, and our REST reader vs MLflow's own client.

Set-up (all local): PostgreSQL from pgserver (or ``--database-url``, a
superuser URL), a real MLflow tracking server (``.venv-mlflow``) whose
PostgreSQL store is seeded with RUNS runs x METRICS metrics x EPOCHS epochs
(one run through the real MLflow client; the rest with COPY into MLflow's
tables for speed, ``latest_metrics`` included, so the server serves them over
REST like any other), the GCS emulator in its own process, and a platform
database with one QuickTest row per run.

Measured in one run, printed as ratios:

1. ``run_export`` (the code behind ``metrics-ingest export-mlflow``) through
   ``--mlflow-database-url`` for every run: wall time, and the SQL read's share
   of the export (thread-seconds in the read vs in build + upload + ingest +
   verify). Goal: the read <= 1/4.
2. The same export through ``--tracking-uri`` (one history call per metric)
   for ``--rest-runs`` runs (all of them by default; fewer on a slow machine)
   with the same workers, and for a quarter of those with one worker each,
   per run. Goal: SQL >= 20x faster per run.
3. Reading one run over REST, one thread, our ``RestSource.fetch_run`` vs
   MLflow's own ``MlflowClient.get_run`` + ``get_metric_history`` per metric
   (in the MLflow virtual environment), over the same ``--client-runs`` runs.
   Goal: ~1x (the product adds nothing on top of the server).

Usage::

    .venv/bin/python bench/bench_export.py                         # 200 x 140 x 50
    .venv/bin/python bench/bench_export.py --runs 40 --rest-runs 10 # smaller
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2
import psycopg2.extras

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "functions"), str(REPO_ROOT), str(REPO_ROOT / "trainer_callbacks" / "src"), str(REPO_ROOT / "bench")]

from bench_ingest import postgres, scratch_database  # noqa: E402
from bench_replay import start_emulator  # noqa: E402
from ingest import store  # noqa: E402
from ingest.config import Settings  # noqa: E402
from metrics_ingest.migrations import apply_migrations, create_dev_platform_table  # noqa: E402
from metrics_ingest.mlflow_export import ExportOptions, RestSource, SqlSource, run_export  # noqa: E402
from metrics_ingest.batch import make_storage_client  # noqa: E402
from tests.support.mlflow_server import MLFLOW_VENV, MlflowServer, start_mlflow_server, stop_process_group  # noqa: E402

T0 = 1_790_000_000_000

CLIENT_LOOP = """
import json, sys, time
from mlflow import MlflowClient
client = MlflowClient(sys.argv[1])
ids = json.loads(sys.argv[2])
client.get_run(ids[0])  # warm up (imports, connection)
started = time.perf_counter()
points = 0
for run_id in ids:
    run = client.get_run(run_id)
    for key in run.data.metrics:
        points += len(client.get_metric_history(run_id, key))
print(json.dumps({"seconds": time.perf_counter() - started, "points": points}))
"""


def metric_names(count: int) -> list[str]:
    """What a two-tower run logged: Keras metrics, weight norms, per-tower statistics, histogram bins, then more."""
    names = ["loss", "val_loss", "total_loss", "regularization_loss", "factorized_top_k/top_100_categorical_accuracy",
             "val_factorized_top_k/top_100_categorical_accuracy", "total_weight_norm"]
    for tower in ("query", "candidate"):
        names.append(f"{tower}_weight_norm")
        names += [f"{tower}_weight_{s}" for s in ("mean", "std", "min", "max")]
        names += [f"{tower}_grad_{s}" for s in ("mean", "std", "min", "max", "norm")]
    i = 0
    while len(names) < count:
        names.append(f"factorized_top_k/top_{i}_categorical_accuracy")
        i += 1
    return names[:count]


def seed(server: MlflowServer, runs: int, metrics: int, epochs: int) -> list[str]:
    """One run through the client (it creates the experiment), then RUNS-1 more with COPY; returns every run id."""
    names = metric_names(metrics)
    rng = random.Random(7)
    first = {"experiment": "bench", "name": "bench-0", "start_time": T0, "end_time": T0 + epochs * 1000,
             "params": {"batch_size": "2048", "learning_rate": "0.01"},
             "metrics": [[k, rng.random(), e, T0 + e * 1000] for e in range(epochs) for k in names]}
    [first_id] = server.seed([first])
    ((experiment_id,),) = server.sql("SELECT experiment_id FROM runs WHERE run_uuid = %s", (first_id,))
    ids = [uuid.uuid4().hex for _ in range(runs - 1)]
    conn = psycopg2.connect(server.database_url)
    try:
        with conn, conn.cursor() as cur:
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO runs (run_uuid, name, source_type, source_name, user_id, status, start_time, end_time,"
                " lifecycle_stage, artifact_uri, experiment_id) VALUES %s",
                [(rid, f"bench-{i + 1}", "LOCAL", "bench", "bench", "FINISHED", T0, T0 + epochs * 1000, "active",
                  f"mlflow-artifacts:/{experiment_id}/{rid}/artifacts", experiment_id) for i, rid in enumerate(ids)],
            )
            psycopg2.extras.execute_values(
                cur, "INSERT INTO tags (key, value, run_uuid) VALUES %s",
                [(k, v, rid) for rid in ids for k, v in (("mlflow.runName", rid[:8]), ("mlflow.user", "bench"))],
            )
            psycopg2.extras.execute_values(
                cur, "INSERT INTO params (key, value, run_uuid) VALUES %s",
                [(f"param_{j}", str(j * 3), rid) for rid in ids for j in range(10)],
            )
            buffer = io.StringIO()
            for rid in ids:
                for e in range(epochs):
                    ts = T0 + e * 1000
                    for k in names:
                        buffer.write(f"{k}\t{rng.random()!r}\t{ts}\t{rid}\t{e}\tf\n")
            buffer.seek(0)
            cur.copy_expert("COPY metrics (key, value, timestamp, run_uuid, step, is_nan) FROM STDIN", buffer)
            cur.execute(
                "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)"
                " SELECT DISTINCT ON (run_uuid, key) key, value, timestamp, step, is_nan, run_uuid FROM metrics"
                " WHERE run_uuid = ANY(%s) ORDER BY run_uuid, key, step DESC, timestamp DESC, value DESC",
                (ids,),
            )
        with conn.cursor() as cur:
            conn.autocommit = True
            cur.execute("ANALYZE metrics")
    finally:
        conn.close()
    return [first_id, *ids]


def platform_rows(url: str, bucket: str, run_ids: list[str]) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("TRUNCATE ml_platform_quicktest RESTART IDENTITY")
            psycopg2.extras.execute_values(
                cur, "INSERT INTO ml_platform_quicktest (name, gcs_artifacts_path, mlflow_run_id) VALUES %s",
                [(f"qt-{i}", f"gs://{bucket}/quick_tests/{i:05d}", rid) for i, rid in enumerate(run_ids)],
            )
    finally:
        conn.close()


def timed_export(source, settings: Settings, client, workers: int) -> tuple[float, object]:  # noqa: ANN001
    started = time.perf_counter()
    report = run_export(ExportOptions(source, workers=workers, settings=settings), client=client)
    wall = time.perf_counter() - started
    bad = {k: v for k, v in report.counts.items() if k not in ("exported", "verified") and v}
    assert not bad and report.counts["verified"] == report.selected, report.counts
    return wall, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--metrics", type=int, default=140)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--rest-runs", type=int, default=None, help="runs exported through REST (default: all)")
    parser.add_argument("--client-runs", type=int, default=5, help="runs read by both REST readers, one thread")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of the two REST readers")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--database-url", default=None, help="a superuser URL (default: start pgserver)")
    args = parser.parse_args(argv)
    rest_runs = min(args.rest_runs or args.runs, args.runs)

    workdir = Path(tempfile.mkdtemp(prefix="metrics-ingest-bench-mlflow-"))
    emulator, emulator_url = start_emulator(0.0)
    os.environ["STORAGE_EMULATOR_HOST"] = emulator_url
    os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "bench")
    try:
        with postgres(args.database_url) as admin, scratch_database(admin, "mlflow") as mlflow_db, \
                scratch_database(admin, "platform") as platform_db:
            process, url = start_mlflow_server(mlflow_db, workdir)
            try:
                server = MlflowServer(url, mlflow_db, MLFLOW_VENV / "bin" / "python")
                started = time.perf_counter()
                run_ids = seed(server, args.runs, args.metrics, args.epochs)
                points = args.runs * args.metrics * args.epochs
                print(f"seeded {args.runs} runs x {args.metrics} metrics x {args.epochs} epochs = {points:,} points "
                      f"in {time.perf_counter() - started:.1f} s")
                create_dev_platform_table(platform_db)
                apply_migrations(platform_db)
                settings = Settings(database_url=platform_db, db_pool_size=args.workers)
                client = make_storage_client(args.workers)

                sql_per_run: dict[int, float] = {}
                for workers in sorted({1, args.workers}):
                    # One worker: the phases run one after another, so their shares are shares of the wall
                    # time; more workers: the thread-seconds also hold waits for the GIL.
                    bucket = f"bench-sql-{uuid.uuid4().hex[:8]}"
                    client.create_bucket(bucket)
                    platform_rows(platform_db, bucket, run_ids)
                    sql_wall, sql_report = timed_export(SqlSource(mlflow_db), settings, client, workers)
                    sql_per_run[workers] = sql_wall / args.runs
                    t = sql_report.timings
                    rest_of_it = t["build"] + t["write"] + t["verify"]
                    sql_share = t["read"] / (t["read"] + rest_of_it)
                    print(f"\nSQL export, {args.runs} runs, {workers} worker(s): {sql_wall:.1f} s wall, "
                          f"{sql_wall / args.runs * 1000:.0f} ms per run")
                    print(f"  thread-seconds: read {t['read']:.1f}, build {t['build']:.1f}, upload+ingest {t['write']:.1f}, "
                          f"verify {t['verify']:.1f}")
                    print(f"  SQL read share of the export: {sql_share:.2f} (goal <= 0.25)")

                for workers, count in ((args.workers, rest_runs), (1, max(1, rest_runs // 4))):
                    # Like for like: the same workers as each SQL export (fewer runs with one worker: it is slow).
                    bucket = f"bench-rest-{uuid.uuid4().hex[:8]}"
                    client.create_bucket(bucket)
                    platform_rows(platform_db, bucket, run_ids[:count])
                    rest_source = RestSource(url)
                    rest_wall, rest_report = timed_export(rest_source, settings, client, workers)
                    print(f"\nREST export, {count} runs, {workers} worker(s): {rest_wall:.1f} s wall, "
                          f"{rest_wall / count * 1000:.0f} ms per run, {rest_source.calls} HTTP calls "
                          f"({rest_source.calls / count:.0f} per run); read {rest_report.timings['read']:.1f} thread-s")
                    ratio = (rest_wall / count) / sql_per_run[workers]
                    print(f"  SQL vs REST per run, {workers} worker(s) each: {ratio:.1f}x faster through SQL (goal >= 20x)")

                sample = run_ids[: args.client_runs]
                ours = RestSource(url)
                ours.fetch_run(sample[0])  # warm up, as the client's loop does
                ours_times, theirs_times = [], []
                for _ in range(args.rounds):  # alternated, best of each: this machine is shared and noisy
                    started = time.perf_counter()
                    our_points = sum(ours.fetch_run(rid).points for rid in sample)  # type: ignore[union-attr]
                    ours_times.append(time.perf_counter() - started)
                    done = subprocess.run([str(MLFLOW_VENV / "bin" / "python"), "-c", CLIENT_LOOP, url, json.dumps(sample)],
                                          capture_output=True, text=True, timeout=3600, check=True)
                    theirs = json.loads(done.stdout.strip().splitlines()[-1])
                    assert theirs["points"] == our_points, (theirs, our_points)
                    theirs_times.append(theirs["seconds"])
                ours_s, theirs_s = min(ours_times), min(theirs_times)
                print(f"\nREST read of {len(sample)} runs, one thread, best of {args.rounds}: RestSource "
                      f"{ours_s / len(sample) * 1000:.0f} ms per run, MlflowClient.get_run + get_metric_history loop "
                      f"{theirs_s / len(sample) * 1000:.0f} ms per run: {ours_s / theirs_s:.2f}x the client's time (goal ~1x)")
            finally:
                stop_process_group(process)
                store.close_pools()
    finally:
        if emulator.stdin:
            emulator.stdin.close()
        emulator.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
