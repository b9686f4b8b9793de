"""Bad settings fail clearly: a retried configuration error in the function, one line on the
command line, and the database password in no log line or message."""

from __future__ import annotations

import json
from typing import Any

import psycopg2
import pytest
from cloudevents.conversion import to_binary
from psycopg2 import sql

import functions_framework
from ingest.config import Settings, check_database_url, database_url_problem
from ingest.objects import ObjectRef
from ingest.pipeline import ingest_object
from metrics_ingest.cli import main
from metrics_ingest.migrations import apply_migrations, create_dev_platform_table
from metrics_ingest.replay import check_database
from tests.support.documents import dumps, v1_document
from tests.support.function_server import ROOT, finalize_event
from tests.support.platform_db import Artifacts, PlatformDb
from tests.support.postgres import query

# A base64 password as `openssl rand -base64` makes them: '/', '+' and '='.
PASSWORD = "Zq9/k+Xf3Lw8=secretPW"
# Each malformed the way people get it wrong, the password inside.
BAD_URLS = {
    "percent": "postgresql://metrics:Zq9%k+Xf3Lw8=secretPW@db.internal:5432/platform",
    "slash": f"postgresql://metrics:{PASSWORD}@db.internal:5432/platform",
    "port": f"postgresql://metrics:{PASSWORD}@db.internal:54x2/platform",
    "dsn": f"host=db.internal password={PASSWORD} dbname",
}
# Fragments a misparse could echo (libpq took "Zq9" as a port, "k+Xf3Lw8=..." as a database name).
FRAGMENTS = ("Zq9", "secretPW", "Xf3Lw8")


def _assert_no_password(text: str) -> None:
    for fragment in FRAGMENTS:
        assert fragment not in text, f"{fragment!r} leaked: {text!r}"


@pytest.fixture
def app(artifacts: Artifacts, monkeypatch: pytest.MonkeyPatch) -> Any:
    """functions-framework's app for the function; each test sets its own (bad) variables."""
    monkeypatch.setenv("GCS_TIMEOUT_SECONDS", "0.5")
    return functions_framework.create_app("ingest_training_metrics", str(ROOT / "functions" / "main.py"), "cloudevent")


def _post(app: Any, resource: dict[str, Any]) -> int:
    headers, body = to_binary(finalize_event(resource, "evt-config"))
    return app.test_client().post("/", headers=headers, data=body).status_code


def _entries(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("kind", sorted(BAD_URLS))
def test_malformed_database_url_is_named_by_kind_and_never_quoted(kind: str) -> None:
    """Every malformed form says what kind of mistake it is; the message holds no part of the password."""
    problem = database_url_problem(BAD_URLS[kind])
    assert problem
    with pytest.raises(ValueError) as caught:
        Settings(database_url=BAD_URLS[kind])
    message = str(caught.value)
    assert message.startswith("Invalid value for DATABASE_URL: not a valid connection string: ")
    _assert_no_password(message)
    assert caught.value.__context__ is None and caught.value.__cause__ is None  # libpq's quoting text not chained


def test_well_formed_urls_and_dsns_pass() -> None:
    """URLs with percent-encoded passwords, Cloud SQL socket DSNs and multi-host ports are accepted as they are."""
    for url in (
        "postgresql://metrics:Zq9%2Fk%2BXf3Lw8%3D@db.internal:5432/platform?sslmode=require",
        "host=/cloudsql/p:europe-central2:db dbname=platform user=metrics_ingest_fn",
        "postgresql://a@h1:5432,h2:5433/platform",
    ):
        check_database_url(url)


@pytest.mark.parametrize("kind", sorted(BAD_URLS))
def test_function_logs_a_malformed_database_url_without_the_password(
    app: Any,
    platform_db: PlatformDb,
    artifacts: Artifacts,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A malformed DATABASE_URL: the event is retried (500) with one ERROR line saying so; no line anywhere holds the password."""
    _, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    monkeypatch.setenv("DATABASE_URL", BAD_URLS[kind])
    assert _post(app, resource) == 500
    captured = capsys.readouterr()
    [entry] = [e for e in _entries(captured.out) if e.get("event_id") == "evt-config"]
    assert entry["severity"] == "ERROR" and entry["outcome"] == "retry"
    assert "DATABASE_URL" in entry["message"] and "not shown" in entry["message"]
    for text in (captured.out, captured.err, caplog.text, *(r.getMessage() for r in caplog.records)):
        _assert_no_password(text)


@pytest.mark.parametrize("value", ["runs/training_metrics.json", "../training_metrics.json", "..", "   "])
def test_bad_metrics_filename_is_a_retried_configuration_error_over_http(
    app: Any, platform_db: PlatformDb, artifacts: Artifacts, value: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """METRICS_FILENAME with '/', '..' or only blanks: every event is 500 with an ERROR line naming it, nothing acknowledged unread."""
    _, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    monkeypatch.setenv("DATABASE_URL", platform_db.url)
    monkeypatch.setenv("METRICS_FILENAME", value)
    assert _post(app, resource) == 500
    [entry] = [e for e in _entries(capsys.readouterr().out) if e.get("event_id") == "evt-config"]
    assert entry["severity"] == "ERROR" and entry["outcome"] == "retry"
    assert "METRICS_FILENAME" in entry["message"]
    assert platform_db.ingestions(resource["bucket"], resource["name"]) == []


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e999"])
def test_gcs_timeout_must_be_finite(value: str) -> None:
    """GCS_TIMEOUT_SECONDS=inf (or nan) fails validation with a message naming the variable."""
    with pytest.raises(ValueError, match=r"GCS_TIMEOUT_SECONDS.*positive, finite number"):
        Settings.from_env({"GCS_TIMEOUT_SECONDS": value})


@pytest.mark.parametrize("kind", sorted(BAD_URLS))
def test_cli_says_one_line_for_a_malformed_url_without_the_password(
    kind: str, gcs_env: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """migrate and replay, with the URL in DATABASE_URL or --database-url: exit 2, one line, no traceback, no password."""
    runs = [
        (["migrate"], {"DATABASE_URL": BAD_URLS[kind]}, "DATABASE_URL"),
        (["migrate", "--database-url", BAD_URLS[kind]], {}, "--database-url"),
        (["migrate", "--rollback"], {"DATABASE_URL": BAD_URLS[kind]}, "DATABASE_URL"),
        (["replay", "gs://ml-artifacts/x"], {"DATABASE_URL": BAD_URLS[kind]}, "DATABASE_URL"),
        (["replay", "gs://ml-artifacts/x", "--database-url", BAD_URLS[kind]], {}, "DATABASE_URL"),
    ]
    for argv, env, setting in runs:
        for name in ("DATABASE_URL",):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, (argv, captured.err)
        assert setting in lines[0] and "not a valid connection string" in lines[0], (argv, lines[0])
        assert "Traceback" not in captured.err and "refused" not in captured.err
        _assert_no_password(captured.out + captured.err)


def test_migrate_with_a_non_numeric_pgport_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PGPORT=abc (no DATABASE_URL): one line naming PGPORT, exit 2, no traceback."""
    monkeypatch.setenv("PGHOST", "db.internal")
    monkeypatch.setenv("PGPORT", "abc")
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["migrate: error: Invalid value for PGPORT (or the DSN's port): the port is not a number."]


def test_schema_qualified_quicktest_table_is_supported(
    scratch_database: Any, artifacts: Artifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QUICKTEST_TABLE=schema.table outside the search_path: migrate indexes it, replay's check finds it, an event is ingested into it."""
    url = scratch_database("schema_table")
    query(url, "CREATE SCHEMA platform")
    table = "platform.ml_platform_quicktest"
    create_dev_platform_table(url, table)
    monkeypatch.setenv("QUICKTEST_TABLE", table)
    apply_migrations(url)
    indexed = query(url, "SELECT indexname FROM pg_indexes WHERE schemaname = 'platform' AND tablename = 'ml_platform_quicktest'"
                    " AND indexdef LIKE '%%(gcs_artifacts_path)%%'")
    assert len(indexed) == 1
    settings = Settings.from_env({"DATABASE_URL": url, "QUICKTEST_TABLE": table})
    assert settings.quicktest_table_name == ("platform", "ml_platform_quicktest")
    check_database(settings)  # replay's set-up check: no "no table" error
    folder = "quick_tests/schema-qualified"
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("INSERT INTO {} (name, gcs_artifacts_path) VALUES ('q', %s) RETURNING id").format(
                    sql.Identifier("platform", "ml_platform_quicktest")
                ),
                (f"gs://{artifacts.bucket_name}/{folder}",),
            )
            (row_id,) = cur.fetchone()
    finally:
        conn.close()
    resource = artifacts.upload(folder, dumps(v1_document(2)))
    result = ingest_object(ObjectRef.from_resource(resource), settings=settings)
    assert (result.outcome, result.quicktest_id) == ("ingested", row_id)
    assert query(url, "SELECT training_history_json -> 'epochs' FROM platform.ml_platform_quicktest WHERE id = %s",
                 (row_id,)) == [([0, 1],)]


@pytest.mark.parametrize("value", ["a.b.c", ".table", "schema.", "."])
def test_quicktest_table_with_more_than_schema_and_table_is_refused(value: str) -> None:
    """QUICKTEST_TABLE with more than one '.' or an empty part is refused with one line naming the variable."""
    with pytest.raises(ValueError, match=r"^Invalid value for QUICKTEST_TABLE\. .*schema\.table"):
        Settings(quicktest_table=value)

