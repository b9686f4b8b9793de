"""Scratch databases on the session's PostgreSQL, for tests that need their own.

The session's ``empty_database_url`` is shared by every area's tests (the
migrations are applied to it); tests that create tables of their own, or
stand-ins for tables another area owns, work in a scratch database instead,
dropped at the end of the session. Roles are server-wide: ``scratch_role``
names are unique and dropped at the end too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from metrics_ingest.migrations import create_dev_platform_table  # noqa: F401  (re-exported for the tests)
from tests.support.postgres import with_params

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def scratch_database(pg_admin_url: str, scratch_role: Callable[[str], str]) -> Iterator[Callable[[str], str]]:
    """A factory: ``scratch_database("purpose")`` creates a fresh database and returns its superuser URL."""
    # (Depends on scratch_role so that the databases are dropped before the roles.)
    created: list[str] = []
    admin = psycopg2.connect(pg_admin_url)
    admin.autocommit = True

    def create(purpose: str) -> str:
        name = f"scratch_{purpose}_{uuid.uuid4().hex[:8]}"
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return with_params(pg_admin_url, dbname=name)

    try:
        yield create
    finally:
        with admin.cursor() as cur:
            for name in created:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


@pytest.fixture(scope="session")
def scratch_role(pg_admin_url: str) -> Iterator[Callable[[str], str]]:
    """A factory of unique role names; the roles are dropped at the end of the session
    (after the scratch databases, where their privileges lived, are gone)."""
    names: list[str] = []

    def make(purpose: str) -> str:
        names.append(f"{purpose}_{uuid.uuid4().hex[:8]}")
        return names[-1]

    yield make
    admin = psycopg2.connect(pg_admin_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            for name in names:
                cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    finally:
        admin.close()


def psql_path() -> Path:
    """The psql that pgserver ships (same version as the server; no apt needed)."""
    import pgserver

    path = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    assert path.exists(), f"pgserver's psql is missing at {path}"
    return path
