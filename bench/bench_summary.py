"""Benchmark: ranking runs by best val_loss from the summaries, against the same ranking from the series.

A platform table of ``--rows`` QuickTests (default 10,000), each history 50
epochs x 140 metrics (6 loss series, 134 others, val_loss validated every 5th
epoch) plus per-tower weight and gradient statistics with 30-bin histograms,
about as large as a real file, and the ``summary`` the function adds
(``ingest.summary.summarize``). After ``metrics-ingest migrate`` (which builds
``migrations/0004.summary-index.py``'s index), it times:

1. the documented query (``tests/django_platform/ml_platform/ranking.sql``,
   shown in docs/platform.md): a page of 20 (``--page``), read from the summaries;
2. the same page computed from the ``val_loss`` series of every history;
3. the documented query without the index (dropped for the measurement), to
   show what the index buys.

Each query runs ``--repeats`` times (2 and 3 fewer: they read every history);
p50/p95 in milliseconds, and the ratio of 2 to 1. Both rankings are checked to
return the same rows in the same order.

Run from the repository root (starts PostgreSQL from pip; ~3 minutes on 2 cores)::

    python bench/bench_summary.py
    python bench/bench_summary.py --rows 2000 --repeats 50
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "functions"), str(ROOT), str(ROOT / "bench")]

import orjson  # noqa: E402
import psycopg2  # noqa: E402

from bench_ingest import pct, postgres, scratch_database  # noqa: E402
from ingest.summary import summarize  # noqa: E402
from metrics_ingest.migrations import apply_migrations, create_dev_platform_table  # noqa: E402

RANKING_SQL = (ROOT / "tests" / "django_platform" / "ml_platform" / "ranking.sql").read_text()
EPOCHS, METRICS, BINS = 50, 140, 30
# The same page, computed from every history's val_loss series (first epoch on ties).
FROM_SERIES_SQL = """
SELECT q.id, q.name, q.status, s.best AS best_val_loss
  FROM ml_platform_quicktest q
  CROSS JOIN LATERAL (
        SELECT v::text::numeric AS best
          FROM jsonb_array_elements(q.training_history_json -> 'loss' -> 'val_loss') WITH ORDINALITY AS a(v, i)
         WHERE jsonb_typeof(v) = 'number'
         ORDER BY v::text::numeric, i
         LIMIT 1) s
 ORDER BY best_val_loss
 LIMIT 20
"""


def _base_documents(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    epochs = list(range(EPOCHS))

    def series() -> list[float]:
        return [rng.random() for _ in epochs]

    def tower(norm: bool) -> dict:
        stats = {k: series() for k in ("mean", "std", "min", "max") + (("norm",) if norm else ())}
        stats["histogram"] = {"bin_edges": [-1 + 2 * i / BINS for i in range(BINS + 1)],
                              "counts": [[rng.randrange(10_000) for _ in range(BINS)] for _ in epochs]}
        return stats

    docs = []
    for _ in range(n):
        loss = {name: series() for name in ("loss", "total_loss", "regularization_loss",
                                            "val_total_loss", "val_regularization_loss")}
        metrics = {f"factorized_top_k/top_{k}_categorical_accuracy_{i}": series() for i in range(METRICS - 6)
                   for k in (100,)}
        docs.append({
            "schema_version": 1, "status": "completed", "saved_at": "2026-12-03T12:00:00Z", "available": True,
            "epochs": epochs, "loss": loss, "metrics": metrics,
            "gradient": {"total": series(), "query": series(), "candidate": series()},
            "weight_stats": {"query": tower(False), "candidate": tower(False)},
            "gradient_stats": {"query": tower(True), "candidate": tower(True)},
            "final_metrics": {"test_recall_at_100": rng.random()}, "params": {"batch_size": 2048},
        })
    return docs


def fill(url: str, rows: int) -> int:
    """Insert ``rows`` QuickTests with histories; returns the mean history size in bytes (as JSON)."""
    rng = random.Random(7)
    bases = _base_documents(8, seed=1)
    conn = psycopg2.connect(url)
    total = 0
    try:
        for start in range(0, rows, 250):
            buf = io.StringIO()
            for i in range(start, min(rows, start + 250)):
                doc = dict(bases[i % len(bases)])
                doc["loss"] = {**doc["loss"], "val_loss": [rng.random() if e % 5 == 4 else None for e in range(EPOCHS)]}
                doc["summary"] = summarize(doc)
                text = orjson.dumps(doc).decode()
                total += len(text)
                # COPY text format: backslashes doubled; JSON text has no tabs or newlines.
                buf.write(f"run-{i}\tcompleted\tgs://bench/quick_tests/{i}\t{text.replace(chr(92), chr(92) * 2)}\n")
            buf.seek(0)
            with conn, conn.cursor() as cur:
                cur.copy_expert("COPY ml_platform_quicktest (name, status, gcs_artifacts_path, training_history_json)"
                                " FROM STDIN", buf)
        with conn.cursor() as cur:
            conn.autocommit = True
            cur.execute("VACUUM ANALYZE ml_platform_quicktest")
    finally:
        conn.close()
    return total // max(rows, 1)


def timed(url: str, query: str, repeats: int) -> tuple[list[float], list[tuple]]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(query)  # warm: the first run reads from disk into the cache
            result = cur.fetchall()
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                cur.execute(query)
                cur.fetchall()
                times.append((time.perf_counter() - started) * 1000)
        conn.rollback()
    finally:
        conn.close()
    return times, result


def plan(url: str, query: str) -> str:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("EXPLAIN (COSTS OFF) " + query)
            return " / ".join(r[0].strip() for r in cur.fetchall()[:4])
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="QuickTest rows with histories (default 10,000)")
    parser.add_argument("--repeats", type=int, default=100, help="runs of the documented query (default 100)")
    parser.add_argument("--series-repeats", type=int, default=5, help="runs of the two full reads (default 5)")
    parser.add_argument("--page", type=int, default=20, help="rows per page of the ranking (default 20, the documented query's)")
    parser.add_argument("--database-url", help="an existing server's superuser URL (default: pgserver from pip)")
    args = parser.parse_args(argv)

    ranking = RANKING_SQL.replace("LIMIT 20", f"LIMIT {args.page}")
    from_series = FROM_SERIES_SQL.replace("LIMIT 20", f"LIMIT {args.page}")
    with postgres(args.database_url) as admin, scratch_database(admin, "summary") as url:
        create_dev_platform_table(url)
        started = time.perf_counter()
        size = fill(url, args.rows)
        apply_migrations(url)  # the summary index is built on the filled table, as on a live platform
        print(f"{args.rows:,} rows of ~{size / 1e6:.2f} MB histories loaded and indexed in {time.perf_counter() - started:.0f} s")
        print(f"plan: {plan(url, ranking)}")
        fast, ranked = timed(url, ranking, args.repeats)
        slow, reference = timed(url, from_series, args.series_repeats)
        assert [r[0] for r in ranked] == [r[0] for r in reference], "the two rankings differ"
        assert [float(r[3]) for r in ranked] == [float(r[3]) for r in reference]
        conn = psycopg2.connect(url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'ml_platform_quicktest'::regclass"
                        " AND pg_get_indexdef(indexrelid) LIKE '%summary,val_loss,best%'")
            (index,) = cur.fetchone()
            cur.execute(f'DROP INDEX "{index}"')
        conn.close()
        unindexed, _ = timed(url, ranking, args.series_repeats)

    print(f"{f'query (page of {args.page})':44} {'p50 ms':>9} {'p95 ms':>9}")
    print(f"{'1. documented, from the summaries':44} {pct(fast, 50):9.2f} {pct(fast, 95):9.2f}   goal p95 <= 50 ms")
    print(f"{'2. from every val_loss series':44} {pct(slow, 50):9.1f} {pct(slow, 95):9.1f}")
    print(f"{'3. documented, index dropped':44} {pct(unindexed, 50):9.1f} {pct(unindexed, 95):9.1f}")
    print(f"ratio 2 / 1 at p50: {pct(slow, 50) / pct(fast, 50):.0f}x   goal >= 20x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
