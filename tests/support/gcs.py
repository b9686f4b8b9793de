"""One GCS emulator per test session, reached through the real client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from metrics_ingest.localstack.emulator import GcsEmulator


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    """The session's emulator; tests set ``STORAGE_EMULATOR_HOST`` to its url
    (see ``gcs_env``) and create the buckets they use."""
    emulator = GcsEmulator().start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def gcs_env(gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> GcsEmulator:
    """Point google-cloud-storage at the emulator for one test; clears faults after."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "local-test")
    yield gcs_emulator
    gcs_emulator.clear_faults()
