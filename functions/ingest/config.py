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
import typing
from collections.abc import Mapping

# Every default lives here (DESIGN "Configuration"); nothing else spells them.
QUICKTEST_TABLE = "ml_platform_quicktest"
# 16 MiB: ~50x a real file (50 epochs x 140 metrics is ~0.3 MB), and one file
# this size, however dense, fits the default memory budget alone (ingest.memory).
MAX_METRICS_BYTES = 16 * 1024 * 1024
# The memory for files in flight per process (MEMORY_BUDGET_BYTES): a 1 GiB
# instance less the runtime (~75 MiB measured, more while serving) and
# allocator headroom. deploy.sh sets it from the instance's --memory.
MEMORY_BUDGET_BYTES = 768 * 2**20
MAX_EVENT_AGE = "6h"

# The ranges the clients underneath accept, or past which a value is a typo:
# (low, high), both inclusive. GCS_TIMEOUT_SECONDS goes to a socket timeout and
# a retry deadline (an hour is already longer than any function may run; 1e10
# overflows the C timeval); libpq's connect_timeout is an int of seconds (0 would
# mean "wait forever"); jsonb stores at most 255 MiB per value.
BOUNDS: dict[str, tuple[float, float]] = {
    "MAX_METRICS_BYTES": (1, 256 * 2**20),
    "GCS_TIMEOUT_SECONDS": (0.001, 3600),
    "DB_CONNECT_TIMEOUT_SECONDS": (1, 3600),
    "DB_POOL_SIZE": (1, 1000),
    "MEMORY_BUDGET_BYTES": (2**20, 2**40),
    # Eventarc stops redelivering after 24 hours: a longer age never expires anything.
    "MAX_EVENT_AGE": (1, 24 * 3600),
}
_DURATION = re.compile(r"^([0-9]{1,9}(?:\.[0-9]{1,6})?)([smh])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def _bounds_text(name: str) -> str:
    low, high = BOUNDS[name]
    if name == "MAX_EVENT_AGE":
        return "from 1s to 24h"
    return "from {} to {}".format(*(int(v) if float(v).is_integer() else v for v in (low, high)))


def _number(env: Mapping[str, str], name: str, default: float, kind: type) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    what = "an integer" if kind is int else "a finite number"
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"Invalid value for {name}. Received: {raw!r}. Expected {what} {_bounds_text(name)}.") from None
    return _in_range(name, value, raw)


def _in_range(name: str, value: float, raw: object = None) -> float:
    low, high = BOUNDS[name]
    if not (math.isfinite(value) and low <= value <= high):  # 'nan' and 'inf' parse as floats
        shown = raw if raw is not None else value
        kind = (
            "a duration" if name == "MAX_EVENT_AGE"
            else "a positive, finite number" if isinstance(value, float) else "a positive integer"
        )
        raise ValueError(f"Invalid value for {name}. Received: {shown!r}. Expected {kind} {_bounds_text(name)}.")
    return value


def parse_duration(text: str, name: str = "MAX_EVENT_AGE") -> float:
    """``'90s'``, ``'30m'``, ``'6h'`` -> seconds; ValueError naming ``name`` otherwise.

    Example::

        parse_duration("6h")   # 21600.0
    """
    found = _DURATION.match(text.strip())
    if not found:
        raise ValueError(f"Invalid value for {name}. Received: {text!r}. Expected a number and s, m or h (e.g. 90s, 6h).")
    seconds = float(found.group(1)) * _UNIT_SECONDS[found.group(2)]
    return _in_range(name, seconds, text)


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


# Read by the clients underneath, not by Settings: libpq (PG*), google-cloud-storage
# (STORAGE_EMULATOR_HOST) and google-auth. Listed so that tests can clear them too.
LIBRARY_ENV = (
    "STORAGE_EMULATOR_HOST",
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the ingestion reads from its environment, and the one place it is read.

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
            default 16 MiB, at most 256 MiB; also caps the decompressed size of
            gzip objects. Above 16 MiB a single dense file may exceed a 1 GiB instance (48x: ingest.memory).
        gcs_timeout: seconds to wait for GCS to connect / send data
            (``GCS_TIMEOUT_SECONDS``, default 30, at most 3600).
        db_connect_timeout: seconds to wait for a database connection
            (``DB_CONNECT_TIMEOUT_SECONDS``, default 10, 1 to 3600).
        db_pool_size: most database connections per process (``DB_POOL_SIZE``, default 8, at most 1000).
        memory_budget_bytes: memory for files in flight per process
            (``MEMORY_BUDGET_BYTES``, default 768 MiB: a 1 GiB instance less its
            runtime); ``deploy.sh`` sets it from ``--memory`` (see ``ingest.memory``).
        notify_channel: the PostgreSQL channel told of each row write
            (``NOTIFY_CHANNEL``, default ``training_metrics``; set and empty: no
            notifications). A lower-case unquoted identifier, so that the
            platform's ``LISTEN`` hears it.
        max_event_age: seconds (``MAX_EVENT_AGE``: a number and ``s``/``m``/``h``,
            default ``6h``, at most 24h): an older event that would be retried is
            recorded ``expired`` and acknowledged instead.

    Every numeric setting is range-checked (``BOUNDS``): a value outside is
    refused with one line naming the variable.

    Example::

        Settings.from_env({"QUICKTEST_TABLE": "ml_platform_quicktest"}).metrics_filename
        # 'training_metrics.json'
    """

    # The variables from_env reads (tests clear these, plus LIBRARY_ENV).
    ENV: typing.ClassVar[tuple[str, ...]] = (
        "DATABASE_URL",
        "QUICKTEST_TABLE",
        "METRICS_FILENAME",
        "MAX_METRICS_BYTES",
        "GCS_TIMEOUT_SECONDS",
        "DB_CONNECT_TIMEOUT_SECONDS",
        "DB_POOL_SIZE",
        "MEMORY_BUDGET_BYTES",
        "MAX_EVENT_AGE",
        "NOTIFY_CHANNEL",
    )

    database_url: str | None = None
    quicktest_table: str = QUICKTEST_TABLE
    metrics_filename: str = METRICS_FILENAME
    max_metrics_bytes: int = MAX_METRICS_BYTES
    gcs_timeout: float = 30.0
    db_connect_timeout: int = 10
    db_pool_size: int = 8
    memory_budget_bytes: int = MEMORY_BUDGET_BYTES
    max_event_age: float = parse_duration(MAX_EVENT_AGE)
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
        for name, value in (
            ("MAX_METRICS_BYTES", self.max_metrics_bytes),
            ("GCS_TIMEOUT_SECONDS", self.gcs_timeout),
            ("DB_CONNECT_TIMEOUT_SECONDS", self.db_connect_timeout),
            ("DB_POOL_SIZE", self.db_pool_size),
            ("MEMORY_BUDGET_BYTES", self.memory_budget_bytes),
            ("MAX_EVENT_AGE", self.max_event_age),
        ):
            _in_range(name, value)
        check_database_url(self.database_url)

    @property
    def quicktest_table_name(self) -> tuple[str, ...]:
        """QUICKTEST_TABLE as identifier parts: ``sql.Identifier(*settings.quicktest_table_name)``."""
        return quicktest_table_parts(self.quicktest_table)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default ``os.environ``); empty means default."""
        env = os.environ if env is None else env
        d = cls.__dataclass_fields__
        age = env.get("MAX_EVENT_AGE")
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            quicktest_table=env.get("QUICKTEST_TABLE") or QUICKTEST_TABLE,
            metrics_filename=env.get("METRICS_FILENAME") or METRICS_FILENAME,
            max_metrics_bytes=int(_number(env, "MAX_METRICS_BYTES", MAX_METRICS_BYTES, int)),
            gcs_timeout=_number(env, "GCS_TIMEOUT_SECONDS", d["gcs_timeout"].default, float),
            db_connect_timeout=int(_number(env, "DB_CONNECT_TIMEOUT_SECONDS", d["db_connect_timeout"].default, int)),
            db_pool_size=int(_number(env, "DB_POOL_SIZE", d["db_pool_size"].default, int)),
            memory_budget_bytes=int(_number(env, "MEMORY_BUDGET_BYTES", MEMORY_BUDGET_BYTES, int)),
            max_event_age=parse_duration(age) if age and age.strip() else parse_duration(MAX_EVENT_AGE),
            # Unlike the others, set and empty is a value: no notifications.
            notify_channel=env.get("NOTIFY_CHANNEL", NOTIFY_CHANNEL).strip(),
        )

    @classmethod
    def quicktest_table_from_env(cls, env: Mapping[str, str] | None = None) -> str:
        """QUICKTEST_TABLE alone (checked), for commands that need no other setting.

        Example::

            Settings.quicktest_table_from_env({})   # 'ml_platform_quicktest'
        """
        env = os.environ if env is None else env
        table = env.get("QUICKTEST_TABLE") or QUICKTEST_TABLE
        quicktest_table_parts(table)
        return table
