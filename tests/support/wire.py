"""A TCP relay in front of PostgreSQL that counts the queries clients send.

psycopg2 sends every statement, BEGIN and COMMIT included, as one simple
Query message ('Q') and waits for the answer, so the count of 'Q' messages
is the count of round trips, measured on the wire rather than assumed.
With ``delay_s``, each query is held that long before it is passed on: a
modelled network round trip (a remote Cloud SQL), for benchmarks.

Example::

    with QueryCounter(platform_db.url) as counter:
        settings = platform_db.settings(database_url=counter.url)
        ...
        counter.reset(); ingest_object(ref, settings=settings); counter.queries  # -> 2
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from typing import Any

from psycopg2.extensions import make_dsn, parse_dsn

_SPECIAL_REQUESTS = {80877103, 80877104, 80877102}  # SSLRequest, GSSENCRequest, CancelRequest


class QueryCounter:
    """Relays 127.0.0.1:<port> to the server of ``url``; ``queries`` counts 'Q' messages and
    ``sent_bytes`` the bytes sent to the server since ``reset``."""

    def __init__(self, url: str, delay_s: float = 0.0) -> None:
        self._delay_s = delay_s
        self._target = parse_dsn(url)
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        self.url = make_dsn(
            **{k: v for k, v in self._target.items() if k not in ("host", "port", "hostaddr")},
            host="127.0.0.1", port=str(port), sslmode="disable", gssencmode="disable",
        )  # fmt: skip
        self._lock = threading.Lock()
        self._queries = 0
        self._sent = 0
        self._sockets: list[socket.socket] = []
        self._closed = False

    @property
    def queries(self) -> int:
        with self._lock:
            return self._queries

    @property
    def sent_bytes(self) -> int:
        with self._lock:
            return self._sent

    def reset(self) -> None:
        with self._lock:
            self._queries = 0
            self._sent = 0

    def __enter__(self) -> QueryCounter:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._closed = True
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _upstream(self) -> socket.socket:
        host = self._target.get("host") or "/tmp"
        port = int(self._target.get("port") or 5432)
        if host.startswith("/"):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(f"{host}/.s.PGSQL.{port}")
            return sock
        return socket.create_connection((host, port))

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = self._upstream()
            self._sockets += [client, server]
            threading.Thread(target=self._client_to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _client_to_server(self, src: socket.socket, dst: socket.socket) -> None:
        header = b""  # the start of the next message, until its length is known
        skip = 0  # bytes of the current message's body still to pass
        started = False  # before the startup message, messages have no type byte
        with contextlib.suppress(OSError):
            while data := src.recv(262144):
                queries, view = 0, memoryview(data)
                while view:
                    if skip:
                        taken = min(skip, len(view))
                        skip, view = skip - taken, view[taken:]
                        continue
                    need = 8 if not started else 5
                    taken = min(need - len(header), len(view))
                    header, view = header + bytes(view[:taken]), view[taken:]
                    if len(header) < need:
                        break
                    if not started:
                        length, code = struct.unpack("!ii", header)
                        started = code not in _SPECIAL_REQUESTS
                        skip = length - 8
                    else:
                        queries += header[:1] == b"Q"
                        skip = struct.unpack("!i", header[1:5])[0] - 4
                    header = b""
                with self._lock:
                    self._queries += queries
                    self._sent += len(data)
                if queries and self._delay_s:
                    time.sleep(self._delay_s)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
