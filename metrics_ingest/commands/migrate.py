"""``metrics-ingest migrate``: apply migrations/ to the configured database (idempotent).

Example::

    $ DATABASE_URL=postgresql://localhost/platform metrics-ingest migrate
    applied 0001.create-ingestions
    $ metrics-ingest migrate --database-url postgresql://localhost/platform
    up to date
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from metrics_ingest.migrations import apply_migrations


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
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    database_url = args.database_url or os.environ.get("DATABASE_URL") or None
    import psycopg2

    try:
        applied = apply_migrations(database_url)
    except psycopg2.Error as exc:  # unreachable server, bad credentials, a failing statement
        print(f"migrate failed: {str(exc).strip()}", file=sys.stderr)
        return 1
    print("\n".join(f"applied {m}" for m in applied) if applied else "up to date")
    return 0
