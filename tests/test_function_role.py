"""The function's least-privilege database role: it ingests, and PostgreSQL refuses the rest."""

from __future__ import annotations

import argparse
import dataclasses
import json
import select
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg2
import psycopg2.errors
import pytest
from google.cloud import storage

from metrics_ingest.db_role import (
    PASSWORD_ENV,
    RoleMigrationError,
    add_function_role_option,
    apply_function_role_option,
    grant_function_role,
)
from ingest.config import Settings
from ingest.objects import ObjectRef
from ingest.pipeline import ingest_object
from metrics_ingest.localstack.emulator import GcsEmulator
from metrics_ingest.migrations import apply_migrations
from tests.support.documents import v1_document
from tests.support.scratch_db import REPO, create_dev_platform_table, psql_path, with_params
from tests.support.postgres import query

SQL_FILE = REPO / "migrations" / "optional" / "function_role.sql"

# Another table of the platform's, which the function must not read.
OTHER_PLATFORM_TABLE = """
CREATE TABLE ml_platform_experiment (id bigserial PRIMARY KEY, name text, api_key text);
INSERT INTO ml_platform_experiment (name, api_key) VALUES ('retrieval', 'secret');
"""

FOLDER = "gs://ml-artifacts/quick_tests/42"


@dataclass(frozen=True)
class PlatformDb:
    admin_url: str
    row_id: int

    def role_url(self, role: str, password: str) -> str:
        return with_params(self.admin_url, user=role, password=password)


@pytest.fixture(scope="module")
def platform_db(scratch_database: Callable[[str], str]) -> PlatformDb:
    """A database with the dev platform table (one QuickTest row), our table, and another platform table."""
    url = scratch_database("fnrole")
    create_dev_platform_table(url)
    apply_migrations(url)
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(OTHER_PLATFORM_TABLE)
            cur.execute(
                "INSERT INTO ml_platform_quicktest (name, status, gcs_artifacts_path, mlflow_run_id)"
                " VALUES ('qt-42', 'completed', %s, 'run-abc') RETURNING id",
                (FOLDER + "/",),
            )
            row_id = cur.fetchone()[0]
    finally:
        conn.close()
    return PlatformDb(url, row_id)


@pytest.fixture(scope="module")
def function_role(platform_db: PlatformDb, scratch_role: Callable[[str], str]) -> tuple[str, str]:
    """(role, password): the role made by the Python migration."""
    role = scratch_role("fn")
    password = "pw-" + role
    grant_function_role(platform_db.admin_url, role, password=password)
    return role, password


@pytest.fixture
def as_role(platform_db: PlatformDb, function_role: tuple[str, str]) -> Iterator[psycopg2.extensions.connection]:
    """A connection logged in as the function's role."""
    conn = psycopg2.connect(platform_db.role_url(*function_role))
    try:
        yield conn
    finally:
        conn.close()


def privileges(url: str, role: str) -> set[tuple[str, ...]]:
    """Every privilege the role holds directly in this database, as (kind, object, [column,] privilege)."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                """
                WITH r AS (SELECT oid FROM pg_roles WHERE rolname = %(role)s)
                SELECT 'relation', c.relname, '', x.privilege_type
                  FROM pg_class c, aclexplode(c.relacl) x, r WHERE x.grantee = r.oid
                UNION ALL
                SELECT 'column', c.relname, a.attname, x.privilege_type
                  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid,
                       aclexplode(a.attacl) x, r WHERE x.grantee = r.oid
                UNION ALL
                SELECT 'schema', n.nspname, '', x.privilege_type
                  FROM pg_namespace n, aclexplode(n.nspacl) x, r WHERE x.grantee = r.oid
                UNION ALL
                SELECT 'database', d.datname, '', x.privilege_type
                  FROM pg_database d, aclexplode(d.datacl) x, r
                 WHERE x.grantee = r.oid AND d.datname = current_database()
                """,
                {"role": role},
            )
            return {tuple(row) for row in cur.fetchall()}
    finally:
        conn.close()


def expected_privileges(url: str) -> set[tuple[str, ...]]:
    dbname = psycopg2.extensions.parse_dsn(url)["dbname"]
    return {
        ("column", "ml_platform_quicktest", "id", "SELECT"),
        ("column", "ml_platform_quicktest", "gcs_artifacts_path", "SELECT"),
        ("column", "ml_platform_quicktest", "training_history_json", "SELECT"),
        ("column", "ml_platform_quicktest", "training_history_json", "UPDATE"),
        ("relation", "training_metrics_ingestions", "", "SELECT"),
        ("relation", "training_metrics_ingestions", "", "INSERT"),
        ("relation", "training_metrics_ingestions_id_seq", "", "USAGE"),
        ("schema", "public", "", "USAGE"),
        ("database", dbname, "", "CONNECT"),
    }


def test_role_gets_exactly_the_listed_privileges(platform_db: PlatformDb, function_role: tuple[str, str]) -> None:
    """The migration grants the function's columns, tables, sequence, schema and database, and nothing more."""
    assert privileges(platform_db.admin_url, function_role[0]) == expected_privileges(platform_db.admin_url)


def test_function_ingests_normally_as_the_role(
    platform_db: PlatformDb, function_role: tuple[str, str], gcs_env: GcsEmulator
) -> None:
    """As the role, the real pipeline locks the row, writes it, records the outcome and notifies (no grant needed)."""
    listener = psycopg2.connect(platform_db.admin_url)
    listener.autocommit = True
    listener.cursor().execute("LISTEN training_metrics")
    gcs_env.create_bucket("ml-artifacts")
    blob = storage.Client().bucket("ml-artifacts").blob("quick_tests/42/training_metrics.json")
    blob.upload_from_string(json.dumps(v1_document(epochs=2)), content_type="application/json")
    ref = ObjectRef("ml-artifacts", blob.name, blob.generation, 1, blob.size, "application/json", None)
    settings = dataclasses.replace(Settings.from_env(), database_url=platform_db.role_url(*function_role))

    result = ingest_object(ref, settings=settings, event_id="evt-role")
    assert (result.outcome, result.reason, result.quicktest_id) == ("ingested", None, platform_db.row_id)
    assert ingest_object(ref, settings=settings, event_id="evt-role-2").outcome == "duplicate"
    select.select([listener], [], [], 5)
    listener.poll()
    assert [json.loads(n.payload)["quicktest_id"] for n in listener.notifies] == [platform_db.row_id]
    listener.close()

    [(history, status, name)] = query(
        platform_db.admin_url,
        "SELECT training_history_json, status, name FROM ml_platform_quicktest WHERE id = %s",
        (platform_db.row_id,),
    )
    assert (history["epochs"], history["source"]["generation"], status, name) == ([0, 1], str(blob.generation), "completed", "qt-42")
    outcomes = query(
        platform_db.admin_url,
        "SELECT outcome FROM training_metrics_ingestions WHERE object_name = %s ORDER BY id",
        (blob.name,),
    )
    assert outcomes == [("ingested",), ("duplicate",)]


REFUSED = {
    "update another column": "UPDATE ml_platform_quicktest SET status = 'failed' WHERE id = {row}",
    "update the mlflow run id": "UPDATE ml_platform_quicktest SET mlflow_run_id = '' WHERE id = {row}",
    "update history and another column": (
        "UPDATE ml_platform_quicktest SET training_history_json = NULL, name = 'x' WHERE id = {row}"),
    "delete a platform row": "DELETE FROM ml_platform_quicktest WHERE id = {row}",
    "insert a platform row": "INSERT INTO ml_platform_quicktest (gcs_artifacts_path) VALUES ('gs://b/x')",
    "read another platform column": "SELECT name FROM ml_platform_quicktest",
    "read the whole platform row": "SELECT * FROM ml_platform_quicktest",
    "read another platform table": "SELECT api_key FROM ml_platform_experiment",
    "delete ingestion records": "DELETE FROM training_metrics_ingestions",
    "rewrite ingestion records": "UPDATE training_metrics_ingestions SET outcome = 'rejected'",
    "truncate the platform table": "TRUNCATE ml_platform_quicktest",
    "truncate our table": "TRUNCATE training_metrics_ingestions",
    "alter the platform table": "ALTER TABLE ml_platform_quicktest ADD COLUMN extra int",
}


@pytest.mark.parametrize("statement", list(REFUSED.values()), ids=list(REFUSED))
def test_role_is_refused_everything_else(platform_db: PlatformDb, as_role, statement: str) -> None:
    """PostgreSQL itself refuses the role any other write, delete, read or schema change."""
    before = query(platform_db.admin_url, "SELECT * FROM ml_platform_quicktest ORDER BY id")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        with as_role, as_role.cursor() as cur:
            cur.execute(statement.format(row=platform_db.row_id))
    assert query(platform_db.admin_url, "SELECT * FROM ml_platform_quicktest ORDER BY id") == before


def test_rerun_is_idempotent_and_takes_back_extra_grants(
    platform_db: PlatformDb, function_role: tuple[str, str]
) -> None:
    """Running the migration again succeeds and removes privileges granted by hand since."""
    role, password = function_role
    conn = psycopg2.connect(platform_db.admin_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f'GRANT DELETE, UPDATE (status) ON ml_platform_quicktest TO "{role}"')
    finally:
        conn.close()
    assert ("relation", "ml_platform_quicktest", "", "DELETE") in privileges(platform_db.admin_url, role)

    grant_function_role(platform_db.admin_url, role, password=password)
    grant_function_role(platform_db.admin_url, role)  # no password: the existing one is kept

    assert privileges(platform_db.admin_url, role) == expected_privileges(platform_db.admin_url)
    conn = psycopg2.connect(platform_db.role_url(role, password))
    try:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            with conn, conn.cursor() as cur:
                cur.execute("DELETE FROM ml_platform_quicktest")
    finally:
        conn.close()


def test_psql_file_grants_the_same_as_the_python_migration(
    platform_db: PlatformDb, function_role: tuple[str, str], scratch_role: Callable[[str], str]
) -> None:
    """migrations/optional/function_role.sql, run by psql, gives a role the very same privileges (twice over)."""
    role = scratch_role("fnsql")
    for _ in range(2):  # re-running it is harmless
        done = subprocess.run(
            [str(psql_path()), "--no-psqlrc", "--quiet", f"--dbname={platform_db.admin_url}",
             "--set=ON_ERROR_STOP=1", f"--set=role={role}", "--set=quicktest_table=ml_platform_quicktest",
             f"--file={SQL_FILE}"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0, done.stderr
    assert privileges(platform_db.admin_url, role) == privileges(platform_db.admin_url, function_role[0])
    assert privileges(platform_db.admin_url, role) == expected_privileges(platform_db.admin_url)


def test_missing_table_is_a_clear_error(platform_db: PlatformDb, scratch_role: Callable[[str], str]) -> None:
    """A platform table that does not exist stops the migration with a message naming it."""
    with pytest.raises(RoleMigrationError, match="no_such_table"):
        grant_function_role(platform_db.admin_url, scratch_role("fnmissing"), quicktest_table="no_such_table")



def stored_password(url: str, role: str) -> str | None:
    return query(url, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))[0][0]


def test_password_is_stored_as_a_scram_verifier(platform_db: PlatformDb, function_role: tuple[str, str]) -> None:
    """The role's password reaches the server only as a SCRAM verifier, never in clear text."""
    stored = stored_password(platform_db.admin_url, function_role[0])
    assert stored.startswith("SCRAM-SHA-256$")
    assert function_role[1] not in stored


def test_migrate_option_creates_the_role_with_the_password_from_the_environment(
    platform_db: PlatformDb, scratch_role: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--function-role NAME (as metrics-ingest migrate parses it) makes the role, its password from the environment."""
    parser = argparse.ArgumentParser()
    add_function_role_option(parser)
    assert apply_function_role_option(parser.parse_args([]), platform_db.admin_url,
                                      quicktest_table="ml_platform_quicktest") is None

    role = scratch_role("fncli")
    monkeypatch.setenv(PASSWORD_ENV, "from-the-environment")
    args = parser.parse_args(["--function-role", role])
    assert apply_function_role_option(args, platform_db.admin_url, quicktest_table="ml_platform_quicktest") == role
    assert privileges(platform_db.admin_url, role) == expected_privileges(platform_db.admin_url)
    assert stored_password(platform_db.admin_url, role).startswith("SCRAM-SHA-256$")


@pytest.mark.parametrize("how", ["python", "psql"])
def test_public_defaults_are_taken_from_the_role_but_kept_for_table_owners(
    scratch_database: Callable[[str], str], scratch_role: Callable[[str], str], how: str
) -> None:
    """With PostgreSQL 14's defaults (PUBLIC may CREATE in schema public and make TEMP tables), the role can
    afterwards do neither, while the platform's own (non-superuser) table owner still can."""
    url = scratch_database("fnpublic")
    owner, owner_password = scratch_role("django"), "pw-django"
    query(url, f'CREATE ROLE "{owner}" LOGIN PASSWORD \'{owner_password}\'')
    create_dev_platform_table(url)
    apply_migrations(url)
    query(url, f'ALTER TABLE ml_platform_quicktest OWNER TO "{owner}"')
    query(url, "GRANT CREATE ON SCHEMA public TO PUBLIC")  # PostgreSQL <= 14's default
    role, password = scratch_role("fnpub"), "pw-fnpub"
    query(url, f'CREATE ROLE "{role}" LOGIN PASSWORD \'{password}\'')
    # Before: PUBLIC's defaults reach the role too.
    query(with_params(url, user=role, password=password), "CREATE TEMP TABLE before_t (x int)")

    if how == "python":
        grant_function_role(url, role)
    else:
        done = subprocess.run(
            [str(psql_path()), "--no-psqlrc", "--quiet", f"--dbname={url}", "--set=ON_ERROR_STOP=1",
             f"--set=role={role}", "--set=quicktest_table=ml_platform_quicktest", f"--file={SQL_FILE}"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0, done.stderr

    as_role = with_params(url, user=role, password=password)
    for statement in ("CREATE TEMP TABLE t (x int)", "CREATE TABLE public.t (x int)", "CREATE TABLE t2 (x int)"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            query(as_role, statement)
    assert query(url, "SELECT has_database_privilege('public', current_database(), 'TEMPORARY'),"
                      " has_schema_privilege('public', 'public', 'CREATE')") == [(False, False)]
    # The platform's owner (Django) keeps what it used: its migrations still create tables.
    as_owner = with_params(url, user=owner, password=owner_password)
    query(as_owner, "CREATE TABLE public.django_new_table (x int)")
    query(as_owner, "CREATE TEMP TABLE scratch (x int)")
    # The role still does its job's reads.
    conn = psycopg2.connect(as_role)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM training_metrics_ingestions")
            assert cur.fetchone() == (0,)
    finally:
        conn.close()
