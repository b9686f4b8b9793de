"""Every way a save can fail leaves what could be kept in a readable local file, and the error names it.

The paths: the upload (403, 412, retries exhausted, checksum mismatch: test_trainer_storage.py),
the credentials (test_trainer_storage.py::test_a_failing_credentials_refresh_leaves_a_local_copy),
and here: turning the document into JSON, writing a local target, reading the file a
restarted run continues (local and GCS), and the fallback copy itself.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest
from google.cloud import storage

from metrics_ingest.localstack.emulator import Fault, GcsEmulator
from tests.support.format_checks import check_strict_json
from trainer_callbacks import MetricsCollector, MetricsSaveError, MetricsUploadError, RetryPolicy

FILE = "training_metrics.json"
FAST = RetryPolicy(initial=0.05, maximum=0.2, deadline=1.0, timeout=10)


def kept(error: MetricsSaveError) -> dict:
    """The fallback copy the error names, parsed (it must be valid JSON)."""
    assert error.fallback_path is not None and str(error.fallback_path) in str(error)
    return json.loads(Path(error.fallback_path).read_bytes())


def test_a_document_that_is_not_json_is_kept_locally(tmp_path: Path) -> None:
    """A continued file holding a lone surrogate (an escaped one is valid JSON text) cannot be written as UTF-8: the save keeps everything else locally, the target untouched."""
    earlier = b'{"epochs": [0], "loss": {"loss": [1.0]}, "params": {"path": "/data/\\udcff"}}'
    (tmp_path / FILE).write_bytes(earlier)
    c = MetricsCollector(tmp_path, fallback_dir=tmp_path / "fallback")
    c.training_started(1)
    c.log_metric("loss", 0.5, step=1)
    with pytest.raises(MetricsSaveError, match="could not turn the document into JSON") as caught:
        c.save()
    assert isinstance(caught.value.__cause__, UnicodeEncodeError)
    doc = kept(caught.value)
    assert doc["epochs"] == [0, 1] and doc["loss"]["loss"] == [1.0, 0.5]
    assert doc["params"] == {"path": "/data/\udcff"}  # kept exactly, as a JSON escape
    assert (tmp_path / FILE).read_bytes() == earlier


def test_a_flush_that_is_not_json_keeps_a_local_copy_and_training_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The same during a periodic flush: a warning, the fallback copy, no exception into training."""
    (tmp_path / FILE).write_bytes(b'{"epochs": [0], "params": {"path": "\\udcff"}}')
    c = MetricsCollector(tmp_path, flush_every=1e-9, fallback_dir=tmp_path / "fallback")
    c.training_started(1)
    c.log_metric("loss", 0.5, step=1)
    with caplog.at_level(logging.WARNING, logger="trainer_callbacks"):
        assert c.maybe_flush() is False
    assert any("periodic flush" in r.getMessage() and "training continues" in r.getMessage() for r in caplog.records)
    assert check_strict_json((tmp_path / "fallback" / "local" / str(tmp_path / FILE).lstrip("/")).read_bytes())["epochs"] == [0, 1]


def test_a_local_target_that_cannot_be_written_is_kept_in_the_fallback_folder(tmp_path: Path) -> None:
    """A local output folder that cannot be created (a file is in the way) ends in the fallback copy and MetricsSaveError, not a bare OSError."""
    (tmp_path / "runs").write_text("not a folder")
    c = MetricsCollector(tmp_path / "runs" / "42", fallback_dir=tmp_path / "fallback")
    c.log_metric("loss", 0.5, step=0)
    with pytest.raises(MetricsSaveError, match="could not write") as caught:
        c.save()
    assert isinstance(caught.value.__cause__, OSError)
    assert kept(caught.value)["loss"]["loss"] == [0.5]
    assert caught.value.fallback_path == str(tmp_path / "fallback" / "local" / str(tmp_path / "runs" / "42" / FILE).lstrip("/"))


def test_when_the_fallback_copy_fails_too_the_error_says_so(tmp_path: Path) -> None:
    """If even the fallback folder cannot be written, the error names both failures and fallback_path is None."""
    (tmp_path / "runs").write_text("not a folder")
    c = MetricsCollector(tmp_path / "runs" / "42", fallback_dir=tmp_path / "runs" / "fallback")
    c.log_metric("loss", 0.5, step=0)
    with pytest.raises(MetricsSaveError, match="could not be written either") as caught:
        c.save()
    assert caught.value.fallback_path is None


@pytest.fixture
def bucket(gcs_env: GcsEmulator) -> str:
    gcs_env.create_bucket("trainer-save-failures")
    return "trainer-save-failures"


def test_a_gcs_file_that_cannot_be_read_to_continue_is_not_replaced(gcs_env: GcsEmulator, bucket: str, tmp_path: Path) -> None:
    """Past epoch 0, reading the object fails (403): training_started raises, the failed save keeps this run's data locally and leaves the object alone."""
    folder = f"quick_tests/{uuid.uuid4().hex[:12]}"
    blob = storage.Client().bucket(bucket).blob(f"{folder}/{FILE}")
    blob.upload_from_string(json.dumps({"epochs": [0, 1], "loss": {"loss": [1.0, 0.9]}}))
    generation = blob.generation
    gcs_env.inject(Fault(method="GET", path=rf"/b/{bucket}/o/.*{FILE}", status=403, times=10**6))
    c = MetricsCollector(f"gs://{bucket}/{folder}", retry=FAST, fallback_dir=tmp_path / "fallback")
    c.log_param("batch_size", 32)
    with pytest.raises(Exception, match="403"):
        c.training_started(2)
    with pytest.raises(Exception, match="403"):
        c.log_metric("loss", 0.8, step=2)  # every use tries the read again: nothing goes on over an unread file
    with pytest.raises(MetricsSaveError, match="could not read .* to continue it") as caught:
        c.save(status="failed", error="preempted again")
    assert not isinstance(caught.value, MetricsUploadError)
    doc = kept(caught.value)
    assert doc["params"] == {"batch_size": 32} and doc["status"] == "failed" and doc["error"] == "preempted again"
    gcs_env.clear_faults()
    blob.reload()
    assert blob.generation == generation
