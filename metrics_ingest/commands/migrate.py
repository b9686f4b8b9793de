"""``metrics-ingest migrate``: apply migrations/ to the configured database (idempotent).

Example::

    $ DATABASE_URL=postgresql://localhost/platform metrics-ingest migrate
    applied 0001.create-ingestions
    $ metrics-ingest migrate --database-url postgresql://localhost/platform
    up to date
    $ FUNCTION_ROLE_PASSWORD=... metrics-ingest migrate --function-role metrics_ingest_fn
    up to date
    function role metrics_ingest_fn: privileges granted
    $ metrics-ingest migrate --rollback
    rolled back 0001.create-ingestions
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import psycopg2

from ingest.config import Settings, check_database_url
from metrics_ingest.db_role import RoleMigrationError, add_function_role_option, apply_function_role_option
from metrics_ingest.migrations import apply_migrations, rollback_migrations


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "migrate",
        help="apply the production migrations (training_metrics_ingestions, lookup index)",
        description="Apply migrations/ to the database (idempotent). The platform table is never altered; "
        "an index on its gcs_artifacts_path is created when missing (QUICKTEST_TABLE names the table).",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL URL or libpq DSN (default: $DATABASE_URL, else libpq's PG* variables)",
    )
    add_function_role_option(parser)
    parser.add_argument(
        "--rollback",
        action="store_true",
        help="roll back every applied migration instead: drops training_metrics_ingestions (the ingestion log); "
        "the platform table and its data are untouched",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    database_url = args.database_url or os.environ.get("DATABASE_URL") or None
    try:
        # Before any connection: a malformed URL is one line naming the setting
        # (never its value, which holds the password), not yoyo's traceback or a
        # misparsed host's "connection refused".
        check_database_url(database_url, "--database-url" if args.database_url else "DATABASE_URL")
        quicktest_table = Settings.quicktest_table_from_env()
    except ValueError as exc:
        print(f"migrate: error: {exc}", file=sys.stderr)
        return 2

    if args.rollback:
        if args.function_role:
            print("migrate: --rollback and --function-role do not go together", file=sys.stderr)
            return 2
        try:
            rolled_back = rollback_migrations(database_url)
        except ValueError as exc:  # a PG* variable yoyo cannot use
            print(f"migrate: error: {exc}", file=sys.stderr)
            return 2
        except psycopg2.Error as exc:
            print(f"migrate --rollback failed: {_message(exc, database_url)}{_unset_hint(database_url, exc)}",
                  file=sys.stderr)
            return 1
        print("\n".join(f"rolled back {m}" for m in rolled_back) if rolled_back else "nothing to roll back")
        return 0
    try:
        applied = apply_migrations(database_url)
        role = apply_function_role_option(args, database_url, quicktest_table=quicktest_table)
    except ValueError as exc:  # a PG* variable yoyo cannot use
        print(f"migrate: error: {exc}", file=sys.stderr)
        return 2
    except (psycopg2.Error, RoleMigrationError) as exc:  # unreachable server, bad credentials, missing table
        print(f"migrate failed: {_message(exc, database_url)}{_unset_hint(database_url, exc)}", file=sys.stderr)
        return 1
    print("\n".join(f"applied {m}" for m in applied) if applied else "up to date")
    if role:
        print(f"function role {role}: privileges granted")
    return 0


def _message(exc: BaseException, database_url: str | None) -> str:
    """The driver's message with the password masked, should libpq ever echo it."""
    text = str(exc).strip()
    password = None
    if database_url:
        from psycopg2.extensions import parse_dsn

        password = parse_dsn(database_url).get("password")  # parses: checked above
    for secret in (password, os.environ.get("PGPASSWORD"), os.environ.get("FUNCTION_ROLE_PASSWORD")):
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


def _unset_hint(database_url: str | None, exc: BaseException) -> str:
    """Without DATABASE_URL libpq tried its defaults (a local socket): say so,
    or the error reads as if the configured server were down."""
    if database_url or not isinstance(exc, psycopg2.OperationalError):
        return ""
    return (
        "\n(DATABASE_URL is not set, so libpq's defaults were used (PG* variables, else the local socket): "
        "set DATABASE_URL or pass --database-url)"
    )
