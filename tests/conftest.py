"""Shared test fixtures: one PostgreSQL and one GCS emulator per session.

Fixture modules live in tests/support/ and are registered here, one per area.
"""

from __future__ import annotations

import os

import pytest

from ingest.config import LIBRARY_ENV, Settings

pytest_plugins = [
    "tests.support.postgres",
    "tests.support.gcs",
    "tests.support.scratch_db",
    "tests.support.platform_db",
    "tests.support.function_server",
    "tests.support.localstack",
    "tests.support.mlflow_server",
]

# The product's own settings (Settings' list, so a new one is cleared too) and
# those of the clients underneath: a developer's shell must not leak into a test.
PRODUCT_ENV = (*Settings.ENV, *LIBRARY_ENV)


@pytest.fixture(autouse=True)
def _clean_product_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PRODUCT_ENV:
        monkeypatch.delenv(name, raising=False)


def pytest_sessionstart(session: pytest.Session) -> None:
    # TensorFlow's C++ banner is noise in test output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
