"""Post-apply hook (run by yoyo after every `metrics-ingest migrate`): an index
on the platform table's gcs_artifacts_path, which the function's row lookup
needs on a large table.

The table belongs to Django and its name is configurable (QUICKTEST_TABLE),
so this is not a versioned migration: it checks, each time, that some valid
index leads with gcs_artifacts_path and otherwise builds one CONCURRENTLY
(no write lock on the platform's table). It never changes the table's
columns, constraints or data. A table that does not exist yet is skipped
(run migrate again once Django has created it).
"""

import os
import sys

from psycopg2 import sql
from yoyo import step

__transactional__ = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

INDEX_PREFIX = "metrics_ingest_gcs_path_"


def ensure_path_index(conn):
    from ingest.config import Settings, quicktest_table_parts

    table = Settings.quicktest_table_from_env()  # the one place settings are read
    parts = quicktest_table_parts(table)  # "table" or "schema.table"
    schema = parts[:-1]  # the index lives in the table's schema
    # A short, stable index name whatever the table is called.
    import hashlib

    index = INDEX_PREFIX + hashlib.sha1(table.encode()).hexdigest()[:12]
    cur = conn.cursor()
    cur.execute("SELECT to_regclass(%s)", (sql.Identifier(*parts).as_string(cur),))
    (regclass,) = cur.fetchone()
    if regclass is None:
        print(f"post-apply: table {table!r} does not exist yet; gcs_artifacts_path index skipped", file=sys.stderr)
        return
    cur.execute(
        """
        SELECT i.relname, x.indisvalid
          FROM pg_index x
          JOIN pg_class i ON i.oid = x.indexrelid
          JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
         WHERE x.indrelid = %s::regclass AND a.attname = 'gcs_artifacts_path'
        """,
        (sql.Identifier(*parts).as_string(cur),),
    )
    indexes = cur.fetchall()
    if any(valid for _, valid in indexes):
        return
    for name, _ in indexes:
        if name == index:  # a failed CONCURRENTLY build leaves an invalid index
            cur.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(*schema, name)))
    cur.execute(
        sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} (gcs_artifacts_path)").format(
            sql.Identifier(index), sql.Identifier(*parts)
        )
    )


steps = [step(ensure_path_index)]
