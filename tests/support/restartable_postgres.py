"""A PostgreSQL server of a test module's own, which it may restart (``pg_ctl restart -m fast``)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


class RestartablePostgres:
    """A PostgreSQL server of a test module's own (pgserver), so restarting it disturbs no other test.

    Example::

        pg = RestartablePostgres()
        pg.restart()   # every session is terminated; the server comes back on the same socket
        pg.stop()
    """

    def __init__(self) -> None:
        import pgserver

        self.pgdata = Path(tempfile.mkdtemp(prefix="metrics-ingest-pg-restart-"))
        self.server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        self.admin_url = self.server.get_uri()

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session is terminated, the server comes back on the same socket."""
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=self.pgdata, user=self.server.system_user, timeout=60)

    def stop(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self.pgdata, ignore_errors=True)
