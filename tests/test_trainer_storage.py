"""Saving training_metrics.json to GCS (the emulator, through the real client): retries, preconditions, fallback."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from google.cloud import storage

from metrics_ingest.localstack.emulator import Fault, GcsEmulator
from tests.support.format_checks import check_document, check_strict_json
from trainer_callbacks import MetricsCollector, MetricsUploadError, RetryPolicy

BUCKET = "trainer-test"
# Fast backoff so the failure tests take about a second, not the default five minutes.
FAST = RetryPolicy(initial=0.05, maximum=0.2, deadline=1.5, timeout=10)


@pytest.fixture
def gcs(gcs_env: GcsEmulator) -> GcsEmulator:
    gcs_env.create_bucket(BUCKET)
    return gcs_env


@pytest.fixture
def folder() -> str:
    return f"quick_tests/{uuid.uuid4().hex[:12]}"


def blob(folder: str) -> storage.Blob:
    return storage.Client().bucket(BUCKET).blob(f"{folder}/training_metrics.json")


def upload_fault(status: int, times: int = 1) -> Fault:
    return Fault(method="POST", path=rf"^/upload/storage/v1/b/{BUCKET}/o$", status=status, times=times)


def collector(folder: str, tmp_path: Path, **kwargs: object) -> MetricsCollector:
    return MetricsCollector(f"gs://{BUCKET}/{folder}", retry=FAST, fallback_dir=tmp_path / "fallback", **kwargs)


def test_save_uploads_one_object_and_saves_again_over_its_own_generation(gcs: GcsEmulator, folder: str, tmp_path: Path) -> None:
    """Each save is one object version; the second save's precondition is the first's generation."""
    c = collector(folder, tmp_path)
    c.log_metric("loss", 0.5, step=0)
    assert c.save(status="running") == f"gs://{BUCKET}/{folder}/training_metrics.json"
    first = blob(folder)
    first.reload()
    c.log_metric("loss", 0.4, step=1)
    c.save()
    second = blob(folder)
    second.reload()
    assert second.generation != first.generation
    assert second.content_type == "application/json"
    doc = check_strict_json(second.download_as_bytes())
    assert doc["status"] == "completed" and doc["loss"]["loss"] == [0.5, 0.4]
    check_document(doc)


def test_a_transient_failure_is_retried(gcs: GcsEmulator, folder: str, tmp_path: Path) -> None:
    """A 503 on the upload is retried with backoff and the save succeeds without a fallback copy."""
    c = collector(folder, tmp_path)
    c.log_metric("loss", 0.5, step=0)
    c.save(status="running")  # learns the generation; the next save carries a precondition
    fault = gcs.inject(upload_fault(503))
    c.log_metric("loss", 0.4, step=1)
    c.save()
    assert fault.hits == 1
    assert json.loads(blob(folder).download_as_bytes())["loss"]["loss"] == [0.5, 0.4]
    assert not (tmp_path / "fallback").exists()


def test_the_first_save_is_retried_too(gcs: GcsEmulator, folder: str, tmp_path: Path) -> None:
    """The first save (precondition: the object does not exist yet) is also retried on a 503."""
    fault = gcs.inject(upload_fault(503))
    c = collector(folder, tmp_path)
    c.log_metric("loss", 0.5, step=0)
    c.save()
    assert fault.hits == 1
    assert json.loads(blob(folder).download_as_bytes())["epochs"] == [0]


def test_a_permanent_failure_leaves_a_local_copy_and_raises(gcs: GcsEmulator, folder: str, tmp_path: Path) -> None:
    """A 403 is not retried: the document goes to the fallback file and the error names it."""
    fault = gcs.inject(upload_fault(403))
    c = collector(folder, tmp_path)
    c.log_metric("loss", 0.5, step=0)
    with pytest.raises(MetricsUploadError) as caught:
        c.save()
    fallback = tmp_path / "fallback" / BUCKET / folder / "training_metrics.json"
    assert str(fallback) in str(caught.value) and caught.value.fallback_path == str(fallback)
    assert fault.hits == 1
    assert check_strict_json(fallback.read_bytes())["loss"]["loss"] == [0.5]
    assert not blob(folder).exists()


def test_transient_failures_beyond_the_deadline_leave_a_local_copy_and_raise(gcs: GcsEmulator, folder: str, tmp_path: Path) -> None:
    """503s until the retry deadline passes: several tries, then the fallback file and an error naming it."""
    fault = gcs.inject(upload_fault(503, times=1000))
    c = collector(folder, tmp_path)
    c.log_metric("loss", 0.5, step=0)
    with pytest.raises(MetricsUploadError, match="gave up retrying") as caught:
        c.save()
    assert fault.hits >= 2
    assert Path(caught.value.fallback_path).is_file()
    assert str(caught.value.fallback_path) in str(caught.value)


def test_another_writer_is_not_clobbered(gcs: GcsEmulator, folder: str, tmp_path: Path) -> None:
    """When someone else replaced the object since our last save, the precondition fails and we keep a local copy."""
    c = collector(folder, tmp_path)
    c.log_metric("loss", 0.5, step=0)
    c.save(status="running")
    blob(folder).upload_from_string(b'{"epochs": []}')  # another job writing the same folder
    c.log_metric("loss", 0.4, step=1)
    with pytest.raises(MetricsUploadError, match="another writer") as caught:
        c.save()
    assert blob(folder).download_as_bytes() == b'{"epochs": []}'
    assert json.loads(Path(caught.value.fallback_path).read_bytes())["epochs"] == [0, 1]


def test_a_new_run_replaces_an_earlier_file_and_resume_continues_it(gcs: GcsEmulator, folder: str, tmp_path: Path) -> None:
    """With resume=False the first save replaces an old object; with resume=True the old epochs are kept."""
    blob(folder).upload_from_string(json.dumps({"epochs": [0], "loss": {"loss": [9.0]}}))
    fresh = collector(folder, tmp_path, resume=False)
    fresh.log_metric("loss", 1.0, step=0)
    fresh.save(status="failed", error="preempted")
    assert json.loads(blob(folder).download_as_bytes())["loss"]["loss"] == [1.0]

    resumed = collector(folder, tmp_path, resume=True)
    resumed.log_metric("loss", 0.5, step=1)
    resumed.save()
    doc = json.loads(blob(folder).download_as_bytes())
    assert doc["epochs"] == [0, 1] and doc["loss"]["loss"] == [1.0, 0.5] and doc["status"] == "completed"
    check_document(doc)


def test_a_resumed_run_does_not_clobber_a_newer_version(gcs: GcsEmulator, folder: str, tmp_path: Path) -> None:
    """Resume pins the generation it read: if the object changes afterwards, the save refuses and keeps a local copy."""
    blob(folder).upload_from_string(json.dumps({"epochs": [0], "loss": {"loss": [9.0]}}))
    resumed = collector(folder, tmp_path, resume=True)
    assert resumed.epochs == [0]  # the first use reads the file (and pins its generation)
    blob(folder).upload_from_string(b'{"epochs": [0, 1]}')
    resumed.log_metric("loss", 0.5, step=1)
    with pytest.raises(MetricsUploadError, match="another writer"):
        resumed.save()
    assert blob(folder).download_as_bytes() == b'{"epochs": [0, 1]}'


def test_a_failed_flush_does_not_stop_training_and_the_final_save_has_everything(
    gcs: GcsEmulator, folder: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A periodic flush that cannot upload logs a warning and returns; the next save uploads every epoch."""
    c = collector(folder, tmp_path, flush_every=1e-6)
    c.log_metric("loss", 0.5, step=0)
    gcs.inject(upload_fault(403))
    with caplog.at_level("WARNING", logger="trainer_callbacks"):
        assert c.maybe_flush() is True  # started in the background
        assert c.wait_for_flush(timeout=30)
    assert any("periodic flush" in r.getMessage() and "training continues" in r.getMessage() for r in caplog.records)
    c.log_metric("loss", 0.4, step=1)
    c.save()
    assert json.loads(blob(folder).download_as_bytes())["loss"]["loss"] == [0.5, 0.4]


def test_when_saving_a_failed_run_also_fails_the_training_error_still_propagates(gcs: GcsEmulator, folder: str, tmp_path: Path) -> None:
    """The training error is re-raised (not the upload error), with a note naming the local copy."""
    gcs.inject(upload_fault(403))
    with pytest.raises(RuntimeError, match="worker lost") as caught:
        with collector(folder, tmp_path) as c:
            c.log_metric("loss", 0.5, step=0)
            raise RuntimeError("worker lost")
    fallback = tmp_path / "fallback" / BUCKET / folder / "training_metrics.json"
    assert any(str(fallback) in note for note in caught.value.__notes__)
    doc = check_strict_json(fallback.read_bytes())
    assert doc["status"] == "failed" and doc["error"] == "RuntimeError: worker lost"


def test_resume_reads_gcs_on_entering_the_block_not_in_init(gcs: GcsEmulator, folder: str, tmp_path: Path) -> None:
    """MetricsCollector(gs://..., resume=True) sends no request until the with block starts; entering reads the file."""
    blob(folder).upload_from_string(json.dumps({"epochs": [0], "loss": {"loss": [9.0]}}))
    watch = gcs.inject(Fault(path=rf"{folder}", status=None, times=10**6))  # passes requests through, counting them
    c = collector(folder, tmp_path, resume=True)
    assert watch.hits == 0
    with c:
        assert watch.hits >= 1
        assert c.epochs == [0]
        c.log_metric("loss", 0.5, step=1)
    assert json.loads(blob(folder).download_as_bytes())["loss"]["loss"] == [9.0, 0.5]


def test_by_default_nothing_is_read_until_training_starts_past_epoch_0(gcs: GcsEmulator, folder: str, tmp_path: Path) -> None:
    """The default collector sends no request on entering or logging; training that starts at epoch 3 reads the object once and continues it."""
    blob(folder).upload_from_string(json.dumps({"epochs": [0, 1, 2], "loss": {"loss": [0.9, 0.8, 0.7]}}))
    watch = gcs.inject(Fault(path=rf"{folder}", status=None, times=10**6))  # passes requests through, counting them
    with collector(folder, tmp_path) as c:
        c.log_param("batch_size", 32)
        assert watch.hits == 0
        c.training_started(3)
        reads = watch.hits
        assert reads >= 1
        for epoch in (3, 4):
            c.training_started(epoch)  # every epoch begin reports it; only the first counts
            c.log_metric("loss", epoch / 10, step=epoch)
        assert watch.hits == reads
    doc = json.loads(blob(folder).download_as_bytes())
    assert doc["epochs"] == [0, 1, 2, 3, 4] and doc["loss"]["loss"] == [0.9, 0.8, 0.7, 0.3, 0.4]
    assert doc["params"] == {"batch_size": 32}


@contextmanager
def reported_checksums_corrupted(gcs: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """While active, each object the emulator stores reports checksums that do not match its bytes.

    This is what the client sees when bytes were damaged on the way: it compares
    the server's checksum with its own and raises DataCorruption. The emulator
    has no switch for it, so its finalize hook (called under the storage lock,
    before the response is written) alters the stored object resource that the
    response is made from.
    """

    def corrupt(resource: dict) -> None:
        stored = gcs.storage.get_file_obj(resource["bucket"], resource["name"])
        stored["crc32c"], stored["md5Hash"] = "AAAAAA==", "AAAAAAAAAAAAAAAAAAAAAA=="

    with monkeypatch.context() as patch:
        patch.setattr(gcs.storage, "_on_finalize", corrupt)
        yield


def test_a_checksum_mismatch_leaves_a_local_copy_and_the_next_save_lands(
    gcs: GcsEmulator, folder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DataCorruption on upload ends, like any upload failure, in the fallback copy and MetricsUploadError; the next save replaces the bad version."""
    from google.cloud.storage.exceptions import DataCorruption

    c = collector(folder, tmp_path)
    c.log_metric("loss", 0.5, step=0)
    # Over 8 MiB: the client uploads it resumably, and checks the server's checksum at the end.
    c.log_params({f"vocabulary_{i}": "x" * 6000 for i in range((9 << 20) // 6000)})  # each within the 8,000-character bound on params
    with reported_checksums_corrupted(gcs, monkeypatch), pytest.raises(MetricsUploadError, match="DataCorruption") as caught:
        c.save(status="running")
    assert isinstance(caught.value.__cause__, DataCorruption)
    fallback = tmp_path / "fallback" / BUCKET / folder / "training_metrics.json"
    assert caught.value.fallback_path == str(fallback) and str(fallback) in str(caught.value)
    assert check_strict_json(fallback.read_bytes())["epochs"] == [0]
    assert caught.value.generation is not None

    # The failed upload did create an object; the next save replaces that generation.
    c.log_param("vocabulary_0", "small")
    c.log_metric("loss", 0.4, step=1)
    c.save()
    doc = json.loads(blob(folder).download_as_bytes())
    assert doc["loss"]["loss"] == [0.5, 0.4] and doc["params"]["vocabulary_0"] == "small"


@pytest.mark.parametrize("token_endpoint", ["unreachable", "missing"])
def test_a_failing_credentials_refresh_leaves_a_local_copy(gcs: GcsEmulator, folder: str, tmp_path: Path, token_endpoint: str) -> None:
    """Credentials that cannot be refreshed (token endpoint unreachable: TransportError; no refresh fields: RefreshError) end in the fallback copy and MetricsUploadError."""
    from google.oauth2 import credentials as oauth2

    from tests.support.network import closed_port

    if token_endpoint == "unreachable":  # retried as transient until the deadline
        creds = oauth2.Credentials(
            token=None, refresh_token="r", client_id="c", client_secret="s", token_uri=f"http://127.0.0.1:{closed_port()}/token"
        )
    else:  # nothing to refresh with: google.auth raises RefreshError at once
        creds = oauth2.Credentials(token=None)
    client = storage.Client(project="local-test", credentials=creds, client_options={"api_endpoint": gcs.url})
    c = MetricsCollector(f"gs://{BUCKET}/{folder}", retry=FAST, fallback_dir=tmp_path / "fallback", client=client)
    c.log_metric("loss", 0.5, step=0)
    with pytest.raises(MetricsUploadError, match="token|refresh") as caught:
        c.save()
    assert check_strict_json(Path(caught.value.fallback_path).read_bytes())["epochs"] == [0]
    assert not blob(folder).exists()


def test_a_flush_during_a_stall_costs_training_nothing_and_the_final_save_waits_for_it(
    gcs: GcsEmulator, folder: str, tmp_path: Path
) -> None:
    """With the default retry policies, a flush whose upload stalls 3 s returns at once, a second flush is skipped, and the final save lands after it."""
    c = MetricsCollector(f"gs://{BUCKET}/{folder}", flush_every=1e-6, fallback_dir=tmp_path / "fallback")
    c.log_metric("loss", 0.5, step=0)
    stall = gcs.inject(Fault(method="POST", path=rf"^/upload/storage/v1/b/{BUCKET}/o$", status=None, delay=3.0))
    started = time.monotonic()
    assert c.maybe_flush() is True
    assert time.monotonic() - started < 1.0  # the training thread does not wait for the stalled upload
    c.log_metric("loss", 0.4, step=1)  # training goes on while the upload stalls
    assert c.maybe_flush() is False  # the previous flush is still in flight: skipped
    assert time.monotonic() - started < 1.0
    c.save()
    assert stall.hits == 1
    doc = json.loads(blob(folder).download_as_bytes())
    assert doc["status"] == "completed" and doc["loss"]["loss"] == [0.5, 0.4]


def test_flushes_during_an_outage_cost_training_little_and_the_final_save_lands(
    gcs: GcsEmulator, folder: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While every upload gets 503, each flush returns at once and gives up in the background; after the outage the final save has every epoch."""
    c = collector(folder, tmp_path, flush_every=1e-6, flush_retry=RetryPolicy(initial=0.05, maximum=0.2, deadline=1.0, timeout=5))
    outage = gcs.inject(upload_fault(503, times=10**6))
    training_thread_seconds = 0.0
    with caplog.at_level(logging.WARNING, logger="trainer_callbacks"):
        for epoch in range(3):
            c.log_metric("loss", 1.0 / (epoch + 1), step=epoch)
            started = time.monotonic()
            assert c.maybe_flush() is True
            training_thread_seconds += time.monotonic() - started
            assert c.wait_for_flush(timeout=30)  # the flush gave up (in the background)
    assert training_thread_seconds < 1.0
    assert outage.hits >= 3 * 2  # each flush retried
    assert sum("periodic flush" in r.getMessage() for r in caplog.records) == 3
    fallback = tmp_path / "fallback" / BUCKET / folder / "training_metrics.json"
    assert check_strict_json(fallback.read_bytes())["status"] == "running"
    gcs.clear_faults()  # the outage ends
    c.save()
    doc = json.loads(blob(folder).download_as_bytes())
    assert doc["epochs"] == [0, 1, 2] and doc["status"] == "completed"
    check_document(doc)
