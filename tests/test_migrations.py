"""migrations/ applied with yoyo by `metrics-ingest migrate`: idempotent, reversible,
never altering the platform table."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from psycopg2.extensions import parse_dsn

from metrics_ingest.migrations import (
    apply_migrations,
    create_dev_platform_table,
    rollback_migrations,
    yoyo_uri,
)
from tests.support.function_server import ROOT
from tests.support.network import unreachable_database_url
from tests.support.postgres import query

EXPECTED_COLUMNS = {
    "id": "bigint",
    "bucket": "text",
    "object_name": "text",
    "generation": "bigint",
    "event_id": "text",
    "quicktest_id": "bigint",
    "outcome": "text",
    "reason": "text",
    "size_bytes": "bigint",
    "epochs": "integer",
    "duration_ms": "double precision",
    "forced": "boolean",
    "created_at": "timestamp with time zone",
    "md5_hash": "text",
    "crc32c": "text",
}
COLUMNS_OF = (
    "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns"
    " WHERE table_name = %s ORDER BY 1"
)


@pytest.fixture
def fresh_db(scratch_database: Callable[[str], str]) -> str:
    """A new, empty database for one test."""
    return scratch_database("migrate")


def _path_indexes(url: str, table: str) -> list[str]:
    return [
        name
        for (name,) in query(
            url,
            "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexdef LIKE '%%(gcs_artifacts_path)%%'",
            (table,),
        )
    ]


# Every versioned migration, in order (0004: the summary ranking index, docs/platform.md).
MIGRATION_IDS = ["0001.create-ingestions", "0002.delivery-outcomes", "0003.export-decisions", "0004.summary-index"]


def test_migrations_apply_to_an_empty_database_once(fresh_db: str) -> None:
    """Every migration applies to an empty database, the schema is as documented, and a rerun applies nothing."""
    assert apply_migrations(fresh_db) == MIGRATION_IDS
    assert apply_migrations(fresh_db) == []
    columns = query(
        fresh_db,
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
        ("training_metrics_ingestions",),
    )
    assert dict(columns) == EXPECTED_COLUMNS
    indexes = {
        name
        for (name,) in query(fresh_db, "SELECT indexname FROM pg_indexes WHERE tablename = %s", ("training_metrics_ingestions",))
    }
    assert {"training_metrics_ingestions_one_ingested", "training_metrics_ingestions_object",
            "training_metrics_ingestions_one_per_event"} <= indexes
    assert query(fresh_db, "SELECT to_regclass('ml_platform_quicktest')") == [(None,)]  # dev table never applied


def test_rollback_removes_the_table_and_migrate_restores_it(fresh_db: str) -> None:
    """`migrate --rollback` drops what the migrations created; a later migrate applies them again."""
    apply_migrations(fresh_db)
    create_dev_platform_table(fresh_db)
    query(fresh_db, "INSERT INTO ml_platform_quicktest (gcs_artifacts_path) VALUES ('gs://b/q/9') RETURNING id")
    assert rollback_migrations(fresh_db) == MIGRATION_IDS[::-1]
    assert query(fresh_db, "SELECT to_regclass('training_metrics_ingestions')") == [(None,)]
    assert query(fresh_db, "SELECT count(*) FROM ml_platform_quicktest") == [(1,)]  # platform data untouched
    assert rollback_migrations(fresh_db) == []
    assert apply_migrations(fresh_db) == MIGRATION_IDS
    assert query(fresh_db, "SELECT to_regclass('training_metrics_ingestions')") == [("training_metrics_ingestions",)]


def test_path_index_is_added_once_the_platform_table_exists(fresh_db: str) -> None:
    """The gcs_artifacts_path index is skipped while the table is missing and added by a later migrate, once."""
    apply_migrations(fresh_db)
    create_dev_platform_table(fresh_db)
    query(fresh_db, "INSERT INTO ml_platform_quicktest (gcs_artifacts_path) VALUES ('gs://b/q/1') RETURNING id")
    before = query(fresh_db, COLUMNS_OF, ("ml_platform_quicktest",))
    assert _path_indexes(fresh_db, "ml_platform_quicktest") == []
    assert apply_migrations(fresh_db) == []
    [index] = _path_indexes(fresh_db, "ml_platform_quicktest")
    apply_migrations(fresh_db)
    assert _path_indexes(fresh_db, "ml_platform_quicktest") == [index]
    after = query(fresh_db, COLUMNS_OF, ("ml_platform_quicktest",))
    assert after == before  # columns untouched
    assert query(fresh_db, "SELECT count(*) FROM ml_platform_quicktest") == [(1,)]  # data untouched


def test_existing_index_on_the_path_is_reused(fresh_db: str) -> None:
    """A platform table that already has an index on gcs_artifacts_path (Django db_index) gets no second one."""
    create_dev_platform_table(fresh_db)
    query(fresh_db, "CREATE INDEX django_path_idx ON ml_platform_quicktest (gcs_artifacts_path)")
    apply_migrations(fresh_db)
    assert _path_indexes(fresh_db, "ml_platform_quicktest") == ["django_path_idx"]


def test_configured_table_name_gets_the_index(fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """QUICKTEST_TABLE names the table to index, quoted as an identifier."""
    table = 'Quick"Test; DROP TABLE x;--'
    create_dev_platform_table(fresh_db, table)
    monkeypatch.setenv("QUICKTEST_TABLE", table)
    apply_migrations(fresh_db)
    assert len(_path_indexes(fresh_db, table)) == 1


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metrics_ingest", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "functions"), str(ROOT)]), **(env or {})},
        timeout=120,
    )


def test_migrate_command(fresh_db: str) -> None:
    """`metrics-ingest migrate` applies, then says up to date; DATABASE_URL is read when no flag is given."""
    first = _cli("migrate", "--database-url", fresh_db)
    assert (first.returncode, first.stdout.strip()) == (0, "\n".join(f"applied {m}" for m in MIGRATION_IDS)), first.stderr
    assert "'ml_platform_quicktest' does not exist yet" in first.stderr
    second = _cli("migrate", env={"DATABASE_URL": fresh_db})
    assert (second.returncode, second.stdout.strip()) == (0, "up to date"), second.stderr
    rolled = _cli("migrate", "--database-url", fresh_db, "--rollback")
    assert (rolled.returncode, rolled.stdout.strip()) == (0, "\n".join(f"rolled back {m}" for m in MIGRATION_IDS[::-1])), rolled.stderr
    again = _cli("migrate", "--database-url", fresh_db, "--rollback", "--function-role", "fn")
    assert again.returncode == 2 and "do not go together" in again.stderr


def test_migrate_command_reports_an_unreachable_database() -> None:
    """An unreachable database makes `metrics-ingest migrate` exit 1 with the reason."""
    result = _cli("migrate", "--database-url", unreachable_database_url())
    assert result.returncode == 1
    assert result.stderr.startswith("migrate failed:") and "127.0.0.1" in result.stderr


def test_yoyo_uri_accepts_dsn_and_url_forms() -> None:
    """DATABASE_URL as a URL, a libpq DSN (Cloud SQL socket) or unset (PG* variables) becomes a yoyo URL."""
    assert yoyo_uri("postgres://u:p@h:5432/d") == "postgresql://u:p@h:5432/d"
    cloudsql = yoyo_uri("host=/cloudsql/proj:europe-west1:inst dbname=platform user=fn password=s3c/ret")
    assert cloudsql == "postgresql://fn:s3c%2Fret@/platform?host=%2Fcloudsql%2Fproj%3Aeurope-west1%3Ainst"
    assert yoyo_uri("host=db.internal port=6432 dbname=p user=u") == "postgresql://u@db.internal:6432/p"
    params = parse_dsn("host=/cloudsql/proj:europe-west1:inst dbname=platform")
    assert params["host"].startswith("/cloudsql/")
