"""The emulator layer our tests and the local stack rely on behaves like GCS."""

from __future__ import annotations

import select
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
from google.api_core import exceptions as gexc
from google.cloud import storage

from metrics_ingest.localstack.emulator import Fault, GcsEmulator


@pytest.fixture
def bucket(gcs_env: GcsEmulator) -> storage.Bucket:
    gcs_env.create_bucket("emulator-test")
    return storage.Client().bucket("emulator-test")


def test_read_of_replaced_generation_is_404(bucket: storage.Bucket) -> None:
    """Reading a generation that is no longer live answers 404, as GCS does."""
    blob = bucket.blob("x/obj.json")
    blob.upload_from_string(b"one")
    first = blob.generation
    assert bucket.blob("x/obj.json", generation=first).download_as_bytes() == b"one"
    blob.upload_from_string(b"two")
    with pytest.raises(gexc.NotFound):
        bucket.blob("x/obj.json", generation=first).download_as_bytes()


def test_if_generation_match_is_enforced(bucket: storage.Bucket) -> None:
    """An upload whose generation precondition does not hold is refused with 412."""
    blob = bucket.blob("x/pre.json")
    blob.upload_from_string(b"a", if_generation_match=0)
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("x/pre.json").upload_from_string(b"b", if_generation_match=0)
    bucket.blob("x/pre.json").upload_from_string(b"c", if_generation_match=blob.generation)
    assert bucket.blob("x/pre.json").download_as_bytes() == b"c"


def test_injected_fault_then_recovery(bucket: storage.Bucket, gcs_env: GcsEmulator) -> None:
    """An injected 503 reaches the client once; the next request is served."""
    bucket.blob("x/f.json").upload_from_string(b"ok")
    fault = gcs_env.inject(Fault(method="GET", path="/o/x", status=503, times=1))
    with pytest.raises(gexc.ServiceUnavailable):
        bucket.blob("x/f.json").download_as_bytes(retry=None)
    assert fault.hits == 1
    assert bucket.blob("x/f.json").download_as_bytes() == b"ok"


def test_finalize_callback_sees_each_upload() -> None:
    """Every finalized upload is reported with the GCS object resource."""
    seen: list[dict] = []
    with GcsEmulator(on_finalize=seen.append) as gcs:
        gcs.create_bucket("b")
        client = storage.Client.create_anonymous_client()
        client._connection.API_BASE_URL = gcs.url  # anonymous client, explicit endpoint
        client.bucket("b").blob("q/1/training_metrics.json").upload_from_string(b"{}")
    assert [(e["bucket"], e["name"], e["size"]) for e in seen] == [("b", "q/1/training_metrics.json", "2")]
    assert seen[0]["generation"].isdigit()


def test_download_keeps_the_blob_generation(bucket: storage.Blob) -> None:
    """A download names the generation it served, so the client's blob keeps its generation."""
    bucket.blob("x/gen.json").upload_from_string(b"{}")
    blob = bucket.get_blob("x/gen.json")
    generation = blob.generation
    assert blob.download_as_bytes() == b"{}"
    assert blob.generation == generation is not None


def test_many_simultaneous_connections_are_all_queued() -> None:
    """64 clients connecting at once all complete the handshake (no listen-backlog drop, which costs ~1 s each)."""
    with GcsEmulator() as emulator:
        address = urlsplit(emulator.url)
        # Hold the accept loop, so that every connection has to wait in the backlog.
        gate = threading.Event()
        accept = emulator._httpd.get_request

        def held_accept():  # noqa: ANN202
            gate.wait(10)
            return accept()

        emulator._httpd.get_request = held_accept  # type: ignore[method-assign]
        sockets = [socket.socket() for _ in range(64)]
        try:
            for sock in sockets:
                sock.setblocking(False)
                sock.connect_ex((address.hostname, address.port))
            # A socket is writable once its handshake completed; a dropped SYN leaves it pending.
            deadline = time.monotonic() + 2.0
            pending = list(sockets)
            while pending and time.monotonic() < deadline:
                _, writable, _ = select.select([], pending, [], 0.1)
                pending = [s for s in pending if s not in writable]
            assert not pending, f"{len(pending)} of 64 connections were dropped"
        finally:
            gate.set()
            for sock in sockets:
                sock.close()
