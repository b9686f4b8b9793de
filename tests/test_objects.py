"""Event -> object reference, and settings from the environment."""

from __future__ import annotations

import pytest

from ingest.config import Settings
from ingest.errors import BadEvent
from ingest.objects import ObjectRef
from ingest.pipeline import is_metrics_object

RESOURCE = {
    "kind": "storage#object",
    "bucket": "ml-artifacts",
    "name": "quick_tests/42/training_metrics.json",
    "generation": "1700000000123456",
    "metageneration": "1",
    "size": "1048576",
    "contentType": "application/json",
    "contentEncoding": "gzip",
}


def test_resource_strings_become_integers() -> None:
    """GCS sends generation, metageneration and size as strings; the reference holds ints."""
    ref = ObjectRef.from_resource(RESOURCE)
    assert ref == ObjectRef(
        bucket="ml-artifacts",
        name="quick_tests/42/training_metrics.json",
        generation=1700000000123456,
        metageneration=1,
        size=1048576,
        content_type="application/json",
        content_encoding="gzip",
    )
    assert ref.folder_uri == "gs://ml-artifacts/quick_tests/42"
    assert ObjectRef.from_resource({"bucket": "b", "name": "training_metrics.json", "generation": 7}).folder_uri == "gs://b"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({**RESOURCE, "generation": None}, "no 'generation'"),
        ({k: v for k, v in RESOURCE.items() if k != "bucket"}, "no 'bucket'"),
        ({**RESOURCE, "name": ""}, "no 'name'"),
        ({**RESOURCE, "generation": "12a"}, "'generation' is not an integer"),
        ({**RESOURCE, "size": "-1"}, "'size' is not an integer"),
        ({**RESOURCE, "generation": True}, "'generation' is not an integer"),
        ({**RESOURCE, "name": 5}, "'name' is not a string"),
        (["not", "a", "resource"], "not an object resource"),
        ({**RESOURCE, "generation": str(2**70)}, "'generation' is out of the int64 range"),
        ({**RESOURCE, "generation": str(2**63)}, "'generation' is out of the int64 range"),
        ({**RESOURCE, "size": "9" * 5000}, "'size' is out of the int64 range"),
        ({**RESOURCE, "generation": 2**70}, "'generation' is out of the int64 range"),
        ({**RESOURCE, "name": "q/1/\x00/training_metrics.json"}, "'name' is not a UTF-8 string without NUL"),
        ({**RESOURCE, "name": "q/\ud800/training_metrics.json"}, "'name' is not a UTF-8 string without NUL"),
        ({**RESOURCE, "bucket": "b\x00"}, "'bucket' is not a UTF-8 string without NUL"),
    ],
)
def test_malformed_resource_is_a_bad_event(data: object, fragment: str) -> None:
    """A malformed object resource raises BadEvent naming the field."""
    with pytest.raises(BadEvent, match=fragment.replace("(", r"\(")):
        ObjectRef.from_resource(data)  # type: ignore[arg-type]


def test_largest_int64_generation_is_accepted() -> None:
    """The largest int64 generation is a valid one (the range check is not off by one)."""
    assert ObjectRef.from_resource({**RESOURCE, "generation": str(2**63 - 1)}).generation == 2**63 - 1


def test_name_filter_matches_the_base_name_only() -> None:
    """Only objects whose base name is the metrics file name are ingested."""
    settings = Settings()
    assert is_metrics_object("quick_tests/42/training_metrics.json", settings)
    assert is_metrics_object("training_metrics.json", settings)
    assert not is_metrics_object("quick_tests/42/model/saved_model.pb", settings)
    assert not is_metrics_object("quick_tests/42/training_metrics.json.tmp", settings)
    assert not is_metrics_object("quick_tests/42/old_training_metrics.json", settings)
    assert is_metrics_object("a/m.json", Settings(metrics_filename="m.json"))
    assert is_metrics_object("a/m.json", "m.json") and not is_metrics_object("a/training_metrics.json", "m.json")


def test_settings_from_env_defaults_and_overrides() -> None:
    """Settings read the documented variables; empty values mean the default."""
    assert Settings.from_env({}) == Settings(
        database_url=None,
        quicktest_table="ml_platform_quicktest",
        metrics_filename="training_metrics.json",
        max_metrics_bytes=16777216,
    )
    settings = Settings.from_env(
        {
            "DATABASE_URL": "host=/cloudsql/p:r:i dbname=platform",
            "QUICKTEST_TABLE": "qt",
            "METRICS_FILENAME": "m.json",
            "MAX_METRICS_BYTES": "1000",
            "GCS_TIMEOUT_SECONDS": "2.5",
            "DB_POOL_SIZE": "",
        }
    )
    assert (settings.database_url, settings.quicktest_table, settings.metrics_filename) == (
        "host=/cloudsql/p:r:i dbname=platform",
        "qt",
        "m.json",
    )
    assert (settings.max_metrics_bytes, settings.gcs_timeout, settings.db_pool_size) == (1000, 2.5, 8)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"MAX_METRICS_BYTES": "lots"}, "MAX_METRICS_BYTES"),
        ({"MAX_METRICS_BYTES": "0"}, "MAX_METRICS_BYTES"),
        ({"GCS_TIMEOUT_SECONDS": "-1"}, "GCS_TIMEOUT_SECONDS"),
        ({"METRICS_FILENAME": "a/b.json"}, "METRICS_FILENAME"),
    ],
)
def test_invalid_settings_say_which_variable(env: dict[str, str], fragment: str) -> None:
    """A bad environment value raises ValueError naming the variable."""
    with pytest.raises(ValueError, match=fragment):
        Settings.from_env(env)
