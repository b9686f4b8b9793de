"""Shared test fixtures: one PostgreSQL and one GCS emulator per session.

Fixture modules live in tests/support/ and are registered here, one per area.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.support.postgres",
    "tests.support.gcs",
    "tests.support.scratch_db",
    "tests.support.platform_db",
    "tests.support.function_server",
    "tests.support.localstack",
    "tests.support.mlflow_server",
]

# The product's own settings: a developer's shell must not leak into a test.
PRODUCT_ENV = (
    "DATABASE_URL",
    "QUICKTEST_TABLE",
    "METRICS_FILENAME",
    "MAX_METRICS_BYTES",
    "STORAGE_EMULATOR_HOST",
    "GCS_TIMEOUT_SECONDS",
    "DB_CONNECT_TIMEOUT_SECONDS",
    "DB_POOL_SIZE",
    "NOTIFY_CHANNEL",
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


@pytest.fixture(autouse=True)
def _clean_product_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PRODUCT_ENV:
        monkeypatch.delenv(name, raising=False)


def pytest_sessionstart(session: pytest.Session) -> None:
    # TensorFlow's C++ banner is noise in test output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
