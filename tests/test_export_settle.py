"""``export-mlflow``'s ways out of a stuck row against the real MLflow server: the teardown check
(dry run included), accepted losses, --all's kept copies and --restore, --repair, and the guards
(read grants, pipeline-ingested histories, emptied rows, --output-dir containment, over-cap runs)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from metrics_ingest.cli import main
from metrics_ingest.mlflow_export import ExportOptions, SqlSource, run_export
from tests.support.mlflow_server import MlflowServer
from tests.support.platform_db import Artifacts, PlatformDb
from tests.support.postgres import query, with_params
from tests.test_deploy import MLFLOW_STATE, Cloud, cloud, teardown  # noqa: F401
from tests.test_export_mlflow import add_row, by_id, env, export, export_db, seeded  # noqa: F401

pytestmark = pytest.mark.slow


def teardown_dry_run(cloud: Cloud, url: str) -> subprocess.CompletedProcess[str]:
    return teardown(cloud, url, "--dry-run")


def test_teardown_dry_run_checks_rows_and_honours_an_accepted_loss(
    env: PlatformDb, mlflow_server: MlflowServer, seeded: dict[str, Any], cloud: Cloud,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The teardown dry run refuses while rows depend on MLflow; after the export only the unknown run is
    listed; once its loss is accepted (recorded with who and why) it is listed apart and the check passes."""
    full_id, _ = add_row(env, seeded["ids"]["full"])
    unknown_id, _ = add_row(env, "0123456789abcdef0123456789abcdef")
    cloud.set_state(MLFLOW_STATE)
    before = teardown_dry_run(cloud, env.url)
    assert before.returncode == 1 and "refusing" in before.stderr
    assert f"{full_id}\t{seeded['ids']['full']}" in before.stderr and f"{unknown_id}\t0123" in before.stderr
    url = mlflow_server.database_url
    assert export(capsys, "--mlflow-database-url", url)[0] == 1  # the unknown run is missing_run
    middle = teardown_dry_run(cloud, env.url)
    assert middle.returncode == 1 and f"{unknown_id}\t0123" in middle.stderr
    assert seeded["ids"]["full"] not in middle.stderr
    assert main(["export-mlflow", "--accept-loss", "--quicktest", str(unknown_id), "--reason", "never in MLflow"]) == 0
    assert "accepted loss for quicktest" in capsys.readouterr().out
    [(by, reason, superseded)] = query(env.url, "SELECT decided_by, reason, superseded_at FROM mlflow_export_decisions")
    assert reason == "never in MLflow" and "database role" in by and superseded is None
    after = teardown_dry_run(cloud, env.url)
    assert after.returncode == 0, after.stderr
    assert "accepted loss" in after.stderr and "never in MLflow" in after.stderr
    assert "no QuickTest row depends on MLflow any more" in after.stderr
    assert cloud.state() == MLFLOW_STATE and [c for c in cloud.calls() if "delete" in c] == []
    code, report = export(capsys, "--mlflow-database-url", url)
    assert code == 0 and report["counts"]["accepted_loss"] == 1
    assert by_id(report)[unknown_id]["accepted_loss"]["reason"] == "never in MLflow"


def test_a_read_only_role_without_grants_is_one_line_and_exit_2(
    env: PlatformDb, mlflow_server: MlflowServer, seeded: dict[str, Any], artifacts: Artifacts,
    scratch_role: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A role that may log in but was given no SELECT stops the export before any row: one line, exit 2,
    nothing written; read past the check, the failure says "reading ... failed" once."""
    row_id, folder = add_row(env, seeded["ids"]["full"])
    role = scratch_role("mlflow_nogrant")
    mlflow_server.sql(f'CREATE ROLE "{role}" LOGIN')
    url = with_params(mlflow_server.database_url, user=role)
    code = main(["export-mlflow", "--mlflow-database-url", url])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0
    assert "cannot read table runs (permission denied)" in err and "grant the role SELECT" in err
    assert env.history(row_id) is None and artifacts.bucket.get_blob(f"{folder}/training_metrics.json") is None
    # Past the pre-check (the library call), the read fails per row, and the reason says "reading" once.
    options = ExportOptions(SqlSource(url), output_dir=tmp_path, settings=env.settings())
    [outcome] = run_export(options).outcomes
    assert outcome.outcome == "failed" and outcome.reason.startswith("reading the MLflow database failed")
    assert outcome.reason.count("reading") == 1


def test_all_keeps_the_replaced_history_and_restore_gives_it_back(
    env: PlatformDb, artifacts: Artifacts, mlflow_server: MlflowServer, seeded: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--all replaces a Django-cache history after keeping it; --restore puts back the same jsonb text byte for
    byte; a history the function ingested from a file (it has `source`) is skipped, and the dry run says why."""
    old = {"epochs": [0, 1], "loss": {"loss": [1.25, -0.0]}, "note": "django cache \u00e9"}
    cache_id, _ = add_row(env, seeded["ids"]["deleted"], history=old)
    piped = {"epochs": list(range(50)), "source": {"bucket": "b", "object": "o", "generation": "7"}}
    piped_id, _ = add_row(env, seeded["ids"]["edge"], history=piped)
    [(before,)] = query(env.url, "SELECT training_history_json::text FROM ml_platform_quicktest WHERE id = %s", (cache_id,))
    url = mlflow_server.database_url
    assert main(["export-mlflow", "--mlflow-database-url", url, "--all", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "would skip" in dry and "never replaces such a history" in dry and "would export" in dry
    code, report = export(capsys, "--mlflow-database-url", url, "--all")
    assert code == 0, report
    rows = by_id(report)
    assert rows[piped_id]["outcome"] == "skipped" and env.history(piped_id) == piped
    assert rows[cache_id]["outcome"] == "exported" and rows[cache_id]["kept_copy"] is not None
    assert env.history(cache_id)["mlflow"]["run_id"] == seeded["ids"]["deleted"]
    assert main(["export-mlflow", "--restore", "--quicktest", str(cache_id)]) == 0
    assert "restored the history" in capsys.readouterr().out
    [(after,)] = query(env.url, "SELECT training_history_json::text FROM ml_platform_quicktest WHERE id = %s", (cache_id,))
    assert after == before
    assert main(["export-mlflow", "--restore", "--quicktest", str(cache_id)]) == 1  # nothing left to restore
    assert "nothing changed" in capsys.readouterr().out


def test_a_tampered_row_is_repaired_and_verified(
    env: PlatformDb, artifacts: Artifacts, mlflow_server: MlflowServer, seeded: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """verify-only finds the tampered row; a plain re-export does not say `exists` and exit 0; --repair replaces
    the mismatched generation, ingests and verifies again (exit 0), and a later export is clean; a trainer's
    history is never repaired from MLflow."""
    row_id, folder = add_row(env, seeded["ids"]["full"])
    url = mlflow_server.database_url
    assert export(capsys, "--mlflow-database-url", url)[0] == 0
    generation = artifacts.bucket.get_blob(f"{folder}/training_metrics.json").generation
    query(env.url, "UPDATE ml_platform_quicktest SET training_history_json = jsonb_set(training_history_json,"
          " '{loss,loss,3}', '0.5') WHERE id = %s", (row_id,))
    code, checked = export(capsys, "--mlflow-database-url", url, "--verify-only")
    assert code == 1 and by_id(checked)[row_id]["outcome"] == "mismatch"
    code, again = export(capsys, "--mlflow-database-url", url, "--quicktest", str(row_id))
    assert code == 1 and by_id(again)[row_id]["verification"] == "mismatch" and "--repair" in by_id(again)[row_id]["reason"]
    code, plain = export(capsys, "--mlflow-database-url", url)
    assert code == 1 and plain["unrepaired_mismatches"] == [row_id]
    code, repaired = export(capsys, "--mlflow-database-url", url, "--repair")
    assert code == 0, repaired
    row = by_id(repaired)[row_id]
    assert row["outcome"] == "exported" and row["verification"] == "verified" and str(generation) in row["reason"]
    assert artifacts.bucket.get_blob(f"{folder}/training_metrics.json").generation > generation
    assert export(capsys, "--mlflow-database-url", url, "--verify-only")[0] == 0
    assert export(capsys, "--mlflow-database-url", url)[0] == 0
    trainer = {"epochs": [0], "source": {"bucket": "b", "object": "o", "generation": "7"}}
    trainer_id, _ = add_row(env, seeded["ids"]["edge"], history=trainer)
    code, refused = export(capsys, "--mlflow-database-url", url, "--repair", "--quicktest", str(trainer_id))
    assert code == 0 and by_id(refused)[trainer_id]["outcome"] == "skipped" and env.history(trainer_id) == trainer


def test_an_emptied_row_is_filled_from_its_file(
    env: PlatformDb, artifacts: Artifacts, mlflow_server: MlflowServer, seeded: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A row cleared after its file was ingested is filled again by a forced ingestion, and the report says so."""
    row_id, folder = add_row(env, seeded["ids"]["full"])
    url = mlflow_server.database_url
    assert export(capsys, "--mlflow-database-url", url)[0] == 0
    query(env.url, "UPDATE ml_platform_quicktest SET training_history_json = NULL WHERE id = %s", (row_id,))
    code, report = export(capsys, "--mlflow-database-url", url)
    row = by_id(report)[row_id]
    assert code == 0, json.dumps(report['rows'])
    assert row["outcome"] == "exists" and "forced" in row["reason"] and row["row_history"].startswith("generation")
    assert env.history(row_id)["mlflow"]["run_id"] == seeded["ids"]["full"]


def test_output_dir_stays_inside_its_folder(
    env: PlatformDb, mlflow_server: MlflowServer, seeded: dict[str, Any], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Rows whose folder holds `..` or `//` fail with the reason and write nothing outside --output-dir;
    a file, /dev/null or "" as --output-dir is one usage error."""
    out, outside = tmp_path / "out", tmp_path / "victim"
    outside.mkdir()
    ids = []
    for path in (f"gs://ml-artifacts/../../{outside.name}", f"gs://ml-artifacts//{outside}"):
        row_id, _ = add_row(env, seeded["ids"]["full"])
        query(env.url, "UPDATE ml_platform_quicktest SET gcs_artifacts_path = %s WHERE id = %s", (path, row_id))
        ids.append(row_id)
    code, report = export(capsys, "--mlflow-database-url", mlflow_server.database_url, "--output-dir", str(out))
    assert code == 1
    for row_id in ids:
        assert by_id(report)[row_id]["outcome"] == "failed" and "--output-dir" in by_id(report)[row_id]["reason"]
    assert list(outside.iterdir()) == [] and list(tmp_path.rglob("training_metrics.json")) == []
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for bad in (str(a_file), "/dev/null", ""):
        with pytest.raises(SystemExit) as exit_:
            main(["export-mlflow", "--tracking-uri", "http://127.0.0.1:1", "--output-dir", bad])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "--output-dir" in err and err.count("error:") == 1


def test_an_over_cap_run_is_refused_with_guidance_then_exported_under_its_own_name(
    env: PlatformDb, artifacts: Artifacts, mlflow_server: MlflowServer, seeded: dict[str, Any],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over MAX_METRICS_BYTES the row fails naming --oversize-cap; with it the document is written as
    training_metrics.oversize.json (which the function ignores), ingested here and verified."""
    monkeypatch.setenv("MAX_METRICS_BYTES", "4000")
    row_id, folder = add_row(env, seeded["ids"]["full"])
    url = mlflow_server.database_url
    code, refused = export(capsys, "--mlflow-database-url", url)
    assert code == 1 and "--oversize-cap" in by_id(refused)[row_id]["reason"], refused
    assert artifacts.bucket.get_blob(f"{folder}/training_metrics.json") is None
    code, report = export(capsys, "--mlflow-database-url", url, "--oversize-cap", "10000000")
    assert code == 0, report
    row = by_id(report)[row_id]
    assert row["verification"] == "verified" and "training_metrics.oversize.json" in row["destination"]
    assert artifacts.bucket.get_blob(f"{folder}/training_metrics.json") is None
    from ingest.pipeline import is_metrics_object

    assert not is_metrics_object(f"{folder}/training_metrics.oversize.json", env.settings())
    assert env.history(row_id)["source"]["object"].endswith("training_metrics.oversize.json")
