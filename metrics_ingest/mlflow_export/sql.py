"""Read MLflow runs straight from MLflow's backend database (PostgreSQL), read-only.

The fast path: for a group of runs, four queries (runs, params, tags, metrics,
each ``WHERE run_uuid = ANY(%s)``; the metrics come back one row per metric
with its points as arrays), never one query per metric. The session is
read-only and the four queries share one REPEATABLE READ snapshot, so a group
is read as of one moment even while MLflow still writes.

The MLflow client itself is not used: pointed at a database it checks the
schema version against the installed MLflow and refuses a mismatch (and would
create tables in an empty database). The tables read here have kept these
columns since 2019 (``mlflow/store/tracking/dbmodels/models.py``).

Example::

    source = SqlSource("postgresql://mlflow@/mlflow?host=/cloudsql/p:r:mlflow-db")
    source.check()                       # one clear line when this is not an MLflow store
    runs = source.fetch(["0a1b...", "2c3d..."])
"""

from __future__ import annotations

import re
from typing import Any

from ingest.config import database_url_problem
from ingest.redact import connection_error, dsn_secrets, not_shown, render_dsn, scrub
from metrics_ingest.mlflow_export.model import MlflowRun, SourceError
from metrics_ingest.batch import SetupError, UsageError

TABLES = ("runs", "metrics", "params", "tags")
SETTING = "--mlflow-database-url"
_SCHEME = re.compile(r"^(?P<scheme>[a-z][a-z0-9]*)(?:\+[a-z0-9_]+)?://", re.I)


def normalize_url(url: str) -> str:
    """Accept MLflow's own ``--backend-store-uri`` spelling (``postgresql+psycopg2://``)."""
    match = _SCHEME.match(url)
    if match is None:
        return url  # a libpq key=value DSN
    scheme = match.group("scheme").lower()
    if scheme not in ("postgresql", "postgres"):
        raise UsageError(
            f"--mlflow-database-url: only PostgreSQL backend stores are supported (got a {scheme}:// URL); "
            "use --tracking-uri for other backends"
        )
    return "postgresql://" + url[match.end() :]


class SqlSource:
    """MLflow's backend database, read with plain read-only SQL.

    Args:
        url: a PostgreSQL URL or DSN (``postgresql+psycopg2://`` accepted).
        batch_size: runs per group of four queries (default 20).
        connect_timeout: seconds (default 10).

    Example::

        SqlSource("postgresql://reader@127.0.0.1:5433/mlflow").fetch(run_ids)
    """

    def __init__(self, url: str, batch_size: int = 20, connect_timeout: int = 10) -> None:
        self.url = normalize_url(url)
        # Refused before any connection: libpq's own parse errors quote the value.
        problem = database_url_problem(self.url)
        if problem:
            raise UsageError(not_shown(SETTING, problem))
        self.batch_size = batch_size
        self.connect_timeout = connect_timeout
        self._secrets = dsn_secrets(self.url)
        self.description = f"MLflow database {render_dsn(self.url)}"

    def _connect(self) -> Any:
        import psycopg2

        conn = psycopg2.connect(self.url, connect_timeout=self.connect_timeout)
        # Read-only at the session level: nothing this process sends can write.
        conn.set_session(readonly=True, isolation_level="REPEATABLE READ")
        return conn

    def check(self) -> None:
        import psycopg2

        try:
            conn = self._connect()
        except psycopg2.ProgrammingError as exc:
            raise SetupError(connection_error(exc, self.url, SETTING), 2) from None
        except psycopg2.Error as exc:
            raise SetupError(f"cannot connect to the MLflow database ({SETTING}): {connection_error(exc, self.url, SETTING)}") from None
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT " + ", ".join(f"to_regclass('{t}')" for t in TABLES))
                found = cur.fetchone()
        except psycopg2.Error as exc:
            raise SetupError(f"cannot read the MLflow database: {self._first_line(exc)}") from None
        finally:
            conn.close()
        missing = [t for t, oid in zip(TABLES, found) if oid is None]
        if missing:
            raise SetupError(
                f"--mlflow-database-url does not look like an MLflow tracking database: no {', '.join(missing)} "
                "table (point it at the database MLflow's --backend-store-uri names)",
                2,
            )

    def fetch(self, run_ids: list[str]) -> dict[str, MlflowRun]:
        import psycopg2

        ids = sorted(set(run_ids))
        try:
            conn = self._connect()
        except psycopg2.Error as exc:
            raise SourceError(f"cannot connect to the MLflow database: {connection_error(exc, self.url, SETTING)}") from None
        try:
            with conn, conn.cursor() as cur:
                return self._read(cur, ids)
        except psycopg2.Error as exc:
            raise SourceError(f"reading the MLflow database failed: {self._first_line(exc)}") from None
        finally:
            conn.close()

    def _first_line(self, exc: BaseException) -> str:
        return scrub(_first_line(exc), self._secrets)

    @staticmethod
    def _read(cur: Any, ids: list[str]) -> dict[str, MlflowRun]:
        # Measured on 20 runs x 140 metrics x 50 epochs (bench/bench_export.py): our
        # workers are the parallelism, and parallel query workers on top only compete
        # for the same cores (2x slower on 2 cores); hashing the groups instead of
        # sorting 140,000 points halves the query (10 vs 17 ms a run), given the
        # memory to hold them (~10 MB).
        cur.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        cur.execute("SET LOCAL enable_sort = off")
        cur.execute("SET LOCAL work_mem = '64MB'")
        cur.execute(
            "SELECT run_uuid, experiment_id, name, status, lifecycle_stage, start_time, end_time"
            " FROM runs WHERE run_uuid = ANY(%s)",
            (ids,),
        )
        runs = {
            row[0]: MlflowRun(
                run_id=row[0],
                experiment_id=str(row[1]),
                run_name=row[2],
                status=row[3],
                lifecycle_stage=row[4],
                start_time=row[5],
                end_time=row[6],
                tags={},
                params={},
                metrics={},
            )
            for row in cur.fetchall()
        }
        if not runs:
            return runs
        found = sorted(runs)
        cur.execute("SELECT run_uuid, key, value FROM params WHERE run_uuid = ANY(%s)", (found,))
        for run_id, key, value in cur.fetchall():
            runs[run_id].params[key] = value
        cur.execute("SELECT run_uuid, key, value FROM tags WHERE run_uuid = ANY(%s)", (found,))
        for run_id, key, value in cur.fetchall():
            runs[run_id].tags[key] = value
        # One row per (run, metric) with its points as three arrays: ~50x fewer rows for
        # psycopg2 to build than one per point, and the arrays are parsed in C.
        cur.execute(
            "SELECT run_uuid, key, array_agg(step), array_agg(timestamp),"
            " array_agg(CASE WHEN is_nan THEN 'NaN'::float8 ELSE value END)"
            " FROM metrics WHERE run_uuid = ANY(%s) GROUP BY run_uuid, key",
            (found,),
        )
        for run_id, key, steps, timestamps, values in cur.fetchall():
            # Plain (step, timestamp, value) tuples, built in C: a Point each would cost
            # as much as the query.
            runs[run_id].metrics[key] = list(zip(steps, timestamps, values))
        return runs


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
