"""``metrics-ingest export-mlflow`` against a real MLflow tracking server (PostgreSQL store),
the GCS emulator and the session PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest import store
from metrics_ingest.cli import main
from metrics_ingest.migrations import apply_migrations, create_dev_platform_table
from metrics_ingest.mlflow_export import ExportOptions, SqlSource, run_export
from tests.support.format_checks import check_document
from tests.support.mlflow_server import MlflowServer
from tests.support.network import closed_port
from tests.support.platform_db import Artifacts, PlatformDb
from tests.test_deploy import MLFLOW_STATE, Cloud, cloud, teardown  # noqa: F401  (the fake gcloud world of deploy.sh's tests)

# A real MLflow tracking server (started once per session, ~15-60 s with its seeding) backs every test here.
pytestmark = pytest.mark.slow

T0 = 1_790_000_000_000  # ms
TOWERS = ("query", "candidate")
KERAS = ("loss", "total_loss", "regularization_loss", "factorized_top_k/top_100_categorical_accuracy")
HIST_EDGES = [-1.0, -0.5, 0.0, 0.5, 1.0]


def callback_run(name: str, epochs: int = 12, seed: int = 1, val_every: int = 5) -> dict[str, Any]:
    """A run as the old Keras callbacks logged it to MLflow: per-epoch Keras metrics (validation every
    ``val_every`` epochs), weight norms, per-tower weight and gradient statistics, one histogram,
    params and final/test values."""
    rng = random.Random(seed)
    metrics: list[list[Any]] = []
    for epoch in range(epochs):
        ts = T0 + epoch * 60_000
        for key in KERAS:
            metrics.append([key, rng.uniform(0.01, 5.0), epoch, ts])
        if (epoch + 1) % val_every == 0:
            metrics.append(["val_loss", rng.uniform(0.01, 5.0), epoch, ts])
            metrics.append(["val_factorized_top_k/top_100_categorical_accuracy", rng.random(), epoch, ts])
        metrics.append(["total_weight_norm", rng.uniform(10, 30), epoch, ts])
        for tower in TOWERS:
            metrics.append([f"{tower}_weight_norm", rng.uniform(5, 20), epoch, ts])
            for stat in ("mean", "std", "min", "max"):
                metrics.append([f"{tower}_weight_{stat}", rng.gauss(0, 1), epoch, ts])
            for stat in ("mean", "std", "min", "max", "norm"):
                metrics.append([f"{tower}_grad_{stat}", rng.gauss(0, 0.01), epoch, ts])
        for index in range(len(HIST_EDGES) - 1):
            metrics.append([f"query_weight_hist_bin_{index}", float(rng.randrange(0, 5000)), epoch, ts])
    metrics.append(["final_loss", rng.uniform(0.01, 1.0), epochs - 1, T0 + epochs * 60_000])
    metrics.append(["test_recall_at_100", rng.random(), 0, T0 + epochs * 60_000 + 1])
    return {
        "name": name,
        "start_time": T0 - 1000,
        "end_time": T0 + epochs * 60_000 + 5000,
        "params": {"batch_size": "2048", "learning_rate": "0.01", "optimizer": "adagrad", "epochs": str(epochs),
                   "query_weight_hist_edges": json.dumps(HIST_EDGES)},
        "tags": {"platform.quicktest": name},
        "metrics": metrics,
    }


def expected_location(key: str) -> tuple[Any, ...]:
    """Where a seeded key must land, written out by hand (not by the exporter's rules)."""
    if key.startswith(("final_", "test_")):
        return ("final_metrics", key)
    if key.endswith("_weight_norm"):
        return ("gradient", key.removesuffix("_weight_norm"))
    if "_hist_bin_" in key:
        tower, _, index = key.partition("_weight_hist_bin_")
        return ("histogram", tower, int(index))
    for tower in TOWERS:
        for kind, section in (("weight", "weight_stats"), ("grad", "gradient_stats")):
            prefix = f"{tower}_{kind}_"
            if key.startswith(prefix):
                return (section, tower, key.removeprefix(prefix))
    return ("loss", key) if "loss" in key else ("metrics", key)


def value_at(doc: dict[str, Any], location: tuple[Any, ...], epoch: int) -> Any:
    i = doc["epochs"].index(epoch)
    if location[0] == "final_metrics":
        return doc["final_metrics"][location[1]]
    if location[0] == "histogram":
        row = doc["weight_stats"][location[1]]["histogram"]["counts"][i]
        return None if row is None else row[location[2]]
    if location[0] in ("weight_stats", "gradient_stats"):
        return doc[location[0]][location[1]][location[2]][i]
    return doc[location[0]][location[1]][i]


def bits(value: float) -> bytes:
    return struct.pack("<d", value)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def export_db(scratch_database: Any) -> Iterator[PlatformDb]:
    """A platform database of this module's own (so the default selection sees only our rows)."""
    url = scratch_database("export")
    create_dev_platform_table(url)
    apply_migrations(url)
    yield PlatformDb(url)
    store.close_pools()


@pytest.fixture(scope="module")
def seeded(mlflow_server: MlflowServer) -> dict[str, Any]:
    """The runs every test here reads, logged once through the real MLflow client (plus SQL for what
    today's API refuses)."""
    full = callback_run("qt-full", seed=1)
    edge = callback_run("qt-edge", seed=2)
    # A NaN at epoch 2, +infinity at epoch 3, two values at step 4 (the later one wins), a metric from epoch 10.
    edge["metrics"] += [
        ["loss", "NaN", 2, T0 + 2 * 60_000 + 10],
        ["loss", "Infinity", 3, T0 + 3 * 60_000 + 10],
        ["loss", 0.123456789, 4, T0 + 4 * 60_000 + 10],
        ["late_metric", 0.5, 10, T0 + 10 * 60_000],
        ["late_metric", 0.25, 11, T0 + 11 * 60_000],
    ]
    empty = {"name": "qt-empty", "params": {"note": "no metrics"}, "metrics": [], "status": "KILLED"}
    deleted = dict(callback_run("qt-deleted", epochs=3, seed=3), delete=True)
    hostile = callback_run("qt-hostile", epochs=2, seed=4)
    hostile["params"]["long_param"] = "p" * 10_000  # MLflow keeps 6,000 of it
    wide = {"name": "qt-wide", "metrics": [[f"m{i:04d}", i / 7, step, T0 + step] for i in range(2000) for step in (0, 1)]}
    ids = dict(zip(("full", "edge", "empty", "deleted", "hostile", "wide"),
                   mlflow_server.seed([full, edge, empty, deleted, hostile, wide])))
    # What older stores hold and today's API refuses: quotes in a metric name, an 8,000-character param.
    quoted = 'recall "quoted" \'name\''
    for step, value in ((0, 0.25), (1, 0.5)):
        mlflow_server.sql("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (%s, %s, %s, %s, %s, false)",
                          (quoted, value, T0 + step, ids["hostile"], step))
    mlflow_server.sql("INSERT INTO latest_metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (%s, 0.5, %s, %s, 1, false)",
                      (quoted, T0 + 1, ids["hostile"]))
    mlflow_server.sql("INSERT INTO params (key, value, run_uuid) VALUES ('huge_param', %s, %s)", ("h" * 8000, ids["hostile"]))
    return {"ids": ids, "specs": {"full": full, "edge": edge, "deleted": deleted}, "quoted": quoted}


@pytest.fixture
def env(export_db: PlatformDb, artifacts: Artifacts, monkeypatch: pytest.MonkeyPatch) -> PlatformDb:
    """DATABASE_URL at this module's database, the emulator bucket ready, no rows left from other tests."""
    monkeypatch.setenv("DATABASE_URL", export_db.url)
    conn = export_db.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("TRUNCATE ml_platform_quicktest, mlflow_export_decisions, mlflow_export_verifications,"
                        " mlflow_export_replaced_histories RESTART IDENTITY")
    finally:
        conn.close()
    return export_db


def add_row(db: PlatformDb, run_id: str, history: Any = None) -> tuple[int, str]:
    row_id, folder = db.new_quicktest(history=history)
    conn = db.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE ml_platform_quicktest SET mlflow_run_id = %s WHERE id = %s", (run_id, row_id))
    finally:
        conn.close()
    return row_id, folder


def export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["export-mlflow", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def by_id(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {row["quicktest_id"]: row for row in report["rows"]}


# ---------------------------------------------------------------- tests


def test_every_seeded_value_is_in_the_row_bit_for_bit(
    env: PlatformDb, artifacts: Artifacts, mlflow_server: MlflowServer, seeded: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through SQL, every value the callbacks logged lands in the row at its epoch bit for bit, validation
    gaps are null, the document passes the schema, and the file sits in the row's folder."""
    row_id, folder = add_row(env, seeded["ids"]["full"])
    code, report = export(capsys, "--mlflow-database-url", mlflow_server.database_url)
    assert code == 0, json.dumps(report)[-3000:]
    assert report["counts"] == {"exported": 1, "exists": 0, "skipped": 0, "missing_run": 0, "failed": 0, "verified": 1,
                                "mismatch": 0, "accepted_loss": 0}
    history = env.history(row_id)
    doc = {k: v for k, v in history.items() if k not in ("source", "ingested_at", "summary")}
    check_document(doc)
    assert doc["epochs"] == list(range(12))
    for key, value, step, _ in seeded["specs"]["full"]["metrics"]:
        got = value_at(doc, expected_location(key), step)
        assert got == value and bits(float(got)) == bits(value), (key, step, got, value)
    assert doc["loss"]["val_loss"][:5] == [None, None, None, None, doc["loss"]["val_loss"][4]]
    assert [v is None for v in doc["loss"]["val_loss"]] == [(e + 1) % 5 != 0 for e in range(12)]
    assert doc["weight_stats"]["query"]["histogram"]["bin_edges"] == HIST_EDGES
    assert doc["params"]["batch_size"] == 2048 and doc["params"]["optimizer"] == "adagrad" and doc["status"] == "completed"
    assert doc["mlflow"]["run_id"] == seeded["ids"]["full"] and doc["mlflow"]["run_name"] == "qt-full"
    assert doc["mlflow"]["tags"]["platform.quicktest"] == "qt-full"
    started = dt.datetime.fromtimestamp((T0 - 1000) / 1000, dt.timezone.utc)
    assert doc["mlflow"]["start_time"] == started.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    blob = artifacts.bucket.get_blob(f"{folder}/training_metrics.json")
    assert blob is not None and json.loads(blob.download_as_bytes())["epochs"] == list(range(12))
    assert history["source"]["generation"] == str(blob.generation)
    records = env.ingestions(artifacts.bucket_name, blob.name)
    assert [r["outcome"] for r in records] == ["ingested"]
    assert records[0]["event_id"].startswith("export-mlflow:")


def test_sql_and_rest_give_identical_documents(
    env: PlatformDb, mlflow_server: MlflowServer, seeded: dict[str, Any], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The SQL and the REST path write byte-identical files (NaN, infinity, duplicates and quoted names included),
    each verified against MLflow, with --output-dir touching neither GCS nor the rows."""
    rows = [add_row(env, seeded["ids"][name]) for name in ("full", "edge", "deleted", "hostile")]
    outputs = {}
    for flag, value in (("--mlflow-database-url", mlflow_server.database_url), ("--tracking-uri", mlflow_server.url)):
        out = tmp_path / flag.strip("-")
        code, report = export(capsys, flag, value, "--output-dir", str(out))
        assert code == 0, report
        assert report["counts"]["exported"] == 4 and report["counts"]["verified"] == 4
        outputs[flag] = {p.relative_to(out): p.read_bytes() for p in out.rglob("training_metrics.json")}
    sql_files, rest_files = outputs.values()
    assert len(sql_files) == 4 and sql_files == rest_files
    for row_id, _ in rows:
        assert env.history(row_id) is None  # --output-dir: no row touched


def test_edge_cases_get_their_documented_outcomes(
    env: PlatformDb, artifacts: Artifacts, mlflow_server: MlflowServer, seeded: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """NaN/+inf become null and are counted, the newer of two values at a step wins, a late metric is null
    before it starts, a run without metrics and a deleted run export, an unknown run id is missing_run, and a
    folder that already has a file is left alone (its file ingested): the summary counts each."""
    ids = seeded["ids"]
    edge_id, _ = add_row(env, ids["edge"])
    empty_id, _ = add_row(env, ids["empty"])
    deleted_id, _ = add_row(env, ids["deleted"])
    unknown_id, _ = add_row(env, "0123456789abcdef0123456789abcdef")
    exists_id, exists_folder = add_row(env, ids["full"])
    mine = b'{"schema_version": 1, "epochs": [0], "loss": {"loss": [1.5]}}'
    artifacts.upload(exists_folder, mine)
    code, report = export(capsys, "--mlflow-database-url", mlflow_server.database_url, "--workers", "2")
    assert code == 1  # a missing run is not done
    assert report["counts"] == {"exported": 3, "exists": 1, "skipped": 0, "missing_run": 1, "failed": 0, "verified": 3,
                                "mismatch": 0, "accepted_loss": 0}
    rows = by_id(report)
    assert rows[edge_id]["duplicates"] == 3 and rows[edge_id]["non_finite"] == 2
    assert rows[deleted_id]["lifecycle_stage"] == "deleted" and rows[deleted_id]["verification"] == "verified"
    assert rows[unknown_id]["outcome"] == "missing_run" and "0123456789abcdef" in rows[unknown_id]["reason"]
    assert rows[exists_id]["outcome"] == "exists" and rows[exists_id]["ingest_outcome"] == "ingested"
    edge = env.history(edge_id)
    assert edge["loss"]["loss"][2] is None and edge["loss"]["loss"][3] is None
    assert edge["loss"]["loss"][4] == 0.123456789
    assert edge["metrics"]["late_metric"] == [None] * 10 + [0.5, 0.25]
    empty = env.history(empty_id)
    assert empty["epochs"] == [] and empty["params"] == {"note": "no metrics"} and empty["status"] == "failed"
    assert env.history(exists_id)["loss"] == {"loss": [1.5]}  # the file that was there, not ours
    assert artifacts.bucket.get_blob(f"{exists_folder}/training_metrics.json").download_as_bytes() == mine
    code = main(["export-mlflow", "--mlflow-database-url", mlflow_server.database_url])
    summary = capsys.readouterr().out
    assert re.search(r"missing_run +1\n", summary) and "Not done" in summary and str(unknown_id) in summary


def test_rerun_is_idempotent_and_verify_only_finds_a_tampered_row(
    env: PlatformDb, artifacts: Artifacts, mlflow_server: MlflowServer, seeded: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A second export writes nothing (the rows are done; named again they are `exists`), --verify-only passes,
    and a value changed in a row is a mismatch naming the first difference."""
    row_id, folder = add_row(env, seeded["ids"]["full"])
    other_id, _ = add_row(env, seeded["ids"]["edge"])
    url = mlflow_server.database_url
    assert export(capsys, "--mlflow-database-url", url)[0] == 0
    generation = artifacts.bucket.get_blob(f"{folder}/training_metrics.json").generation
    code, again = export(capsys, "--mlflow-database-url", url)
    assert code == 0 and again["selected"] == 0
    code, named = export(capsys, "--mlflow-database-url", url, "--quicktest", str(row_id), "--quicktest", str(other_id))
    assert code == 0 and named["counts"]["exists"] == 2 and named["counts"]["exported"] == 0
    assert artifacts.bucket.get_blob(f"{folder}/training_metrics.json").generation == generation
    assert len(env.ingestions(artifacts.bucket_name, f"{folder}/training_metrics.json")) == 1
    code, verified = export(capsys, "--mlflow-database-url", url, "--verify-only")
    assert code == 0 and verified["counts"]["verified"] == 2
    conn = env.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE ml_platform_quicktest SET training_history_json = jsonb_set(training_history_json,"
                        " '{loss,loss,3}', '0.5') WHERE id = %s", (row_id,))
    finally:
        conn.close()
    code, checked = export(capsys, "--tracking-uri", mlflow_server.url, "--verify-only")
    assert code == 1
    assert by_id(checked)[row_id]["outcome"] == "mismatch"
    assert "loss.loss at epoch 3" in by_id(checked)[row_id]["reason"]
    assert by_id(checked)[other_id]["outcome"] == "verified"


def test_teardown_no_longer_refuses_after_the_export(
    env: PlatformDb, mlflow_server: MlflowServer, seeded: dict[str, Any], cloud: Cloud,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """deploy.sh teardown-mlflow refuses while a row's history is only in MLflow, and passes its check once
    export-mlflow has filled the rows."""
    add_row(env, seeded["ids"]["full"])
    add_row(env, seeded["ids"]["deleted"])
    cloud.set_state(MLFLOW_STATE)
    before = teardown(cloud, env.url)
    assert before.returncode == 1 and "refusing" in before.stderr
    assert export(capsys, "--mlflow-database-url", mlflow_server.database_url)[0] == 0
    after = teardown(cloud, env.url)
    assert after.returncode == 0, after.stderr
    assert "no QuickTest row depends on MLflow any more" in after.stderr
    assert cloud.state() == MLFLOW_STATE  # without --yes nothing is deleted


def test_hostile_content_is_exported_not_crashed_on(
    env: PlatformDb, mlflow_server: MlflowServer, seeded: dict[str, Any], capsys: pytest.CaptureFixture[str],
) -> None:
    """A param MLflow truncated to 6,000 characters, an 8,000-character param, a metric name with quotes and a
    run with 2,000 metrics are exported whole and verified."""
    hostile_id, _ = add_row(env, seeded["ids"]["hostile"])
    wide_id, _ = add_row(env, seeded["ids"]["wide"])
    code, report = export(capsys, "--mlflow-database-url", mlflow_server.database_url)
    assert code == 0, json.dumps(report)[-2500:]
    assert report["counts"]["verified"] == 2
    hostile = env.history(hostile_id)
    assert hostile["params"]["long_param"] == "p" * 6000 and hostile["params"]["huge_param"] == "h" * 8000
    assert hostile["metrics"][seeded["quoted"]] == [0.25, 0.5]
    wide = env.history(wide_id)
    assert len(wide["metrics"]) == 2000 and wide["metrics"]["m1999"] == [1999 / 7, 1999 / 7]
    assert by_id(report)[wide_id]["points"] == 4000


def test_dry_run_shows_where_each_key_lands_and_writes_nothing(
    env: PlatformDb, artifacts: Artifacts, mlflow_server: MlflowServer, seeded: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--dry-run prints each MLflow key's place in the document, uploads nothing and leaves the row as it was."""
    row_id, folder = add_row(env, seeded["ids"]["full"])
    code = main(["export-mlflow", "--mlflow-database-url", mlflow_server.database_url, "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "would export" in out
    assert "metric 'query_weight_mean' -> weight_stats.query.mean (12 steps)" in out
    assert "metric 'candidate_weight_norm' -> gradient.candidate" in out
    assert "metric 'query_weight_hist_bin_3' -> weight_stats.query.histogram.counts[][3]" in out
    assert "metric 'test_recall_at_100' -> final_metrics.test_recall_at_100" in out
    assert "param 'query_weight_hist_edges' -> params.query_weight_hist_edges and weight_stats.query.histogram.bin_edges" in out
    assert artifacts.bucket.get_blob(f"{folder}/training_metrics.json") is None
    assert env.history(row_id) is None


def test_a_database_that_is_not_mlflow_is_refused_in_one_line(
    env: PlatformDb, capsys: pytest.CaptureFixture[str],
) -> None:
    """Pointing --mlflow-database-url at another database (here the platform's) exits 2 with one clear line."""
    add_row(env, "0123456789abcdef0123456789abcdef")
    code = main(["export-mlflow", "--mlflow-database-url", env.url])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "does not look like an MLflow tracking database" in err and "runs, metrics, params, tags" in err


def test_usage_errors_exit_2(env: PlatformDb, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No source, two sources, a broken mapping file or a non-PostgreSQL URL exit 2 and say why; an
    unreachable tracking server is one line and exit 1."""
    assert main(["export-mlflow"]) == 2
    assert "exactly one of --mlflow-database-url" in capsys.readouterr().err
    assert main(["export-mlflow", "--mlflow-database-url", "x", "--tracking-uri", "http://y"]) == 2
    capsys.readouterr()
    bad = tmp_path / "mapping.json"
    bad.write_text('{"metrics": [{"pattern": "w_(?P<tower>\\\\w+", "to": "gradient"}]}')
    assert main(["export-mlflow", "--tracking-uri", "http://127.0.0.1:1", "--mapping", str(bad)]) == 2
    assert "metrics[0]" in capsys.readouterr().err
    assert main(["export-mlflow", "--mlflow-database-url", "mysql://u@h/db"]) == 2
    assert "only PostgreSQL" in capsys.readouterr().err
    assert main(["export-mlflow", "--tracking-uri", "http://x", "--verify-only", "--dry-run"]) == 2
    capsys.readouterr()
    assert main(["export-mlflow", "--tracking-uri", f"http://127.0.0.1:{closed_port()}", "--output-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "cannot reach MLflow tracking server http://127.0.0.1" in err and "Traceback" not in err


def test_interrupted_export_leaves_rows_untouched_or_complete(
    env: PlatformDb, artifacts: Artifacts, mlflow_server: MlflowServer, seeded: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop after the first row finishes that row and starts no other: each row is complete or untouched."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", artifacts.emulator.url)
    rows = [add_row(env, seeded["ids"][name]) for name in ("full", "edge", "deleted", "empty")]
    stop = threading.Event()
    options = ExportOptions(SqlSource(mlflow_server.database_url, batch_size=1), workers=1, settings=env.settings())
    report = run_export(options, on_outcome=lambda _: stop.set(), stop=stop)
    assert report.interrupted and report.exit_status == 130
    assert 1 <= len(report.outcomes) < 4
    done = {o.row.id for o in report.outcomes}
    for row_id, folder in rows:
        blob = artifacts.bucket.get_blob(f"{folder}/training_metrics.json")
        if row_id in done:
            assert env.history(row_id)["mlflow"]["run_id"] and blob is not None
        else:
            assert env.history(row_id) is None and blob is None


def test_a_negative_step_is_reported_not_exported(
    env: PlatformDb, mlflow_server: MlflowServer, capsys: pytest.CaptureFixture[str],
) -> None:
    """A run with a metric at a negative step (no epoch can hold it) fails with the reason; nothing is written."""
    [run_id] = mlflow_server.seed([{"name": "qt-negative", "metrics": [["loss", 0.5, 0, T0]]}])
    mlflow_server.sql("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES ('loss', 1, %s, %s, -3, false)",
                      (T0, run_id))
    row_id, _ = add_row(env, run_id)
    code, report = export(capsys, "--mlflow-database-url", mlflow_server.database_url)
    assert code == 1
    assert by_id(report)[row_id]["outcome"] == "failed" and "step -3" in by_id(report)[row_id]["reason"]
    assert env.history(row_id) is None


def test_all_adds_rows_with_a_history_but_no_file(
    env: PlatformDb, artifacts: Artifacts, mlflow_server: MlflowServer, seeded: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--all also exports a row whose history is only the old Django cache (no file in its folder) and leaves
    a row whose folder has a file as it is; without --all neither is selected."""
    cache_id, cache_folder = add_row(env, seeded["ids"]["deleted"], history={"epochs": [0], "loss": {"loss": [1.0]}})
    filed_id, filed_folder = add_row(env, seeded["ids"]["edge"], history={"epochs": [0]})
    artifacts.upload(filed_folder, b'{"epochs": [0]}')
    url = mlflow_server.database_url
    assert export(capsys, "--mlflow-database-url", url)[1]["selected"] == 0
    code, report = export(capsys, "--mlflow-database-url", url, "--all")
    assert code == 0, report
    rows = by_id(report)
    assert rows[cache_id]["outcome"] == "exported" and rows[cache_id]["verification"] == "verified"
    assert rows[filed_id]["outcome"] == "exists"
    assert env.history(cache_id)["mlflow"]["run_id"] == seeded["ids"]["deleted"]
    assert env.history(filed_id) == {"epochs": [0]}
    assert artifacts.bucket.get_blob(f"{cache_folder}/training_metrics.json") is not None


def test_rest_follows_history_pages(
    env: PlatformDb, mlflow_server: MlflowServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A metric with more points than one history page (25,000) comes back whole through REST, page by page."""
    [run_id] = mlflow_server.seed([{"name": "qt-long", "metrics": [["lr", 0.1, 0, T0]]}])
    mlflow_server.sql(
        "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan)"
        " SELECT 'loss', s / 1000.0, %s + s, %s, s, false FROM generate_series(0, 25099) AS s",
        (T0, run_id),
    )
    mlflow_server.sql("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES ('loss', 25.099, %s, 25099, false, %s)",
                      (T0 + 25099, run_id))
    row_id, _ = add_row(env, run_id)
    code, report = export(capsys, "--tracking-uri", mlflow_server.url, "--output-dir", str(tmp_path))
    assert code == 0, report
    assert by_id(report)[row_id]["points"] == 25101 and by_id(report)[row_id]["verification"] == "verified"
    [path] = tmp_path.rglob("training_metrics.json")
    doc = json.loads(path.read_bytes())
    assert len(doc["epochs"]) == 25100 and doc["loss"]["loss"][-1] == 25.099
