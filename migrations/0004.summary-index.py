"""An index on the platform table for ranking runs by their best val_loss from the
summaries alone (docs/platform.md, "Ranking runs"): with it, a page of the
ranking reads the index and the page's rows, not every history.

The index holds the jsonb number at summary.val_loss.best for the rows that
have one (a partial index: runs that never logged val_loss have null there,
rows without a summary nothing), exactly what the documented query filters
and orders by; neither expression fails on any jsonb, so no write of the
platform's table can be refused because of it. (A page still reads each of
its rows' history once, to return the value: PostgreSQL cannot answer an
expression from the index alone.)
Built CONCURRENTLY (no write lock on the platform's table); the table's
columns, constraints and data are never changed. The table name comes from
QUICKTEST_TABLE, as in post-apply.py. A table that does not exist yet is
skipped with a warning; once Django has created it, build the index by hand:

    CREATE INDEX CONCURRENTLY metrics_ingest_best_val_loss ON ml_platform_quicktest
        ((training_history_json #> '{summary,val_loss,best}'))
        WHERE jsonb_typeof(training_history_json #> '{summary,val_loss,best}') = 'number';

Rollback drops the index.
"""

import hashlib
import os
import sys

from psycopg2 import sql
from yoyo import step

__transactional__ = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

INDEX_PREFIX = "metrics_ingest_best_val_loss_"
# Exactly the ORDER BY and WHERE of tests/django_platform/ml_platform/ranking.sql
# (the planner matches them structurally).
EXPRESSION = "(training_history_json #> '{summary,val_loss,best}')"
PREDICATE = "jsonb_typeof(training_history_json #> '{summary,val_loss,best}') = 'number'"


def _target(cur):
    from ingest.config import quicktest_table_parts

    table = os.environ.get("QUICKTEST_TABLE") or "ml_platform_quicktest"
    parts = quicktest_table_parts(table)
    index = INDEX_PREFIX + hashlib.sha1(table.encode()).hexdigest()[:12]
    cur.execute("SELECT to_regclass(%s)", (sql.Identifier(*parts).as_string(cur),))
    exists = cur.fetchone()[0] is not None
    # Created in the table's own schema; named with it to look it up or drop it.
    return table, parts, index, sql.Identifier(*parts[:-1], index), exists


def create_index(conn):
    cur = conn.cursor()
    table, parts, name, index, exists = _target(cur)
    if not exists:
        print(f"0004: table {table!r} does not exist yet; summary index skipped", file=sys.stderr)
        return
    # A failed CONCURRENTLY build leaves an invalid index behind: build it again.
    cur.execute("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (index.as_string(cur),))
    row = cur.fetchone()
    if row and row[0]:
        cur.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(index))
    cur.execute(
        sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ").format(sql.Identifier(name), sql.Identifier(*parts))
        + sql.SQL("(" + EXPRESSION + ") WHERE " + PREDICATE)
    )


def drop_index(conn):
    cur = conn.cursor()
    _, _, _, index, _ = _target(cur)
    cur.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(index))


steps = [step(create_index, drop_index)]
