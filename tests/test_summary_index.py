"""migrations/0004.summary-index.py: the ranking query's index, built without touching the
platform table's columns or data, used by the documented query, and gone on rollback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg2.extras

from metrics_ingest.migrations import apply_migrations, create_dev_platform_table, rollback_migrations
from tests.support.postgres import query

RANKING_SQL = (Path(__file__).parent / "django_platform" / "ml_platform" / "ranking.sql").read_text()
COLUMNS = "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns WHERE table_name = %s ORDER BY 1"


def _summary_indexes(url: str) -> list[str]:
    return [name for (name,) in query(
        url, "SELECT indexname FROM pg_indexes WHERE tablename = 'ml_platform_quicktest' AND indexdef LIKE %s",
        ("%summary,val_loss,best%",))]  # fmt: skip


def _insert(url: str, history: Any) -> None:
    query(url, "INSERT INTO ml_platform_quicktest (name, training_history_json) VALUES ('r', %s) RETURNING id",
          (psycopg2.extras.Json(history),))  # fmt: skip


def test_the_index_is_built_used_and_rolled_back_leaving_the_table_as_it_was(scratch_database: Any) -> None:
    """After migrate the ranking query runs on the index; any jsonb still writes; rollback drops only the index."""
    url = scratch_database("sumidx")
    create_dev_platform_table(url)
    _insert(url, {"epochs": [0], "summary": {"val_loss": {"best": 0.5, "final": 0.5, "best_epoch": 0, "nulls": 0}}})
    before = query(url, COLUMNS, ("ml_platform_quicktest",))
    apply_migrations(url)
    [index] = _summary_indexes(url)
    # Rows the function never wrote, or odd ones, are still accepted: the expression cannot fail.
    for odd in ({"summary": {"val_loss": {"best": "abc"}}}, {"summary": 3}, [1, 2], None, {"summary": {"val_loss": {"best": 10**400}}}):
        _insert(url, odd)
    plan = "\n".join(r[0] for r in query(url, "SET enable_seqscan = off; EXPLAIN " + RANKING_SQL))
    assert f"Index Scan using {index}" in plan and "Sort" not in plan
    assert [r[3] for r in query(url, RANKING_SQL)] == [0.5, 10**400]  # numbers only, in order
    assert query(url, COLUMNS, ("ml_platform_quicktest",)) == before  # columns, defaults, nullability untouched
    rollback_migrations(url)
    assert _summary_indexes(url) == []
    assert query(url, "SELECT count(*) FROM ml_platform_quicktest") == [(6,)]  # data untouched
