"""PostgreSQL access: the row lookup, the guarded write and the ingestion log.

Connections come from :mod:`ingest.db` (one blocking pool per database,
shared by threads; driver errors translated there, by SQLSTATE). Every
transaction is explicit and short: the write locks the QuickTest row
(``SELECT ... FOR UPDATE``), compares generations, writes, records, commits.
Duplicates are safe by schema too: a partial unique index allows one
``ingested`` record per (bucket, object, generation).

Example::

    with connection(settings) as conn:
        state = read_state(conn, settings, ref)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ingest.db import close_pools, connection, pool, run  # noqa: F401  (re-exported: store.connection(...))
from ingest.objects import ObjectRef

if TYPE_CHECKING:
    from ingest.config import Settings

INGESTIONS_TABLE = "training_metrics_ingestions"


@dataclasses.dataclass(frozen=True)
class RowState:
    """What the database knows about an object before anything is downloaded."""

    quicktest_id: int | None
    current_generation: int | None  # the newest generation of this object in the row
    already_ingested: bool  # this very generation has an 'ingested' record


@contextlib.contextmanager
def _one_statement(conn: Any) -> Iterator[Any]:
    """A cursor for one statement that is its own transaction (autocommit).

    A single statement is atomic and sees one snapshot by itself; wrapping it
    in BEGIN ... COMMIT only adds two round trips, which with Cloud SQL cost
    more than the statement. The connection is handed back to the pool in
    its usual (transactional) mode. Called inside a transaction the caller
    opened, it runs in that transaction and commits it, as ``with conn`` does.
    """
    from psycopg2.extensions import TRANSACTION_STATUS_IDLE

    if conn.autocommit or conn.info.transaction_status != TRANSACTION_STATUS_IDLE:
        with conn, conn.cursor() as cur:
            yield cur
        return
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        if not conn.closed:
            conn.autocommit = False


def _table(settings: Settings) -> Any:
    from psycopg2 import sql

    return sql.Identifier(*settings.quicktest_table_name)  # "table" or "schema"."table"


def _paths(ref: ObjectRef) -> tuple[str, str]:
    """gcs_artifacts_path is matched with and without a trailing slash (index-friendly IN)."""
    folder = ref.folder_uri
    return folder, folder + "/"


def _source_generation(source: Any, ref: ObjectRef) -> int | None:
    if isinstance(source, dict) and source.get("bucket") == ref.bucket and source.get("object") == ref.name:
        try:
            return int(source.get("generation"))
        except (TypeError, ValueError):
            return None
    return None


# The newest ingested generation of the object and whether the event's own is
# among them, from the log; the row's ``source`` only when the log knows
# nothing of the object (a row filled before the log existed, or a wiped log):
# reading into a large jsonb costs a decompression, and CASE evaluates the
# subquery (an InitPlan) only when that branch is taken. One statement, one
# round trip, where it used to take two for every first ingestion.
_GENERATIONS = (
    "SELECT r.newest, r.this_one,"
    " CASE WHEN r.newest IS NULL THEN (SELECT q.training_history_json -> 'source' FROM {table} q WHERE q.id = %(id)s) END"
    f" FROM (SELECT max(generation) AS newest, coalesce(bool_or(generation = %(generation)s), false) AS this_one"
    f" FROM {INGESTIONS_TABLE}"
    " WHERE bucket = %(bucket)s AND object_name = %(object_name)s AND outcome = 'ingested') r"
)

# read_state in one statement: the row (no lock) joined with the generations.
_STATE = (
    "SELECT q.id, r.newest, r.this_one, CASE WHEN r.newest IS NULL THEN q.training_history_json -> 'source' END"
    " FROM (SELECT id, training_history_json FROM {table}"
    " WHERE gcs_artifacts_path IN (%(path)s, %(path_slash)s) ORDER BY id DESC LIMIT 1) q"
    f" CROSS JOIN (SELECT max(generation) AS newest, coalesce(bool_or(generation = %(generation)s), false) AS this_one"
    f" FROM {INGESTIONS_TABLE}"
    " WHERE bucket = %(bucket)s AND object_name = %(object_name)s AND outcome = 'ingested') r"
)


def _object_params(ref: ObjectRef) -> dict[str, Any]:
    path, path_slash = _paths(ref)
    return {
        "bucket": ref.bucket,
        "object_name": ref.name,
        "generation": ref.generation,
        "path": path,
        "path_slash": path_slash,
    }


def _newest(ref: ObjectRef, newest: int | None, this_one: bool, source: Any) -> tuple[int | None, bool]:
    """(newest generation of ``ref``'s object in the row, whether ``ref``'s own is done)."""
    if newest is None:
        newest = _source_generation(source, ref)
    return newest, bool(this_one) or newest == ref.generation


def read_state(conn: Any, settings: Settings, ref: ObjectRef) -> RowState:
    """The matching row and the generations recorded for ``ref``'s object (no locks; one statement)."""
    from psycopg2 import sql

    with _one_statement(conn) as cur:
        cur.execute(sql.SQL(_STATE).format(table=_table(settings)), _object_params(ref))
        row = cur.fetchone()
    if row is None:
        return RowState(None, None, False)
    quicktest_id, newest, this_one, source = row
    current, done = _newest(ref, newest, this_one, source)
    return RowState(int(quicktest_id), current, done)


def _current_generation(cur: Any, settings: Settings, ref: ObjectRef, quicktest_id: int) -> tuple[int | None, bool]:
    """The newest generation of ``ref``'s object in the row, and whether ``ref``'s own is done (one statement)."""
    from psycopg2 import sql

    cur.execute(
        sql.SQL(_GENERATIONS).format(table=_table(settings)), {**_object_params(ref), "id": quicktest_id}
    )
    newest, this_one, source = cur.fetchone()
    return _newest(ref, newest, this_one, source)


@dataclasses.dataclass(frozen=True)
class Record:
    """One line of ``training_metrics_ingestions``."""

    ref: ObjectRef
    outcome: str
    event_id: str | None = None
    quicktest_id: int | None = None
    reason: str | None = None
    epochs: int | None = None
    duration_ms: float = 0.0
    forced: bool = False


_INSERT = (
    f"INSERT INTO {INGESTIONS_TABLE} (bucket, object_name, generation, event_id, quicktest_id, outcome,"
    " reason, size_bytes, epochs, duration_ms, forced)"
    " VALUES (%(bucket)s, %(object_name)s, %(generation)s, %(event_id)s, %(quicktest_id)s, %(outcome)s,"
    " %(reason)s, %(size_bytes)s, %(epochs)s, %(duration_ms)s, %(forced)s)"
)


def _params(record: Record) -> dict[str, Any]:
    return {
        "bucket": record.ref.bucket,
        "object_name": record.ref.name,
        "generation": record.ref.generation,
        "event_id": record.event_id,
        "quicktest_id": record.quicktest_id,
        "outcome": record.outcome,
        "reason": record.reason,
        "size_bytes": record.ref.size,
        "epochs": record.epochs,
        "duration_ms": record.duration_ms,
        "forced": record.forced,
    }


def record(conn: Any, rec: Record) -> None:
    """Record an outcome decided without writing the row (one statement, its own transaction)."""
    with _one_statement(conn) as cur:
        cur.execute(_INSERT, _params(rec))


@dataclasses.dataclass(frozen=True)
class WriteResult:
    outcome: str
    quicktest_id: int | None
    reason: str | None


def write(
    conn: Any,
    settings: Settings,
    ref: ObjectRef,
    history: dict[str, Any],
    *,
    raw_text: str | None = None,
    event_id: str | None,
    epochs: int | None,
    duration_ms: float,
    force: bool = False,
) -> WriteResult:
    """Write the history into the row if ``ref`` is newer than what it holds; record the outcome.

    The row receives ``history``; or, with ``raw_text`` (the file's own JSON,
    already validated), ``raw_text::jsonb || history`` (``history`` then holds
    only the top-level keys to add or replace).

    One transaction, three statements: lock the row; compare generations
    under the lock (a statement of its own, so that its snapshot is taken
    after the lock is granted and sees every earlier writer's commit); insert
    the record (``ON CONFLICT DO NOTHING`` against the unique index on
    ingested generations) and, in the same statement, update the row only
    when the record went in.
    """
    from psycopg2 import sql

    base = Record(ref, "ingested", event_id=event_id, epochs=epochs, duration_ms=duration_ms)
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT id FROM {} WHERE gcs_artifacts_path IN (%s, %s) ORDER BY id DESC LIMIT 1 FOR UPDATE"
            ).format(_table(settings)),
            _paths(ref),
        )
        row = cur.fetchone()
        if row is None:
            cur.execute(_INSERT, _params(dataclasses.replace(base, outcome="no_matching_row", reason=_no_row(ref))))
            return WriteResult("no_matching_row", None, _no_row(ref))
        quicktest_id = int(row[0])
        base = dataclasses.replace(base, quicktest_id=quicktest_id)
        # Read under the lock: every earlier writer of this row has committed.
        current, _ = _current_generation(cur, settings, ref, quicktest_id)
        decided = _decide(ref.generation, current, force)
        if decided is not None:
            outcome, reason = decided
            cur.execute(_INSERT, _params(dataclasses.replace(base, outcome=outcome, reason=reason)))
            return WriteResult(outcome, quicktest_id, reason)
        forced = current == ref.generation
        payload = json.dumps(history, allow_nan=False, separators=(",", ":"))
        value = "%(raw_text)s::jsonb || %(payload)s::jsonb" if raw_text is not None else "%(payload)s::jsonb"
        # The record and the row in one statement (one round trip): the row is
        # updated only when the record went in.
        cur.execute(
            sql.SQL(
                "WITH rec AS (" + _INSERT + " ON CONFLICT DO NOTHING RETURNING id)"
                " UPDATE {table} SET training_history_json = " + value + ""
                " WHERE id = %(quicktest_id)s AND EXISTS (SELECT 1 FROM rec) RETURNING id"
            ).format(table=_table(settings)),
            {**_params(dataclasses.replace(base, forced=forced)), "raw_text": raw_text, "payload": payload},
        )
        if cur.fetchone() is None:  # the schema's guarantee, should the row's source lie
            reason = f"generation {ref.generation} was already ingested"
            cur.execute(_INSERT, _params(dataclasses.replace(base, outcome="duplicate", reason=reason)))
            return WriteResult("duplicate", quicktest_id, reason)
        return WriteResult("ingested", quicktest_id, "re-ingested (--force)" if forced else None)


def decide_before_download(state: RowState, ref: ObjectRef, force: bool) -> tuple[str, str] | None:
    """Outcome known from the database alone (no row, duplicate, superseded), or None."""
    if state.quicktest_id is None:
        return "no_matching_row", _no_row(ref)
    if state.already_ingested and not force:
        return "duplicate", f"generation {ref.generation} was already ingested"
    return _decide(ref.generation, state.current_generation, force)


def _decide(generation: int, current: int | None, force: bool) -> tuple[str, str] | None:
    if current is None or generation > current:
        return None
    if generation < current:
        return "superseded", f"the row already holds newer generation {current}"
    if not force:
        return "duplicate", f"generation {generation} was already ingested"
    return None


def _no_row(ref: ObjectRef) -> str:
    return f"no QuickTest row has gcs_artifacts_path {ref.folder_uri!r}"
