"""One real PostgreSQL per test session.

``TEST_DATABASE_URL`` points at an existing server (a superuser URL); without
it, ``pgserver`` starts one from pip in a temporary folder. Each session
works in a fresh database of its own on that server.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A superuser connection URL to a running PostgreSQL server."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    import pgserver

    # Not under pytest's basetemp: pgserver (running postgres as its own user
    # when we are root) opens the folders above pgdata, and every other pytest
    # session on the machine resets /tmp/pytest-of-USER to 0700 at start.
    pgdata = Path(tempfile.mkdtemp(prefix="metrics-ingest-pg-"))
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


@pytest.fixture(scope="session")
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for this session (dropped afterwards)."""
    name = f"metrics_test_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(pg_admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_params(pg_admin_url, dbname=name)
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


def with_params(url: str, **params: str) -> str:
    """The same server URL with some connection parameters replaced (dbname, user, ...)."""
    merged = parse_dsn(url)
    merged.update(params)
    return make_dsn(**merged)


def query(url: str, statement: str, params: tuple = ()) -> list[tuple]:
    """Run one statement in its own connection and transaction; its rows."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()
