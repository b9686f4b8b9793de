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
    """A cursor for one round trip that is its own transaction (autocommit).

    One statement is atomic and sees one snapshot by itself; several
    statements sent in one query string run as one implicit transaction, each
    with its own snapshot. Wrapping either in BEGIN ... COMMIT only adds two
    round trips, which with Cloud SQL cost more than the statements. The
    connection is handed back to the pool in its usual (transactional) mode.
    Called inside a transaction the caller opened, it runs in that
    transaction and commits it, as ``with conn`` does.
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


_COLUMNS = (
    "bucket, object_name, generation, event_id, quicktest_id, outcome,"
    " reason, size_bytes, epochs, duration_ms, forced"
)
_INSERT = (
    f"INSERT INTO {INGESTIONS_TABLE} ({_COLUMNS})"
    " VALUES (%(bucket)s, %(object_name)s, %(generation)s, %(event_id)s, %(quicktest_id)s, %(outcome)s,"
    " %(reason)s, %(size_bytes)s, %(epochs)s, %(duration_ms)s, %(forced)s)"
)


def _insert_from(source: str, *, quicktest_id: str, outcome: str, reason: str, forced: str, where: str) -> str:
    """An INSERT of the event's record whose decided columns come from the CTE ``source``."""
    return (
        f"INSERT INTO {INGESTIONS_TABLE} ({_COLUMNS})"
        f" SELECT %(bucket)s, %(object_name)s, %(generation)s, %(event_id)s, {quicktest_id}, {outcome},"
        f" {reason}, %(size_bytes)s, %(epochs)s, %(duration_ms)s, {forced} FROM {source} WHERE {where}"
    )


def _params(record: Record) -> dict[str, Any]:
    path, path_slash = _paths(record.ref)
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
        "path": path,
        "path_slash": path_slash,
        "no_row": _no_row(record.ref),
        "duplicate": _duplicate(record.ref.generation),
    }


# The row and the generations of the event's object, as CTEs ``q`` (the row,
# at most one) and ``g`` (exactly one line): ``current`` is the newest
# ingested generation of this object from the log (an index probe from the
# top), or, only when the log knows nothing of it (a row filled before the
# log existed, a wiped log), the generation named by the row's own
# ``source``: reading into a large jsonb costs a decompression, so coalesce
# evaluates that subquery only when needed, and ``OFFSET 0`` keeps it from
# being inlined (four references would read the jsonb four times).
# ``this_one``: an index probe for this very generation. ``g`` is
# materialized: the statements below refer to ``current`` often, and each
# reference to an inlined one would repeat the subquery in the plan.
_ROW_AND_GENERATIONS = (
    "q AS (SELECT id FROM {table} WHERE gcs_artifacts_path IN (%(path)s, %(path_slash)s) ORDER BY id DESC LIMIT 1),"
    " g AS MATERIALIZED (SELECT q.id,"
    f" EXISTS (SELECT 1 FROM {INGESTIONS_TABLE} WHERE bucket = %(bucket)s AND object_name = %(object_name)s"
    " AND generation = %(generation)s AND outcome = 'ingested') AS this_one,"
    f" coalesce((SELECT max(generation) FROM {INGESTIONS_TABLE}"
    " WHERE bucket = %(bucket)s AND object_name = %(object_name)s AND outcome = 'ingested'),"
    " (SELECT CASE WHEN s ->> 'bucket' = %(bucket)s AND s ->> 'object' = %(object_name)s"
    " AND s ->> 'generation' ~ '^[0-9]{{1,19}}$' THEN (s ->> 'generation')::numeric END"
    " FROM (SELECT x.training_history_json -> 'source' AS s FROM {table} x WHERE x.id = q.id OFFSET 0) y)"
    ") AS current"
    " FROM (SELECT 1) one LEFT JOIN q ON true)"
)

# What the database alone decides, before any download (see decide_before_download):
# no row, this generation already ingested, or a newer one already in the row.
_KNOWN = (
    "WITH " + _ROW_AND_GENERATIONS + ","
    " d AS (SELECT id, current, this_one OR current = %(generation)s AS done,"
    " CASE WHEN id IS NULL THEN 'no_matching_row'"
    " WHEN (this_one OR current = %(generation)s) AND NOT %(force)s THEN 'duplicate'"
    " WHEN current > %(generation)s THEN 'superseded' END AS outcome FROM g),"
    " e AS (SELECT *, CASE outcome WHEN 'no_matching_row' THEN %(no_row)s WHEN 'duplicate' THEN %(duplicate)s"
    " WHEN 'superseded' THEN 'the row already holds newer generation ' || current END AS reason FROM d),"
    " rec AS ("
    + _insert_from("e", quicktest_id="id", outcome="outcome", reason="reason", forced="false",
                   where="outcome IS NOT NULL AND %(record)s")  # fmt: skip
    + " RETURNING id)"
    " SELECT id, current, done, outcome, reason FROM e"
)


@dataclasses.dataclass(frozen=True)
class Known:
    """What :func:`check` found: the row's state and the outcome it decides, if any."""

    state: RowState
    outcome: str | None
    reason: str | None


def check(
    conn: Any,
    settings: Settings,
    ref: ObjectRef,
    *,
    force: bool = False,
    record: bool = False,
    event_id: str | None = None,
    duration_ms: float = 0.0,
) -> Known:
    """The row's state and the outcome the database alone decides (no row,
    duplicate, superseded; see :func:`decide_before_download`); with
    ``record``, that outcome is recorded by the same statement. One round
    trip, no locks.

    Example::

        known = check(conn, settings, ref, record=True, event_id="e1")
        if known.outcome is not None:   # decided, and recorded
            print(known.outcome, known.reason)
    """
    from psycopg2 import sql

    params = {
        **_params(Record(ref, "", event_id=event_id, duration_ms=duration_ms)),
        "force": force,
        "record": record,
    }
    with _one_statement(conn) as cur:
        cur.execute(sql.SQL(_KNOWN).format(table=_table(settings)), params)
        quicktest_id, current, done, outcome, reason = cur.fetchone()
    state = RowState(
        None if quicktest_id is None else int(quicktest_id), None if current is None else int(current), bool(done)
    )
    return Known(state, outcome, reason)


def read_state(conn: Any, settings: Settings, ref: ObjectRef) -> RowState:
    """The matching row and the generations recorded for ``ref``'s object (no locks; one statement)."""
    return check(conn, settings, ref).state


def record(conn: Any, rec: Record) -> None:
    """Record an outcome decided without writing the row (one statement, its own transaction)."""
    with _one_statement(conn) as cur:
        cur.execute(_INSERT, _params(rec))


@dataclasses.dataclass(frozen=True)
class WriteResult:
    outcome: str
    quicktest_id: int | None
    reason: str | None


# The guarded write in one round trip: two statements in one query string,
# run by PostgreSQL as one implicit transaction. The first locks the row; the
# second takes its snapshot after the lock is granted, so it sees every
# earlier writer's commit (one statement could not: its snapshot would
# predate the lock wait). The second decides (no row / superseded / duplicate
# / ingested), inserts the one record (``ON CONFLICT DO NOTHING`` against the
# unique index on ingested generations), updates the row only when an
# 'ingested' record went in, and otherwise, should the index refuse it, records
# 'duplicate' instead.
_WRITE = (
    "SELECT id FROM {table} WHERE gcs_artifacts_path IN (%(path)s, %(path_slash)s) ORDER BY id DESC LIMIT 1"
    " FOR UPDATE;"
    " WITH " + _ROW_AND_GENERATIONS + ","
    " d AS (SELECT id, current = %(generation)s AS forced,"
    " CASE WHEN id IS NULL THEN 'no_matching_row'"
    " WHEN current IS NULL OR %(generation)s > current THEN 'ingested'"
    " WHEN %(generation)s < current THEN 'superseded'"
    " WHEN NOT %(force)s THEN 'duplicate' ELSE 'ingested' END AS outcome,"
    " current FROM g),"
    " e AS (SELECT *, CASE outcome WHEN 'no_matching_row' THEN %(no_row)s WHEN 'duplicate' THEN %(duplicate)s"
    " WHEN 'superseded' THEN 'the row already holds newer generation ' || current END AS reason FROM d),"
    " rec AS ("
    + _insert_from("e", quicktest_id="id", outcome="outcome", reason="reason",
                   forced="outcome = 'ingested' AND coalesce(forced, false)", where="true")  # fmt: skip
    + " ON CONFLICT DO NOTHING RETURNING outcome),"
    " upd AS (UPDATE {table} SET training_history_json = %(payload)s::jsonb"
    " WHERE id = (SELECT id FROM e) AND EXISTS (SELECT 1 FROM rec WHERE outcome = 'ingested') RETURNING id),"
    " dup AS ("
    + _insert_from("e", quicktest_id="id", outcome="'duplicate'", reason="%(duplicate)s", forced="false",
                   where="outcome = 'ingested' AND NOT EXISTS (SELECT 1 FROM rec)")  # fmt: skip
    + " RETURNING id)"
    " SELECT e.id, CASE WHEN EXISTS (SELECT 1 FROM dup) THEN 'duplicate' ELSE e.outcome END,"
    " CASE WHEN EXISTS (SELECT 1 FROM dup) THEN %(duplicate)s ELSE e.reason END,"
    " coalesce(e.forced, false), (SELECT count(*) FROM upd), " + "{notify}" + " FROM e"
)

# The platform is told in the same transaction as the row update (a NOTIFY is
# delivered at commit, and only then): one notification per updated row, none
# for any other outcome or a rolled-back write. A scalar subquery of the
# final SELECT, so it runs after ``upd``; with NOTIFY_CHANNEL empty the
# statement carries a constant instead, and pg_notify is never called.
# Payload (docs/platform.md): generation is a string, as in the history's ``source``.
_NOTIFY = (
    "(SELECT count(pg_notify(%(channel)s, json_build_object('quicktest_id', upd.id,"
    " 'generation', %(generation)s::text, 'status', %(status)s::text, 'epochs', %(epochs)s::integer,"
    " 'outcome', 'ingested')::text)) FROM upd)"
)


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
    status: str | None = None,
) -> WriteResult:
    """Write the history into the row if ``ref`` is newer than what it holds; record the outcome.

    The row receives ``history``; or, with ``raw_text`` (the file's own JSON
    object, already validated), that object with ``history``'s keys (then
    only the top-level keys to add or replace) appended before its closing
    brace: jsonb keeps the last of duplicate keys, so this stores what
    ``raw_text::jsonb || history`` would, with one jsonb parse instead of two
    parses and a merge.

    One round trip (see ``_WRITE``): the row lock, the generation comparison
    under it, the one record of the event, the row update and its
    notification on ``settings.notify_channel`` (with ``status`` and
    ``epochs``; see ``_NOTIFY``) commit together.
    """
    from psycopg2 import sql

    payload = json.dumps(history, allow_nan=False, separators=(",", ":"))
    if raw_text is not None and history:
        # The text's last character, JSON whitespace aside, is its closing brace.
        # Spliced here: a transient copy of the text costs less than PostgreSQL's
        # character-counting string functions or a jsonb merge (~0.5-3 ms per 0.5 MB).
        end = len(raw_text.rstrip(" \t\r\n")) - 1
        payload = "".join((raw_text[:end], ",", payload[1:]))
    elif raw_text is not None:
        payload = raw_text
    params = {
        **_params(Record(ref, "ingested", event_id=event_id, epochs=epochs, duration_ms=duration_ms)),
        "force": force,
        "payload": payload,
        "channel": settings.notify_channel,
        "status": status,
    }
    notify = sql.SQL(_NOTIFY if settings.notify_channel else "0")
    with _one_statement(conn) as cur:
        cur.execute(sql.SQL(_WRITE).format(table=_table(settings), notify=notify), params)
        quicktest_id, outcome, reason, forced, updated, _notified = cur.fetchone()
    quicktest_id = None if quicktest_id is None else int(quicktest_id)
    if outcome == "ingested":
        assert updated == 1, "an 'ingested' record went in without the row update"
        return WriteResult("ingested", quicktest_id, "re-ingested (--force)" if forced else None)
    return WriteResult(outcome, quicktest_id, reason)


def decide_before_download(state: RowState, ref: ObjectRef, force: bool) -> tuple[str, str] | None:
    """Outcome known from the database alone (no row, duplicate, superseded), or None.

    :func:`check` decides the same in SQL (and records it in the same round trip).
    """
    if state.quicktest_id is None:
        return "no_matching_row", _no_row(ref)
    if state.already_ingested and not force:
        return "duplicate", _duplicate(ref.generation)
    return _decide(ref.generation, state.current_generation, force)


def _decide(generation: int, current: int | None, force: bool) -> tuple[str, str] | None:
    if current is None or generation > current:
        return None
    if generation < current:
        return "superseded", f"the row already holds newer generation {current}"
    if not force:
        return "duplicate", _duplicate(generation)
    return None


def _no_row(ref: ObjectRef) -> str:
    return f"no QuickTest row has gcs_artifacts_path {ref.folder_uri!r}"


def _duplicate(generation: int) -> str:
    return f"generation {generation} was already ingested"
