"""Apply ``migrations/`` with yoyo-migrations (idempotent).

The production migrations live in ``migrations/`` at the repository root
(``0001.create-ingestions.sql`` and its rollback, applied once each and
tracked in yoyo's own tables) plus a ``post-apply.py`` hook that yoyo runs
after each apply: it makes sure the platform table has an index on
``gcs_artifacts_path``. ``migrations/dev/`` (the platform table for local
use) is never applied from here.

Example::

    applied = apply_migrations("postgresql://localhost/platform")   # ['0001.create-ingestions']
    apply_migrations("postgresql://localhost/platform")             # [] (already applied)
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, urlencode

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
DEV_PLATFORM_TABLE_SQL = MIGRATIONS_DIR / "dev" / "ml_platform_quicktest.sql"


def yoyo_uri(database_url: str | None) -> str:
    """yoyo wants a URL; DATABASE_URL may also be a libpq DSN (``host=/cloudsql/... dbname=...``)
    or unset (libpq's ``PG*`` variables)."""
    if database_url and database_url.split("://", 1)[0] in ("postgres", "postgresql"):
        return "postgresql://" + database_url.split("://", 1)[1]
    from psycopg2.extensions import parse_dsn

    params = parse_dsn(database_url or "")
    user = params.pop("user", None) or os.environ.get("PGUSER")
    password = params.pop("password", None) or os.environ.get("PGPASSWORD")
    dbname = params.pop("dbname", None) or os.environ.get("PGDATABASE") or user or ""
    host = params.pop("host", None) or os.environ.get("PGHOST")
    port = params.pop("port", None) or os.environ.get("PGPORT")
    if port and not all(p.strip().isdigit() for p in port.split(",")):
        raise ValueError("Invalid value for PGPORT (or the DSN's port): the port is not a number.")
    netloc = ""
    if user:
        netloc = quote(user, safe="") + (":" + quote(password, safe="") if password else "") + "@"
    if host and not host.startswith("/"):
        netloc += host + (f":{port}" if port else "")
    else:
        if host:  # a Unix socket folder (Cloud SQL: /cloudsql/PROJECT:REGION:INSTANCE)
            params["host"] = host
        if port:
            params["port"] = port
    query = f"?{urlencode(params)}" if params else ""
    return f"postgresql://{netloc}/{quote(dbname, safe='')}{query}"


def apply_migrations(database_url: str | None, migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; returns the ids applied (empty when up to date).

    The post-apply hook (the ``gcs_artifacts_path`` index) runs every time, so
    a platform table created after the first run still gets its index.
    """
    from yoyo import get_backend, read_migrations

    backend = get_backend(yoyo_uri(database_url))
    try:
        migrations = read_migrations(str(migrations_dir))
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)  # runs the post-apply hook when something was applied
            if not pending:
                backend.run_post_apply(migrations)
        return [m.id for m in pending]
    finally:
        backend.connection.close()


def rollback_migrations(database_url: str | None, migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Roll back every applied migration (newest first); returns the ids rolled back.

    This drops ``training_metrics_ingestions`` (the ingestion log). The platform
    table and its data are never touched; the lookup index stays (it is cheap
    and harmless, and may predate us).
    """
    from yoyo import get_backend, read_migrations

    backend = get_backend(yoyo_uri(database_url))
    try:
        migrations = read_migrations(str(migrations_dir))
        with backend.lock():
            applied = backend.to_rollback(migrations)
            backend.rollback_migrations(applied)
        return [m.id for m in applied]
    finally:
        backend.connection.close()


def create_dev_platform_table(database_url: str | None, table: str | None = None) -> None:
    """DEV/TEST ONLY: create the platform table as the Django model does.

    ``table`` renames it (QUICKTEST_TABLE: a name or schema.table, each part quoted as an identifier).
    """
    import psycopg2
    from psycopg2 import sql

    from ingest.config import QUICKTEST_TABLE, quicktest_table_parts

    text = DEV_PLATFORM_TABLE_SQL.read_text()
    conn = psycopg2.connect(database_url or "")
    try:
        with conn, conn.cursor() as cur:
            if table and table != QUICKTEST_TABLE:
                template = text.replace("{", "{{").replace("}", "}}").replace("ml_platform_quicktest", "{table}")
                statement = sql.SQL(template).format(table=sql.Identifier(*quicktest_table_parts(table)))
                cur.execute(statement)
            else:
                cur.execute(text)
    finally:
        conn.close()
