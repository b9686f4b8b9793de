"""Driver errors translated by SQLSTATE class in ingest.db, against the real PostgreSQL:
the value's fault is rejected, the database's fault is retried, a dead pooled connection is replaced."""

from __future__ import annotations

import psycopg2
import pytest

from ingest import db
from ingest.errors import Rejected, TransientError
from ingest.pipeline import ingest_object
from ingest.objects import ObjectRef
from tests.support.documents import dumps, v1_document
from tests.support.platform_db import Artifacts, PlatformDb


def _execute(settings: object, statement: str, params: tuple = ()) -> None:
    with db.connection(settings) as conn, conn, conn.cursor() as cur:
        cur.execute(statement, params)


def _backend_pid(settings: object) -> int:
    with db.connection(settings) as conn, conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


def _terminate(platform_db: PlatformDb, pid: int) -> None:
    admin = platform_db.connect()
    try:
        with admin, admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        admin.close()


def test_program_limit_exceeded_is_rejected_with_a_readable_reason(platform_db: PlatformDb) -> None:
    """SQLSTATE class 54 (a value over a PostgreSQL limit) is the value's fault: Rejected, one line, no retry."""
    settings = platform_db.settings(db_pool_size=1)
    with pytest.raises(Rejected) as caught:
        _execute(settings, "SELECT repeat('x', 1 << 30)")  # 54000, refused before anything is allocated
    assert caught.value.reason == (
        "PostgreSQL cannot store the document: it exceeds a PostgreSQL limit (requested length too large)"
    )
    assert isinstance(caught.value.__cause__, psycopg2.errors.ProgramLimitExceeded)
    _execute(settings, "SELECT 1")  # the connection was fine and is reused


def test_data_exception_is_rejected_on_one_line(platform_db: PlatformDb) -> None:
    """SQLSTATE class 22 (PostgreSQL's jsonb refusing an escaped NUL) is Rejected with the first line only."""
    settings = platform_db.settings(db_pool_size=1)
    with pytest.raises(Rejected) as caught:
        _execute(settings, "SELECT %s::jsonb", ('{"error": "a\\u0000b"}',))
    reason = caught.value.reason
    assert reason.startswith("PostgreSQL cannot store the document: a value it refuses (")
    assert "unsupported Unicode escape sequence" in reason and "\n" not in reason


def test_database_faults_are_transient_and_keep_the_connection(platform_db: PlatformDb) -> None:
    """A cancelled statement (57014, statement_timeout) is retried, and its healthy connection stays pooled."""
    settings = platform_db.settings(db_pool_size=1)
    pid = _backend_pid(settings)
    invalidations = db.pool(settings).invalidations
    with pytest.raises(TransientError, match=r"QueryCanceled 57014\): canceling statement due to statement timeout"):
        _execute(settings, "SET LOCAL statement_timeout = 50; SELECT pg_sleep(5)")
    assert _backend_pid(settings) == pid
    assert db.pool(settings).invalidations == invalidations


def test_missing_table_is_a_transient_schema_problem(platform_db: PlatformDb) -> None:
    """An undefined table (42P01: migrations not run, wrong QUICKTEST_TABLE) is retried with a hint, not rejected."""
    settings = platform_db.settings(db_pool_size=1)
    with pytest.raises(TransientError, match=r"run `metrics-ingest migrate`, check QUICKTEST_TABLE\): relation"):
        _execute(settings, "SELECT * FROM no_such_table_here")


def test_terminated_pooled_connection_invalidates_the_pool_and_the_step_runs_again(platform_db: PlatformDb) -> None:
    """A pooled connection killed by the server: run() retries the step once on a fresh connection, and the pool is invalidated."""
    settings = platform_db.settings(db_pool_size=2)
    old_pid = _backend_pid(settings)
    _terminate(platform_db, old_pid)
    pool = db.pool(settings)
    before = pool.invalidations
    attempts: list[int] = []

    def step(conn: object) -> int:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            attempts.append(1)
            return cur.fetchone()[0]

    new_pid = db.run(settings, step)
    assert new_pid != old_pid
    assert len(attempts) == 1  # the first try died on its statement, before it could count
    assert pool.invalidations == before + 1


def test_connection_lost_outside_run_is_transient(platform_db: PlatformDb) -> None:
    """Without run(), a pooled connection the server killed raises a TransientError (the event is retried, nothing lost)."""
    settings = platform_db.settings(db_pool_size=1)
    _terminate(platform_db, _backend_pid(settings))
    with pytest.raises(db.ConnectionLost, match="database error"):
        _execute(settings, "SELECT 1")
    _execute(settings, "SELECT 1")  # the next checkout opens a fresh connection


def test_file_postgresql_refuses_is_recorded_rejected(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """A schema-valid file PostgreSQL cannot store is recorded 'rejected' with a reason and the row is untouched."""
    row_id, folder = platform_db.new_quicktest()
    doc = v1_document(2)
    doc["error"] = "crashed at \x00 byte"  # serialized as \u0000, which jsonb refuses
    resource = artifacts.upload(folder, dumps(doc))
    ref = ObjectRef.from_resource(resource)
    result = ingest_object(ref, settings=platform_db.settings())
    assert result.outcome == "rejected" and result.reason and "\n" not in result.reason
    assert platform_db.history(row_id) is None
    [record] = platform_db.ingestions(ref.bucket, ref.name)
    assert (record["outcome"], record["reason"]) == ("rejected", result.reason)
