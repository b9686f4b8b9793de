"""The destination: refused at construction when it is not gs://BUCKET/... or a local path; checked writable
once when training starts (writing nothing); a failed save keeps a copy under AIP_CHECKPOINT_DIR too."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from metrics_ingest.localstack.emulator import Fault, GcsEmulator
from trainer_callbacks import DestinationError, MetricsCollector, MetricsSaveError, RetryPolicy
from trainer_callbacks._destination import check_writable

FILE = "training_metrics.json"
FAST = RetryPolicy(initial=0.05, maximum=0.2, deadline=1.0, timeout=5)


@pytest.mark.parametrize("path", [
    "gcs://bucket/x", "s3://bucket/x", "gs:/bucket/x", "GS://bucket/x", "Gs://bucket/x", "http://host/x",
    "gs://", "gs:///x", "gs://Bucket/x", "gs://ab/x", "gs://-bucket/x", "gs://192.168.1.1/x", "gs://goog-metrics/x",
    "file://host/x", "",
])
def test_a_destination_that_is_neither_gcs_nor_local_is_refused_at_construction(path: str, tmp_path: Path) -> None:
    """Any other scheme (GS:// and gs:/ included) or a bad bucket name raises ValueError naming output_path, and nothing is created."""
    os.chdir(tmp_path)
    with pytest.raises(ValueError, match="Invalid value for argument `output_path`"):
        MetricsCollector(path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("path", "uri"), [
    ("gs://ml-artifacts/quick_tests/42", "gs://ml-artifacts/quick_tests/42/" + FILE),
    ("gs://my_bucket.example.com/a", "gs://my_bucket.example.com/a/" + FILE),
    ("file:///tmp/run", "/tmp/run/" + FILE),
    ("relative/run", "relative/run/" + FILE),
    ("./gs", "./gs/" + FILE),
])
def test_gcs_and_local_destinations_are_accepted(path: str, uri: str) -> None:
    """gs://BUCKET/..., file:///PATH and plain paths are accepted; file:// becomes the path."""
    assert MetricsCollector(path).uri == uri


def test_a_local_folder_is_checked_without_writing(tmp_path: Path) -> None:
    """A folder that can be made passes and is not created; one below a file fails, naming why."""
    ok = MetricsCollector(tmp_path / "a" / "b")
    check_writable(ok.store)
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(DestinationError, match="is a file, not a folder"):
        check_writable(MetricsCollector(tmp_path / "file" / "run").store)


def test_a_read_only_folder_raises_before_the_first_epoch(tmp_path: Path) -> None:
    """A folder this process may not write into fails the check, naming it (checked in a child that is an unprivileged user where the tests run as root)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    tmp_path.chmod(0o755)
    store = MetricsCollector(folder / "run").store
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: drop root (which may write anywhere), run the check, report
        code = 1
        try:
            os.close(read)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            try:
                check_writable(store)
            except DestinationError as error:
                os.write(write, str(error).encode())
                code = 3
        finally:
            os._exit(code)
    os.close(write)
    message = os.read(read, 4096).decode()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 3
    assert "may not write into" in message and str(folder) in message


@pytest.fixture
def bucket(gcs_env: GcsEmulator) -> str:
    gcs_env.create_bucket("trainer-destination")
    return "trainer-destination"


def test_a_missing_bucket_raises_before_the_first_epoch(gcs_env: GcsEmulator, bucket: str) -> None:
    """A bucket that does not exist fails a real fit() at on_train_begin: no epoch runs, nothing is written."""
    import tensorflow as tf

    from tests.support import trainer_models as tm
    from trainer_callbacks import MetricsCallback

    epochs: list[int] = []
    collector = MetricsCollector("gs://no-such-bucket-here/run")
    with pytest.raises(DestinationError, match="bucket 'no-such-bucket-here' does not exist"):
        tm.two_tower_keras().fit(tm.keras_dataset(32), epochs=2, verbose=0, callbacks=[
            MetricsCallback(collector), tf.keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: epochs.append(e))])
    assert epochs == []
    # check_destination=False: the same fit trains (the save then fails, keeping a local copy).
    quiet = MetricsCollector("gs://no-such-bucket-here/run", check_destination=False, retry=FAST)
    with pytest.raises(MetricsSaveError):
        tm.two_tower_keras().fit(tm.keras_dataset(32), epochs=1, verbose=0, callbacks=[MetricsCallback(quiet)])


def test_missing_permission_or_credentials_raise_with_the_reason(gcs_env: GcsEmulator, bucket: str) -> None:
    """The IAM check answering 403 names the destination; a bucket that exists passes; no object is written by either."""
    ok = MetricsCollector(f"gs://{bucket}/{uuid.uuid4().hex}")
    check_writable(ok.store)
    gcs_env.inject(Fault(method="GET", path=rf"/b/{bucket}/iam/testPermissions", status=403, times=5))
    with pytest.raises(DestinationError, match=f"gs://{bucket}/.* cannot be checked: Forbidden"):
        check_writable(MetricsCollector(f"gs://{bucket}/x", retry=FAST).store)
    from google.cloud import storage

    assert list(storage.Client().list_blobs(bucket)) == []


def test_a_failed_save_keeps_a_copy_under_aip_checkpoint_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With AIP_CHECKPOINT_DIR set (a local or /gcs/ path), a failed save writes a second copy there, and the error names both."""
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    (tmp_path / "runs").write_text("not a folder")
    c = MetricsCollector(tmp_path / "runs" / "42", fallback_dir=tmp_path / "fallback")
    c.log_metric("loss", 0.5, step=0)
    with pytest.raises(MetricsSaveError) as caught:
        c.save()
    assert len(caught.value.copies) == 2
    for copy in caught.value.copies:
        assert copy in str(caught.value)
        assert json.loads(Path(copy).read_bytes())["loss"]["loss"] == [0.5]
    assert caught.value.copies[1].startswith(str(tmp_path / "checkpoints" / "trainer_callbacks"))


def test_a_gcs_aip_checkpoint_dir_gets_an_uploaded_copy(gcs_env: GcsEmulator, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AIP_CHECKPOINT_DIR=gs://... without a FUSE mount: the copy is uploaded there when the save to the destination fails."""
    from google.cloud import storage

    monkeypatch.setenv("AIP_CHECKPOINT_DIR", f"gs://{bucket}/checkpoints")
    folder = uuid.uuid4().hex
    gcs_env.inject(Fault(method="POST", path=rf"/b/{bucket}/o", status=403, times=1))  # the destination's upload only
    c = MetricsCollector(f"gs://{bucket}/{folder}", retry=FAST, fallback_dir=tmp_path / "fallback")
    c.log_metric("loss", 0.5, step=0)
    with pytest.raises(MetricsSaveError) as caught:
        c.save()
    durable = f"gs://{bucket}/checkpoints/trainer_callbacks/{bucket}/{folder}/{FILE}"
    assert durable in caught.value.copies and durable in str(caught.value)
    blob = storage.Client().bucket(bucket).blob(durable[len(f"gs://{bucket}/"):])
    assert json.loads(blob.download_as_bytes())["loss"]["loss"] == [0.5]
