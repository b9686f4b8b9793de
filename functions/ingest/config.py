"""Configuration from the environment (DESIGN "Configuration").

Example::

    settings = Settings.from_env()          # reads DATABASE_URL, QUICKTEST_TABLE, ...
    settings = Settings(database_url="postgresql://localhost/app", quicktest_table="qt")
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping


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
    if not value > 0:
        raise ValueError(f"Invalid value for {name}. Received: {raw!r}. Expected a positive number.")
    return value


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the ingestion reads from its environment.

    Args:
        database_url: libpq URL or DSN (``DATABASE_URL``); None (default) means
            libpq's own ``PG*`` variables. Cloud SQL: ``host=/cloudsql/P:R:I dbname=...``.
        quicktest_table: the platform's table (``QUICKTEST_TABLE``), default
            ``ml_platform_quicktest``; always quoted as one identifier, never formatted into SQL.
        metrics_filename: the base name that is ingested (``METRICS_FILENAME``).
        max_metrics_bytes: larger objects are rejected (``MAX_METRICS_BYTES``),
            default 64 MiB; also caps the decompressed size of gzip objects.
        gcs_timeout: seconds to wait for GCS to connect / send data
            (``GCS_TIMEOUT_SECONDS``, default 30).
        db_connect_timeout: seconds to wait for a database connection
            (``DB_CONNECT_TIMEOUT_SECONDS``, default 10).
        db_pool_size: most database connections per process (``DB_POOL_SIZE``, default 8).

    Example::

        Settings.from_env({"QUICKTEST_TABLE": "ml_platform_quicktest"}).metrics_filename
        # 'training_metrics.json'
    """

    database_url: str | None = None
    quicktest_table: str = "ml_platform_quicktest"
    metrics_filename: str = "training_metrics.json"
    max_metrics_bytes: int = 64 * 1024 * 1024
    gcs_timeout: float = 30.0
    db_connect_timeout: int = 10
    db_pool_size: int = 8

    def __post_init__(self) -> None:
        if not self.quicktest_table or "\x00" in self.quicktest_table:
            raise ValueError(
                f"Invalid value for QUICKTEST_TABLE. Received: {self.quicktest_table!r}. "
                "Expected a table name (used as one quoted identifier, found on the search_path)."
            )
        if not self.metrics_filename or "/" in self.metrics_filename:
            raise ValueError(
                f"Invalid value for METRICS_FILENAME. Received: {self.metrics_filename!r}. "
                "Expected a base name without '/'."
            )

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
        )
