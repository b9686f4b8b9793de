"""Network helpers for tests."""

from __future__ import annotations

import socket


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unreachable_database_url() -> str:
    return f"postgresql://nobody@127.0.0.1:{closed_port()}/nowhere?connect_timeout=2"
