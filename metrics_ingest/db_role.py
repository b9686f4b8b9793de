"""The function's least-privilege database role (opt-in migration).

The Cloud Function needs very little of the platform's database: find the
QuickTest row by ``gcs_artifacts_path`` and lock it, read the ``source`` it
stored last time, write ``training_history_json``, and insert and read its own
``training_metrics_ingestions`` records. :func:`grant_function_role` makes a
login role that can do exactly that and nothing else, so a bug (or a hostile
file) in the function cannot touch the rest of the platform.

Privileges granted (everything else is refused by PostgreSQL):

- platform table: ``SELECT (id, gcs_artifacts_path, training_history_json)``,
  ``UPDATE (training_history_json)`` (``SELECT ... FOR UPDATE`` needs UPDATE on
  one column; ``UPDATE ... WHERE id = ...`` needs SELECT on ``id``);
- ``training_metrics_ingestions``: ``SELECT, INSERT``, and ``USAGE`` on its id
  sequence;
- ``CONNECT`` on the database and ``USAGE`` on the tables' schemas.

What PUBLIC (every role) gets by default and the function does not need is
taken from PUBLIC: ``TEMPORARY`` on the database (temporary tables), and
``CREATE`` on schema ``public``, which PostgreSQL up to 14 (still common on
Cloud SQL) grants to PUBLIC. Roles that may have relied on those grants, the
non-superuser owners of tables in ``public`` and the role running this, get
them explicitly first, so Django's migrations keep working. Only the owner of
the database or schema (or a superuser) can revoke from PUBLIC; otherwise a
warning says which statement a DBA should run.

It is idempotent and convergent: each run first revokes whatever the role held
on those two tables and the sequence, then grants the list above, in one
transaction. Run it as the owner of the tables (on Cloud SQL, the Django
database user), since only an owner can grant on them.

The same migration as a psql script for DBAs: ``migrations/optional/function_role.sql``.

Example::

    from metrics_ingest.db_role import grant_function_role
    grant_function_role("postgresql://django@/platform?host=/cloudsql/p:r:i",
                        "metrics_ingest_fn", password=os.environ["FUNCTION_ROLE_PASSWORD"])
"""

from __future__ import annotations

import argparse
import logging
import os

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import encrypt_password

from ingest.config import QUICKTEST_TABLE

log = logging.getLogger(__name__)

INGESTIONS_TABLE = "training_metrics_ingestions"
# The platform table's columns the function reads (match, lock, compare the stored
# source generation) and the one it writes.
READ_COLUMNS = ("id", "gcs_artifacts_path", "training_history_json")
WRITE_COLUMNS = ("training_history_json",)
# Environment variable the CLI reads the role's password from (never a flag).
PASSWORD_ENV = "FUNCTION_ROLE_PASSWORD"


class RoleMigrationError(RuntimeError):
    """The role cannot be set up (a table is missing, the role name is invalid)."""


def grant_function_role(
    database_url: str | None,
    role: str,
    *,
    quicktest_table: str = QUICKTEST_TABLE,
    password: str | None = None,
) -> None:
    """Create (if missing) the function's login role and grant it exactly what it needs.

    ``password``, when given, is set on the role as a SCRAM verifier computed
    here, so the clear text never reaches the server (or its statement log).
    Without it an existing role keeps its password; a new one has none (set it
    later, e.g. with this function or ``\\password`` in psql). ``database_url``
    None means the libpq ``PG*`` variables.
    """
    if not role or len(role) > 63:
        raise RoleMigrationError(f"invalid role name {role!r}: 1 to 63 characters")
    conn = psycopg2.connect(database_url or "")
    try:
        with conn:  # one transaction: the role's privileges change all at once
            with conn.cursor() as cur:
                _grant(cur, conn, role, quicktest_table, password)
    finally:
        conn.close()


def add_function_role_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--function-role NAME`` to a command's parser (``metrics-ingest migrate``)."""
    parser.add_argument(
        "--function-role",
        metavar="NAME",
        default=None,
        help="also create or refresh the Cloud Function's least-privilege login role NAME"
        f" (its password from ${PASSWORD_ENV} when set; run as the tables' owner)",
    )


def apply_function_role_option(
    args: argparse.Namespace, database_url: str | None, *, quicktest_table: str
) -> str | None:
    """Run :func:`grant_function_role` when ``--function-role`` was given; the role's name, or None.

    The password comes from the environment (``FUNCTION_ROLE_PASSWORD``), never a flag.
    """
    if not args.function_role:
        return None
    grant_function_role(
        database_url,
        args.function_role,
        quicktest_table=quicktest_table,
        password=os.environ.get(PASSWORD_ENV) or None,
    )
    return args.function_role


def _grant(cur, conn, role: str, quicktest_table: str, password: str | None) -> None:
    role_id = sql.Identifier(role)
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    if cur.fetchone() is None:
        cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role_id))
        log.info("created role %s", role)
    if password is not None:
        verifier = encrypt_password(password, role, conn)
        cur.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(role_id, sql.Literal(verifier)))

    platform = _resolve(cur, conn, quicktest_table, "the platform table (QUICKTEST_TABLE)")
    ingestions = _resolve(cur, conn, INGESTIONS_TABLE, "our table (run `metrics-ingest migrate` first)")
    platform_id = sql.Identifier(*platform)
    ingestions_id = sql.Identifier(*ingestions)

    # Revoking first makes a re-run converge: anything granted by hand since goes.
    # (Revoking a table privilege revokes the column privileges as well.)
    for table in (platform_id, ingestions_id):
        cur.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(table, role_id))
    cur.execute(
        sql.SQL("GRANT SELECT ({}), UPDATE ({}) ON TABLE {} TO {}").format(
            sql.SQL(", ").join(map(sql.Identifier, READ_COLUMNS)),
            sql.SQL(", ").join(map(sql.Identifier, WRITE_COLUMNS)),
            platform_id,
            role_id,
        )
    )
    cur.execute(sql.SQL("GRANT SELECT, INSERT ON TABLE {} TO {}").format(ingestions_id, role_id))

    cur.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = pg_get_serial_sequence(%s, 'id')::regclass",
        (ingestions_id.as_string(conn),),
    )
    sequence = cur.fetchone()
    if sequence is not None:  # bigserial / identity id: INSERT draws from it
        sequence_id = sql.Identifier(*sequence)
        cur.execute(sql.SQL("REVOKE ALL ON SEQUENCE {} FROM {}").format(sequence_id, role_id))
        cur.execute(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sequence_id, role_id))

    for schema in sorted({platform[0], ingestions[0]}):
        cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), role_id))
    cur.execute("SELECT current_database()")
    database = cur.fetchone()[0]
    cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), role_id))

    _revoke_public_defaults(cur, role, database, sorted({platform[0], ingestions[0]}))
    _warn_if_broader(cur, role)


# Roles that may have relied on PUBLIC's default grants: owners of tables in
# schema public and the role running the migration (superusers need nothing).
_KEEPERS = """
SELECT DISTINCT r.rolname FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_roles r ON r.oid = c.relowner
 WHERE n.nspname = 'public' AND NOT r.rolsuper AND r.rolname <> %(role)s
UNION
SELECT rolname FROM pg_roles WHERE rolname = current_user AND NOT rolsuper AND rolname <> %(role)s
ORDER BY 1
"""


def _revoke_public_defaults(cur, role: str, database: str, schemas: list[str]) -> None:
    """Take TEMPORARY on the database and CREATE on schema public from PUBLIC (and from the role)."""
    role_id, database_id = sql.Identifier(role), sql.Identifier(database)
    cur.execute("SELECT to_regnamespace('public') IS NOT NULL")
    has_public = cur.fetchone()[0]
    cur.execute(
        "SELECT has_database_privilege('public', current_database(), 'TEMPORARY'),"
        " CASE WHEN to_regnamespace('public') IS NOT NULL THEN has_schema_privilege('public', 'public', 'CREATE') END"
    )
    public_temp, public_create = cur.fetchone()
    cur.execute(_KEEPERS, {"role": role})
    keepers = [sql.Identifier(name) for (name,) in cur.fetchall()]
    for keeper in keepers:
        if public_temp:
            cur.execute(sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(database_id, keeper))
        if public_create:
            cur.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(keeper))
    # A non-owner's REVOKE is a warning, not an error: checked below instead.
    cur.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC, {}").format(database_id, role_id))
    for schema in sorted(set(schemas) | ({"public"} if has_public else set())):
        if schema == "public":
            cur.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC, {}").format(role_id))
        else:
            cur.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(sql.Identifier(schema), role_id))

    cur.execute(
        "SELECT has_database_privilege(%(role)s, current_database(), 'TEMPORARY'),"
        " coalesce(has_schema_privilege(%(role)s, to_regnamespace('public')::oid, 'CREATE'), false)",
        {"role": role},
    )
    can_temp, can_create = cur.fetchone()
    if can_temp:
        log.warning(
            "role %s can still create temporary tables (PUBLIC keeps TEMPORARY): as the database's owner, run"
            " REVOKE TEMPORARY ON DATABASE %s FROM PUBLIC",
            role,
            database_id.as_string(cur.connection),
        )
    if can_create:
        log.warning(
            "role %s can still create tables in schema public (PUBLIC keeps CREATE): as the schema's owner, run"
            " REVOKE CREATE ON SCHEMA public FROM PUBLIC",
            role,
        )


def _resolve(cur, conn, table: str, what: str) -> tuple[str, str]:
    """(schema, name) of a table named as one identifier (found on the search_path) or as schema.table."""
    from ingest.config import quicktest_table_parts

    cur.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass(%s)",
        (sql.Identifier(*quicktest_table_parts(table)).as_string(conn),),
    )
    row = cur.fetchone()
    if row is None:
        raise RoleMigrationError(f"table {table!r} ({what}) does not exist in this database")
    return row[0], row[1]


def _warn_if_broader(cur, role: str) -> None:
    """Say so when the role holds more than these grants through its attributes or memberships.

    On Cloud SQL a user made with ``gcloud sql users create`` is a member of
    ``cloudsqlsuperuser``; this migration does not take that away.
    """
    cur.execute(
        "SELECT r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolbypassrls,"
        " array(SELECT b.rolname FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid"
        "       WHERE m.member = r.oid ORDER BY 1)"
        " FROM pg_roles r WHERE r.rolname = %s",
        (role,),
    )
    powerful, memberships = cur.fetchone()
    if powerful or memberships:
        log.warning(
            "role %s has more than the function needs (attributes: %s, member of: %s);"
            " create it with this migration instead of `gcloud sql users create`",
            role,
            "superuser/createrole/createdb/bypassrls" if powerful else "none",
            ", ".join(memberships) or "none",
        )
