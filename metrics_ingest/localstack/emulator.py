"""An in-process GCS emulator with the object semantics this product relies on.

``gcp-storage-emulator`` serves the GCS JSON API well enough for the real
``google-cloud-storage`` client, but it is a stub in three ways that matter
here, which this module fills in on top of it (without forking it):

* generations: a read that names a generation (``?generation=N``) is answered
  404 when the live object has another one, as GCS does for a replaced object,
  and a download says which generation it served (``x-goog-generation``);
* preconditions: a single-request (media or multipart) upload with
  ``ifGenerationMatch=N`` is answered 412 unless the live generation is N
  (0: the object must not exist);
* notifications: every finalized upload is passed to ``on_finalize`` with the
  object resource, which is what the local stack turns into the CloudEvent
  Eventarc would deliver (the emulator has no Pub/Sub notifications).

It also lets tests inject faults (a 503 or a stall) for chosen requests, so
the retry paths are exercised against a real HTTP server.

Example::

    emulator = GcsEmulator(on_finalize=print).start()
    emulator.create_bucket("ml-artifacts")
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
    storage.Client(project="local").bucket("ml-artifacts").blob("a/b.json").upload_from_string("{}")
    emulator.stop()
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable
from functools import partial
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from gcp_storage_emulator import server as _server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import buckets as _buckets
from gcp_storage_emulator.storage import Storage

ObjectResource = dict[str, Any]

# /storage/v1/b/B/o/NAME, /download/storage/v1/b/B/o/NAME, /b/B/o/NAME
_OBJECT_PATH = re.compile(r"^(?:/download)?(?:/storage/v1)?/b/(?P<bucket>[-.\w]+)/o/(?P<name>.+)$")


@dataclasses.dataclass
class Fault:
    """A fault to inject: requests matching ``method`` and ``path`` (a regex
    searched in the path) get ``status`` (after sleeping ``delay`` seconds),
    ``times`` times; ``status=None`` only delays, then serves normally."""

    method: str | None = None
    path: str = ""
    status: int | None = HTTPStatus.SERVICE_UNAVAILABLE
    delay: float = 0.0
    times: int = 1
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and re.search(self.path, path) is not None


class _PreconditionFailed(Exception):
    pass


class _NotifyingStorage(Storage):
    """Storage that serialises access (the handlers are not thread-safe),
    enforces the current request's ``ifGenerationMatch`` and reports every
    created object."""

    def __init__(self, on_finalize: Callable[[ObjectResource], None] | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lock = threading.RLock()
        self.expected_generation: str | None = None  # set per request, under lock
        self._on_finalize = on_finalize

    def create_file(self, bucket_name, file_name, content, file_obj, file_id=None):  # noqa: ANN001
        expected, self.expected_generation = self.expected_generation, None
        if expected is not None and (self.live_generation(bucket_name, file_name) or "0") != expected:
            raise _PreconditionFailed(file_name)
        super().create_file(bucket_name, file_name, content, file_obj, file_id)
        if self._on_finalize is not None:
            self._on_finalize(dict(file_obj))

    def live_generation(self, bucket: str, name: str) -> str | None:
        try:
            return str(self.get_file_obj(bucket, name)["generation"])
        except NotFound:
            return None


class _Handler(_server.RequestHandler):
    """Adds generation checks, preconditions and faults before routing."""

    protocol_version = "HTTP/1.0"

    def __init__(self, emulator: GcsEmulator, *args: Any, **kwargs: Any) -> None:
        self.emulator = emulator
        super().__init__(emulator.storage, *args, **kwargs)

    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        if self.emulator._apply_fault(self, method, path):
            return
        with self.storage.lock:
            refusal = self._check_generation(method, path, query)
            self._extra_headers = self._object_headers(method, path, query) if refusal is None else {}
            if refusal is not None:
                status, message = refusal
                self._send_error(status, message)
                return
            # The object name of a multipart upload is in its body, so the
            # precondition is checked where the object is created.
            self.storage.expected_generation = (query.get("ifGenerationMatch") or [None])[0]
            try:
                _server.Router(self).handle(method)
            except _PreconditionFailed:
                self._send_error(
                    HTTPStatus.PRECONDITION_FAILED, "At least one of the pre-conditions you specified did not hold."
                )
            finally:
                self.storage.expected_generation = None

    def _check_generation(self, method: str, path: str, query: dict[str, list[str]]) -> tuple[int, str] | None:
        storage: _NotifyingStorage = self.storage  # type: ignore[assignment]
        match = _OBJECT_PATH.match(path)
        if match and method == "GET" and "generation" in query:
            live = storage.live_generation(match["bucket"], match["name"])
            if live != query["generation"][0]:
                return HTTPStatus.NOT_FOUND, f"No such object generation: {match['name']}#{query['generation'][0]}"
        return None

    def _object_headers(self, method: str, path: str, query: dict[str, list[str]]) -> dict[str, str]:
        """GCS names the generation it served in ``x-goog-*`` headers; the client
        updates ``blob.generation`` from them after a download."""
        match = _OBJECT_PATH.match(path)
        media = path.startswith("/download/") or query.get("alt") == ["media"]
        if not (match and method == "GET" and media):
            return {}
        try:
            obj = self.storage.get_file_obj(match["bucket"], match["name"])
        except NotFound:
            return {}
        return {
            "x-goog-generation": str(obj["generation"]),
            "x-goog-metageneration": str(obj.get("metageneration", "1")),
            "x-goog-stored-content-length": str(obj.get("size", "")),
        }

    def end_headers(self) -> None:
        for name, value in getattr(self, "_extra_headers", {}).items():
            self.send_header(name, value)
        self._extra_headers = {}
        super().end_headers()

    def _send_error(self, status: int, message: str) -> None:
        body = ('{"error": {"code": %d, "message": "%s"}}' % (status, message.replace('"', "'"))).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._route("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._route("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._route("DELETE")


class _Server(ThreadingHTTPServer):
    """http.server's listen backlog is 5: with more clients connecting at once
    (``replay --workers 8``: the handler is HTTP/1.0, so every request is a new
    connection), the kernel drops the overflow and each dropped connection
    waits a SYN retransmission (about 1 s). GCS never refuses connections."""

    request_queue_size = 128


class GcsEmulator:
    """A GCS JSON API emulator on ``host:port`` (port 0 picks a free one).

    Args:
        host: address to bind; loopback by default.
        port: TCP port; 0 (default) lets the OS choose, see ``url``.
        data_dir: keep objects in this folder; None (default) keeps them in memory.
        on_finalize: called with each finalized object's resource (a dict with
            ``bucket``, ``name``, ``generation``, ``size``... as strings, like GCS).

    Example::

        with GcsEmulator() as gcs:
            gcs.create_bucket("b")
            print(gcs.url)   # export STORAGE_EMULATOR_HOST=<this>
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: str | None = None,
        on_finalize: Callable[[ObjectResource], None] | None = None,
    ) -> None:
        self.storage = _NotifyingStorage(on_finalize, use_memory_fs=data_dir is None, data_dir=data_dir)
        self._host, self._port = host, port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the emulator is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> GcsEmulator:
        self._httpd = _Server((self._host, self._port), partial(_Handler, self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="gcs-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def create_bucket(self, name: str) -> None:
        """Create a bucket if it does not exist yet."""
        with self.storage.lock:
            _buckets.create_bucket(name, self.storage)

    def wipe(self) -> None:
        """Delete every object, keeping the buckets."""
        with self.storage.lock:
            self.storage.wipe(keep_buckets=True)

    def inject(self, fault: Fault) -> Fault:
        """Add a fault; returns it so a test can read ``hits`` afterwards."""
        with self._faults_lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()

    def _apply_fault(self, handler: _Handler, method: str, path: str) -> bool:
        with self._faults_lock:
            fault = next((f for f in self._faults if f.hits < f.times and f.matches(method, path)), None)
            if fault is not None:
                fault.hits += 1
        if fault is None:
            return False
        if fault.delay:
            time.sleep(fault.delay)
        if fault.status is None:
            return False
        # Drain the body so the client sees the status, not a reset connection.
        length = int(handler.headers.get("content-length") or 0)
        if length:
            handler.rfile.read(length)
        handler._send_error(fault.status, "injected fault")
        return True
