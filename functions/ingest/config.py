"""Configuration from the environment (DESIGN "Configuration").

Example::

    settings = Settings.from_env()          # reads DATABASE_URL, QUICKTEST_TABLE, ...
    settings = Settings(database_url="postgresql://localhost/app", quicktest_table="qt")
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping

from ingest.memory import BUDGET_BYTES


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"Invalid value for {name}. Received: {raw!r}. Expected a positive integer.") from None
    if value <= 0:
        raise ValueError(f"Invalid value for {name}. Received: {raw!r}. Expected a positive integer.")
    return value


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"Invalid value for {name}. Received: {raw!r}. Expected a positive number.") from None
    if not (value > 0 and math.isfinite(value)):  # 'nan' and 'inf' parse as floats
        raise ValueError(f"Invalid value for {name}. Received: {raw!r}. Expected a positive, finite number.")
    return value


METRICS_FILENAME = "training_metrics.json"


def metrics_filename_problem(name: str) -> str | None:
    """Why ``name`` cannot be METRICS_FILENAME (a base name), or None.

    Example::

        metrics_filename_problem("runs/training_metrics.json")   # "it contains '/' ..."
    """
    if not name.strip():
        return "it is empty"
    if "/" in name:
        return "it contains '/' (a base name is matched against the last part of each object name)"
    if ".." in name:
        return "it contains '..'"
    if "\x00" in name or not name.isprintable():
        return "it contains a control character"
    return None


def check_metrics_filename(env: Mapping[str, str] | None = None) -> str:
    """METRICS_FILENAME from ``env`` (default ``os.environ``), or the default; ValueError when unusable.

    Cheap: the function calls it for every event, before its name filter, so
    a bad value is a configuration error (retried, logged) rather than every
    upload silently matching nothing.
    """
    env = os.environ if env is None else env
    name = env.get("METRICS_FILENAME") or METRICS_FILENAME
    problem = metrics_filename_problem(name)
    if problem:
        raise ValueError(f"Invalid value for METRICS_FILENAME. Received: {name!r}: {problem}. Expected a base name.")
    return name


# libpq's parse errors, as the kind of mistake they mean (libpq's own text quotes
# the string, and with it the password).
_DSN_MISTAKES = (
    ("invalid percent-encoded token", "a '%' not followed by two hex digits (write a '%' in the password as %25)"),
    ("invalid uri query parameter", "an unknown parameter after '?'"),
    ("ipv6", "an unclosed '[' around an IPv6 host"),
    ('missing "="', "a word without '=' (expected key=value pairs, values with spaces in single quotes)"),
    ("unterminated quoted string", "an unterminated quoted value"),
    ("invalid connection option", "an unknown connection option"),
)


def database_url_problem(url: str) -> str | None:
    """The kind of mistake in a PostgreSQL URL or libpq DSN, or None; never quotes it.

    Example::

        database_url_problem("postgresql://u:p%zz@db/app")   # "a '%' not followed by two hex digits ..."
    """
    import psycopg2
    from psycopg2.extensions import parse_dsn

    try:
        params = parse_dsn(url)
    except psycopg2.ProgrammingError as exc:
        text = str(exc).lower()
        return next((kind for marker, kind in _DSN_MISTAKES if marker in text), "libpq cannot parse it")
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgres", "postgresql"):
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        if "@" not in authority and "@" in rest:
            return (
                "a '/', '?' or '#' before the '@' (percent-encode them in the user name or password: / as %2F, "
                "? as %3F, # as %23; base64 passwords often hold '/', '+' and '=')"
            )
        if authority.count("@") > 1:
            return "more than one '@' before the host (write an '@' in the user name or password as %40)"
    if any(not p.strip().isdigit() for p in (params.get("port") or "0").split(",") if p.strip()):
        return "the port is not a number"
    return None


def check_database_url(url: str | None, setting: str = "DATABASE_URL") -> None:
    """ValueError naming ``setting`` and the kind of mistake when ``url`` is malformed; the value is never quoted."""
    if url is None:
        return
    from ingest.redact import not_shown  # the one rule for showing connection strings

    problem = database_url_problem(url)
    if problem:
        raise ValueError(not_shown(setting, problem))


def quicktest_table_parts(table: str) -> tuple[str, ...]:
    """``('table',)`` or ``('schema', 'table')`` for QUICKTEST_TABLE; ValueError for anything else.

    Example::

        quicktest_table_parts("public.ml_platform_quicktest")   # ('public', 'ml_platform_quicktest')
    """
    parts = tuple(table.split("."))
    if not table or "\x00" in table or len(parts) > 2 or not all(parts):
        raise ValueError(
            f"Invalid value for QUICKTEST_TABLE. Received: {table!r}. Expected a table name, or schema.table "
            "(each part used as one quoted identifier; an unqualified name is found on the search_path)."
        )
    return parts


NOTIFY_CHANNEL = "training_metrics"
# An unquoted identifier as PostgreSQL folds it: what `LISTEN name` hears
# (`LISTEN Metrics` listens on "metrics"; pg_notify('Metrics') would reach nobody).
_CHANNEL = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_notify_channel(channel: str) -> str:
    """NOTIFY_CHANNEL as given, "" (no notifications) or a usable channel name; ValueError otherwise.

    Example::

        check_notify_channel("training_metrics")   # 'training_metrics'
        check_notify_channel("Training-Metrics")   # ValueError naming NOTIFY_CHANNEL
    """
    if channel and not _CHANNEL.fullmatch(channel):
        raise ValueError(
            f"Invalid value for NOTIFY_CHANNEL. Received: {_shown(channel)}. Expected a PostgreSQL channel"
            " name: lower-case letters, digits and '_', not starting with a digit, at most 63 characters"
            " (what `LISTEN name` listens on), or empty for no notifications."
        )
    return channel


def _shown(value: str) -> str:
    """``repr`` of a setting's value, clipped: an error message quotes at most 80 characters of it."""
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:79] + "…"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the ingestion reads from its environment.

    Args:
        database_url: libpq URL or DSN (``DATABASE_URL``); None (default) means
            libpq's own ``PG*`` variables. Cloud SQL: ``host=/cloudsql/P:R:I dbname=...``.
            Checked when the settings are made; the error says what kind of mistake
            it is and never quotes the value (it may hold a password).
        quicktest_table: the platform's table (``QUICKTEST_TABLE``), default
            ``ml_platform_quicktest``, or ``schema.table``; each part quoted as an
            identifier, never formatted into SQL.
        metrics_filename: the base name that is ingested (``METRICS_FILENAME``).
        max_metrics_bytes: larger objects are rejected (``MAX_METRICS_BYTES``),
            default 16 MiB; also caps the decompressed size of gzip objects.
            Above ~25 MiB a single dense file may exceed a 1 GiB instance.
        gcs_timeout: seconds to wait for GCS to connect / send data
            (``GCS_TIMEOUT_SECONDS``, default 30).
        db_connect_timeout: seconds to wait for a database connection
            (``DB_CONNECT_TIMEOUT_SECONDS``, default 10).
        db_pool_size: most database connections per process (``DB_POOL_SIZE``, default 8).
        memory_budget_bytes: memory for files in flight per process
            (``MEMORY_BUDGET_BYTES``, default 768 MiB: a 1 GiB instance less its
            runtime); ``deploy.sh`` sets it from ``--memory`` (see ``ingest.memory``).
        notify_channel: the PostgreSQL channel told of each row write
            (``NOTIFY_CHANNEL``, default ``training_metrics``; set and empty: no
            notifications). A lower-case unquoted identifier, so that the
            platform's ``LISTEN`` hears it.

    Example::

        Settings.from_env({"QUICKTEST_TABLE": "ml_platform_quicktest"}).metrics_filename
        # 'training_metrics.json'
    """

    database_url: str | None = None
    quicktest_table: str = "ml_platform_quicktest"
    metrics_filename: str = METRICS_FILENAME
    # 16 MiB: ~50x a real file (50 epochs x 140 metrics is ~0.3 MB), and one file
    # this size, however dense, fits the memory budget alone (ingest.memory).
    max_metrics_bytes: int = 16 * 1024 * 1024
    gcs_timeout: float = 30.0
    db_connect_timeout: int = 10
    db_pool_size: int = 8
    memory_budget_bytes: int = BUDGET_BYTES
    notify_channel: str = NOTIFY_CHANNEL

    def __post_init__(self) -> None:
        quicktest_table_parts(self.quicktest_table)
        check_notify_channel(self.notify_channel)
        problem = metrics_filename_problem(self.metrics_filename)
        if problem:
            raise ValueError(
                f"Invalid value for METRICS_FILENAME. Received: {self.metrics_filename!r}: {problem}. "
                "Expected a base name."
            )
        if not (self.gcs_timeout > 0 and math.isfinite(self.gcs_timeout)):
            raise ValueError(f"Invalid value for GCS_TIMEOUT_SECONDS. Received: {self.gcs_timeout!r}. "
                             "Expected a positive, finite number.")
        check_database_url(self.database_url)

    @property
    def quicktest_table_name(self) -> tuple[str, ...]:
        """QUICKTEST_TABLE as identifier parts: ``sql.Identifier(*settings.quicktest_table_name)``."""
        return quicktest_table_parts(self.quicktest_table)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default ``os.environ``); empty means default."""
        env = os.environ if env is None else env
        defaults = cls()
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            quicktest_table=env.get("QUICKTEST_TABLE") or defaults.quicktest_table,
            metrics_filename=env.get("METRICS_FILENAME") or defaults.metrics_filename,
            max_metrics_bytes=_positive_int(env, "MAX_METRICS_BYTES", defaults.max_metrics_bytes),
            gcs_timeout=_positive_float(env, "GCS_TIMEOUT_SECONDS", defaults.gcs_timeout),
            db_connect_timeout=_positive_int(env, "DB_CONNECT_TIMEOUT_SECONDS", defaults.db_connect_timeout),
            db_pool_size=_positive_int(env, "DB_POOL_SIZE", defaults.db_pool_size),
            memory_budget_bytes=_positive_int(env, "MEMORY_BUDGET_BYTES", defaults.memory_budget_bytes),
            # Unlike the others, set and empty is a value: no notifications.
            notify_channel=env.get("NOTIFY_CHANNEL", defaults.notify_channel).strip(),
        )
