"""The guarded write and the ingestion log: row locks and constraints, not timing."""

from __future__ import annotations

import random
import subprocess
import threading

import psycopg2
import psycopg2.extras
import pytest

from ingest import db, store
from ingest.errors import TransientError
from ingest.objects import ObjectRef
from tests.support.network import unreachable_database_url
from tests.support.platform_db import BUCKET, PlatformDb
from tests.support.scratch_db import psql_path


def _ref(folder: str, generation: int) -> ObjectRef:
    return ObjectRef(BUCKET, f"{folder}/training_metrics.json", generation, size=10)


def test_concurrent_writers_of_distinct_generations_end_with_the_newest(platform_db: PlatformDb) -> None:
    """16 writers with shuffled generations: the row ends with the highest, ingested generations only increase."""
    row_id, folder = platform_db.new_quicktest()
    generations = list(range(1, 17))
    random.Random(7).shuffle(generations)
    barrier = threading.Barrier(len(generations))
    outcomes: dict[int, str] = {}
    settings = platform_db.settings(db_pool_size=16)

    def write(generation: int) -> None:
        ref = _ref(folder, generation)
        source = {"bucket": BUCKET, "object": ref.name, "generation": str(generation)}
        history = {"epochs": list(range(generation)), "source": source}
        barrier.wait()
        with store.connection(settings) as conn:
            outcomes[generation] = store.write(
                conn, settings, ref, history, event_id=f"e{generation}", epochs=generation, duration_ms=1.0
            ).outcome

    threads = [threading.Thread(target=write, args=(g,)) for g in generations]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert platform_db.history(row_id)["epochs"] == list(range(16))
    assert outcomes[16] == "ingested"
    assert set(outcomes.values()) <= {"ingested", "superseded"}
    records = platform_db.ingestions(BUCKET, f"{folder}/training_metrics.json")
    assert len(records) == 16
    ingested = [r["generation"] for r in records if r["outcome"] == "ingested"]
    assert ingested == sorted(ingested) and len(set(ingested)) == len(ingested)  # lock order: only newer writes
    assert {r["generation"]: r["outcome"] for r in records} == outcomes


def test_unique_index_allows_one_ingested_record_per_generation(platform_db: PlatformDb) -> None:
    """The schema itself refuses a second 'ingested' record for a generation (forced ones aside)."""
    conn = platform_db.connect()
    insert = (
        "INSERT INTO training_metrics_ingestions (bucket, object_name, generation, outcome, forced)"
        " VALUES ('b', 'u/training_metrics.json', 1, %s, %s)"
    )
    try:
        with conn, conn.cursor() as cur:
            cur.execute(insert, ("ingested", False))
            cur.execute(insert, ("ingested", True))
            cur.execute(insert, ("duplicate", False))
        with pytest.raises(psycopg2.errors.UniqueViolation), conn, conn.cursor() as cur:
            cur.execute(insert, ("ingested", False))
        with pytest.raises(psycopg2.errors.CheckViolation), conn, conn.cursor() as cur:
            cur.execute(insert, ("maybe", False))
    finally:
        conn.close()


def test_row_source_counts_as_an_ingested_generation(platform_db: PlatformDb) -> None:
    """A row whose history already names a generation of this object (log wiped) blocks older and equal ones."""
    row_id, folder = platform_db.new_quicktest()
    name = f"{folder}/training_metrics.json"
    history = {"epochs": [0], "source": {"bucket": BUCKET, "object": name, "generation": "50"}}
    conn = platform_db.connect()
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE ml_platform_quicktest SET training_history_json = %s WHERE id = %s",
                    (psycopg2.extras.Json(history), row_id))
    conn.close()
    settings = platform_db.settings()
    with store.connection(settings) as conn:
        state = store.read_state(conn, settings, _ref(folder, 50))
        assert state == store.RowState(row_id, 50, True)
        assert store.check(conn, settings, _ref(folder, 50)).outcome == "duplicate"
        assert store.check(conn, settings, _ref(folder, 49), force=True).outcome == "superseded"
        assert store.check(conn, settings, _ref(folder, 51)).outcome is None


def test_unreachable_database_is_transient() -> None:
    """A refused database connection comes out as TransientError (the event is retried)."""
    from ingest.config import Settings

    settings = Settings(database_url=unreachable_database_url(), db_connect_timeout=2)
    with pytest.raises(TransientError, match="database error"):
        with store.connection(settings):
            pass


def test_pool_keeps_connections_open_between_events(platform_db: PlatformDb) -> None:
    """Consecutive uses of the pool get the same server session (no reconnect per event)."""
    settings = platform_db.settings(db_pool_size=3)
    pids = set()
    for _ in range(5):
        with store.connection(settings) as conn, conn, conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pids.add(cur.fetchone()[0])
    assert len(pids) == 1


def test_pool_replaces_a_connection_the_server_dropped(platform_db: PlatformDb, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pooled connection terminated by the server (restart, failover) is probed and replaced, not failed."""
    settings = platform_db.settings(db_pool_size=2)
    with store.connection(settings) as conn, conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        (old_pid,) = cur.fetchone()
    admin = platform_db.connect()
    with admin, admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
    admin.close()
    monkeypatch.setattr(db, "_PROBE_AFTER_IDLE_S", 0.0)  # probe at once instead of after 30 s idle
    with store.connection(settings) as conn, conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        assert cur.fetchone()[0] != old_pid


def test_single_statement_reads_and_records_hand_back_a_transactional_connection(platform_db: PlatformDb) -> None:
    """read_state and record run as single statements yet leave the pooled connection transactional (a failed block rolls back)."""
    row_id, folder = platform_db.new_quicktest()
    settings = platform_db.settings(db_pool_size=1)
    ref = _ref(folder, 7)
    with store.connection(settings) as conn:
        assert store.read_state(conn, settings, ref) == store.RowState(row_id, None, False)
        store.record(conn, store.Record(ref, "rejected", event_id="e1", quicktest_id=row_id, reason="bad"))
        assert conn.autocommit is False
    with pytest.raises(RuntimeError), store.connection(settings) as conn, conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE ml_platform_quicktest SET training_history_json = '{\"x\": 1}' WHERE id = %s", (row_id,)
        )
        raise RuntimeError("the block fails after the update")
    assert platform_db.history(row_id) is None
    assert [r["outcome"] for r in platform_db.ingestions(BUCKET, ref.name)] == ["rejected"]


def test_raw_text_is_stored_with_the_added_keys_winning(platform_db: PlatformDb) -> None:
    """The file's own text is stored with the added top-level keys appended: they replace the file's own (a forged source), as jsonb's || would."""
    row_id, folder = platform_db.new_quicktest()
    settings = platform_db.settings()
    ref = _ref(folder, 3)
    raw = '\n {"epochs": [0], "source": "forged", "note": "caf\u00e9 {}"} \n\t'
    added = {"schema_version": 1, "source": {"bucket": BUCKET, "object": ref.name, "generation": "3"}}
    with store.connection(settings) as conn:
        written = store.write(conn, settings, ref, added, raw_text=raw, event_id="e", epochs=1, duration_ms=1.0)
    assert written.outcome == "ingested"
    assert platform_db.history(row_id) == {"epochs": [0], "note": "caf\u00e9 {}", **added}


@pytest.mark.slow
def test_a_file_at_the_value_limit_is_storable(platform_db: PlatformDb) -> None:
    """A file at the reader's value limit (x-maxValues) is stored by PostgreSQL, so the limit decides before the database, never the database's own failure."""
    from ingest import document

    limit = document.max_values()
    series = "[" + "1," * 99 + "1]"  # 100 epochs x 39,500 metrics: ~3.99 million values, 8.3 MB
    raw = '{"epochs": [' + ",".join(map(str, range(100))) + '], "metrics": {' + ",".join(
        f'"m{i}": {series}' for i in range(39_500)) + "}}"  # fmt: skip
    assert 0.99 * limit < document._scan(raw, 64)[1] <= limit
    prepared = document.prepare(raw.encode())
    assert prepared.text is not None
    del prepared
    row_id, folder = platform_db.new_quicktest()
    settings = platform_db.settings()
    with store.connection(settings) as conn:
        written = store.write(conn, settings, _ref(folder, 1), {"schema_version": 1}, raw_text=raw, event_id="e",
                              epochs=1, duration_ms=1.0)  # fmt: skip
    assert written.outcome == "ingested"
    conn = platform_db.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT training_history_json -> 'metrics' -> 'm39499' -> 99 FROM ml_platform_quicktest"
                        " WHERE id = %s", (row_id,))  # fmt: skip
            assert cur.fetchone()[0] == 1
            # The value is replaced at once: the next tests' rows stay small.
            cur.execute("UPDATE ml_platform_quicktest SET training_history_json = NULL WHERE id = %s", (row_id,))
    finally:
        conn.close()


def test_statements_paste_into_psql_as_written(platform_db: PlatformDb) -> None:
    """queries.sql's statements run in psql as they stand, given \\set variables: the check under EXPLAIN
    (an index scan on the platform table), the write and the record inside a transaction rolled back."""
    row_id, folder = platform_db.new_quicktest()
    variables = {
        "quicktest_table": platform_db.table, "bucket": BUCKET, "object_name": f"{folder}/training_metrics.json",
        "path": f"gs://{BUCKET}/{folder}", "path_slash": f"gs://{BUCKET}/{folder}/", "generation": "7",
        "event_id": "psql-1", "md5_hash": "1B2M2Y8AsgTpgAmY7PhCfg==", "crc32c": "AAAAAA==", "force": "false",
        "record": "true", "size_bytes": "12", "epochs": "1", "duration_ms": "1.5", "no_row": "no row",
        "duplicate": "dup", "payload": '{"epochs": [0]}', "quicktest_id": str(row_id), "outcome": "rejected",
        "reason": "bad", "forced": "false", "channel": "training_metrics", "status": "completed",
    }  # fmt: skip
    statements = store.psql_queries()
    script = "".join(f"\\set {k} '{v}'\n" for k, v in variables.items())
    script += f"EXPLAIN {statements['check']}\nBEGIN;\n{statements['write']}\n{statements['record']}\nROLLBACK;\n"
    done = subprocess.run([str(psql_path()), platform_db.url, "--no-psqlrc", "-v", "ON_ERROR_STOP=1"],
                          input=script, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Index" in done.stdout and "ingested" in done.stdout  # the plan, then the write's answer
    assert platform_db.history(row_id) is None  # rolled back
