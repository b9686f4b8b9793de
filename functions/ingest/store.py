"""PostgreSQL access: the row lookup, the guarded write and the ingestion log.

Connections come from :mod:`ingest.db` (one blocking pool per database,
shared by threads; driver errors translated there, by SQLSTATE). Every
transaction is explicit and short: the write locks the QuickTest row
(``SELECT ... FOR UPDATE``), compares generations, writes, records, commits.
Duplicates are safe by schema too: a partial unique index allows one
``ingested`` record per (bucket, object, generation), another one record per
event and generation. The statements are written whole in ``queries.sql``.

Example::

    with connection(settings) as conn:
        state = read_state(conn, settings, ref)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import re
from collections.abc import Iterator
from importlib import resources
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


_QUERIES_FILE = "queries.sql"
_SECTION = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_VARIABLE = re.compile(r"(?<![:\w]):'(\w+)'")
_TABLE = ':"quicktest_table"'


@functools.cache
def queries() -> dict[str, str]:
    """The statements of ``queries.sql`` by name, in psycopg2's form (``%(name)s``;
    the table still written ``:"quicktest_table"``), comment lines dropped.

    Example::

        print(queries()["check"])
    """
    return {name: _VARIABLE.sub(r"%(\1)s", body) for name, body in psql_queries().items()}


@functools.cache
def psql_queries() -> dict[str, str]:
    """The statements of ``queries.sql`` by name as written (psql variables), comment lines dropped."""
    text = resources.files("ingest").joinpath(_QUERIES_FILE).read_text("utf-8")
    parts = _SECTION.split(text)
    found = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        lines = [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("--")]
        found[name] = "\n".join(lines).strip()
    return found


def _statement(name: str, settings: Settings) -> Any:
    """The named statement with QUICKTEST_TABLE quoted in (psycopg2.sql, never string formatting)."""
    from psycopg2 import sql

    pieces = queries()[name].split(_TABLE)
    table = _table(settings)
    composed: list[Any] = [sql.SQL(pieces[0])]
    for piece in pieces[1:]:
        composed += [table, sql.SQL(piece)]
    return sql.Composed(composed)


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
        "md5_hash": record.ref.md5_hash,
        "crc32c": record.ref.crc32c,
        "path": path,
        "path_slash": path_slash,
        "no_row": _no_row(record.ref),
        "duplicate": _duplicate(record.ref.generation),
    }


@dataclasses.dataclass(frozen=True)
class Known:
    """What :func:`check` found: the row's state and the outcome it decides, if any.

    ``settled``: the outcome is this event's own earlier record (a redelivery,
    or a retried step whose first commit went through): nothing was recorded again.
    """

    state: RowState
    outcome: str | None
    reason: str | None
    settled: bool = False


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
    this event already settled, duplicate, superseded, unchanged: the
    ``check`` statement of ``queries.sql``); with ``record``, that outcome is
    recorded by the same statement, once per event. One round trip, no locks.

    Example::

        known = check(conn, settings, ref, record=True, event_id="e1")
        if known.outcome is not None:   # decided, and recorded
            print(known.outcome, known.reason)
    """
    params = {
        **_params(Record(ref, "", event_id=event_id, duration_ms=duration_ms)),
        "force": force,
        "record": record,
    }
    with _one_statement(conn) as cur:
        cur.execute(_statement("check", settings), params)
        quicktest_id, current, done, outcome, reason, settled = cur.fetchone()
    state = RowState(
        None if quicktest_id is None else int(quicktest_id), None if current is None else int(current), bool(done)
    )
    return Known(state, outcome, reason, bool(settled))


def read_state(conn: Any, settings: Settings, ref: ObjectRef) -> RowState:
    """The matching row and the generations recorded for ``ref``'s object (no locks; one statement)."""
    return check(conn, settings, ref).state


def record(conn: Any, rec: Record) -> None:
    """Record an outcome decided without writing the row (one statement, its own
    transaction); a second record of the same event and generation is not added."""
    with _one_statement(conn) as cur:
        cur.execute(queries()["record"], _params(rec))


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
    status: str | None = None,
) -> WriteResult:
    """Write the history into the row if ``ref`` is newer than what it holds; record the outcome.

    The row receives ``history``; or, with ``raw_text`` (the file's own JSON
    object, already validated), that object with ``history``'s keys (then
    only the top-level keys to add or replace) appended before its closing
    brace: jsonb keeps the last of duplicate keys, so this stores what
    ``raw_text::jsonb || history`` would, with one jsonb parse instead of two
    parses and a merge.

    One round trip (the ``write`` statements of ``queries.sql``): the row lock,
    the generation comparison under it, the one record of the event, the row
    update and its notification on ``settings.notify_channel`` commit together. An event already settled (its record exists)
    returns that record's outcome and changes nothing.
    """
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
    with _one_statement(conn) as cur:
        cur.execute(_statement("write", settings), params)
        quicktest_id, outcome, reason, forced, updated, settled, _notified = cur.fetchone()
    quicktest_id = None if quicktest_id is None else int(quicktest_id)
    if outcome == "ingested" and not settled:
        assert updated == 1, "an 'ingested' record went in without the row update"
        return WriteResult("ingested", quicktest_id, "re-ingested (--force)" if forced else None)
    return WriteResult(outcome, quicktest_id, reason)


def _no_row(ref: ObjectRef) -> str:
    return f"no QuickTest row has gcs_artifacts_path {ref.folder_uri!r}"


def _duplicate(generation: int) -> str:
    return f"generation {generation} was already ingested"
