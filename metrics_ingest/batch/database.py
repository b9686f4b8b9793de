"""The platform database pre-check every batch runs once before its first item.

Done before listing or selecting, so a wrong or missing DATABASE_URL is one
clear message instead of every item failing three times.

Example::

    check_database(Settings.from_env())   # SetupError with its exit status, or nothing
"""

from __future__ import annotations

from ingest.config import Settings
from metrics_ingest.batch.errors import SetupError, first_line


def check_database(settings: Settings, *, tables: tuple[str, ...] = ()) -> None:
    """Connect once; check that the migrations ran, the platform table exists and ``tables``
    (our own, created by a later migration) exist too. Raises SetupError."""
    import psycopg2
    from psycopg2 import sql

    where = "DATABASE_URL" if settings.database_url else "DATABASE_URL is not set, so libpq's defaults"
    hint = "set DATABASE_URL or pass --database-url"
    try:
        conn = psycopg2.connect(settings.database_url or "", connect_timeout=settings.db_connect_timeout)
    except psycopg2.ProgrammingError as exc:  # a malformed DSN
        raise SetupError(f"DATABASE_URL is not a valid connection string: {first_line(exc)}", 2) from None
    except psycopg2.Error as exc:
        raise SetupError(
            f"cannot connect to the database ({where}): {first_line(exc)}; {hint}",
            1 if settings.database_url else 2,
        ) from None
    try:
        with conn, conn.cursor() as cur:
            table = sql.Identifier(*settings.quicktest_table_name).as_string(conn)
            cur.execute(
                "SELECT to_regclass('training_metrics_ingestions'), to_regclass(%s), "
                "array(SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NULL)",
                (table, list(tables)),
            )
            ingestions, quicktest, missing = cur.fetchone()
    except psycopg2.Error as exc:
        raise SetupError(f"cannot read the database ({where}): {first_line(exc)}") from None
    finally:
        conn.close()
    if ingestions is None or missing:
        name = "training_metrics_ingestions" if ingestions is None else missing[0]
        raise SetupError(
            f"this database has no {name} table: run `metrics-ingest migrate` first (database: {where})", 2
        )
    if quicktest is None:
        raise SetupError(
            f"this database has no table {settings.quicktest_table!r} (QUICKTEST_TABLE names the platform's "
            f"QuickTest table; database: {where})",
            2,
        )
