"""docs/mlflow-runbook.md, run as written: its SQL and shell blocks in order against the real MLflow
server, the session PostgreSQL and the GCS emulator (gcloud through the recording stand-in)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.mlflow_server import MlflowServer
from tests.support.platform_db import Artifacts, PlatformDb
from tests.support.postgres import query, with_params
from tests.support.scratch_db import psql_path
from tests.test_deploy import DEPLOY, MLFLOW_STATE, Cloud, cloud  # noqa: F401
from tests.test_export_mlflow import add_row, env, export_db, seeded  # noqa: F401

pytestmark = pytest.mark.slow

RUNBOOK = Path(__file__).resolve().parents[1] / "docs" / "mlflow-runbook.md"


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block, in order."""
    return re.findall(r"^```(\w+)\n(.*?)^```", RUNBOOK.read_text(), flags=re.S | re.M)


def test_the_runbook_runs_in_order(
    env: PlatformDb, artifacts: Artifacts, mlflow_server: MlflowServer, seeded: dict[str, Any], cloud: Cloud,
    tmp_path: Path,
) -> None:
    """Roles from the runbook's SQL, the grants and the backup through gcloud, a pg_dump that its check
    accepts, the export as the runbook's platform role, verification and the teardown dry run all succeed."""
    rows = [add_row(env, seeded["ids"][name]) for name in ("full", "edge")]
    found = blocks()
    variables = found[0][1]
    sql_blocks = [text for lang, text in found if lang == "sql"]
    assert len(sql_blocks) == 2
    [(mlflow_db_name,)] = query(mlflow_server.database_url, "SELECT current_database()")
    [(platform_db_name,)] = query(env.url, "SELECT current_database()")
    query(mlflow_server.database_url, sql_blocks[0].replace("DATABASE mlflow", f'DATABASE "{mlflow_db_name}"'))
    query(env.url, sql_blocks[1] + f'GRANT CONNECT ON DATABASE "{platform_db_name}" TO metrics_ingest_export;')
    bin_dir = Path(sys.executable).parent
    shell_env = {
        **cloud.env,
        "PATH": f"{cloud.env['PATH']}{os.pathsep}{bin_dir}{os.pathsep}{psql_path().parent}",
        "MLFLOW_DB": with_params(mlflow_server.database_url, user="mlflow_reader"),
        "MLFLOW_ADMIN_DB": mlflow_server.database_url,
        "DATABASE_URL": with_params(env.url, user="metrics_ingest_export"),
        "STORAGE_EMULATOR_HOST": artifacts.emulator.url,
        "GOOGLE_CLOUD_PROJECT": "test-project",
    }
    (tmp_path / "deploy.sh").symlink_to(DEPLOY)
    cloud.set_state(MLFLOW_STATE)
    for lang, text in found[1:]:
        if lang != "sh":
            continue
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", variables + text], cwd=tmp_path, env=shell_env,
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, (text, done.stdout[-2000:], done.stderr[-3000:])
    assert any(c[:3] == ["sql", "export", "sql"] for c in cloud.calls()), cloud.calls()
    assert any("roles/storage.objectCreator" in c for call in cloud.calls() for c in call)
    assert "would export" in (tmp_path / "dry-run.txt").read_text()
    for row_id, _ in rows:
        assert env.history(row_id)["mlflow"]["run_id"]


def test_the_backup_check_refuses_an_empty_dump(tmp_path: Path) -> None:
    """The runbook's backup check fails loudly on a gzip of nothing (the 20-byte file a failed pipe leaves)."""
    [check] = [text for lang, text in blocks() if lang == "sh" and "gzip -t" in text]
    subprocess.run(["bash", "-c", "gzip -c /dev/null > mlflow-backup.sql.gz"], cwd=tmp_path, check=True)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", check], cwd=tmp_path, capture_output=True, text=True,
                          check=False)
    assert done.returncode != 0 and "not a usable MLflow dump" in done.stderr
