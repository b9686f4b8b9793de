"""``manage.py listen_training_metrics``: keep QuickTest.status in step with the histories the function writes.

The ingestion function writes only ``training_history_json`` and, in the same
transaction, sends ``pg_notify('training_metrics', payload)`` with the row's id,
the object generation, the history's status, its epoch count and the outcome.
This command LISTENs on that channel and saves the QuickTest's own ``status``
(and ``updated_at``) from each payload, through ``save(update_fields=...)`` so
that the platform's ``post_save`` receivers run (tell the user, start the next
step). A notification whose generation is no longer the row's is stale and
changes nothing.

A notification sent while nobody listens is lost (PostgreSQL keeps none), so
after every (re)connection, once LISTEN is in place, the command catches up
from the function's own log, ``training_metrics_ingestions``: every row with an
``ingested`` record since the last moment it knew itself connected (less a
minute; at start, ``--catch-up-hours`` back) gets its status from the history
the row holds now. A database restart or failover costs a reconnect, with
backoff, and no update. SIGTERM or Ctrl-C stops it between two notifications.

Example::

    python manage.py listen_training_metrics                        # channel from settings.TRAINING_METRICS_CHANNEL
    python manage.py listen_training_metrics --channel qt_events --catch-up-hours 72
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from typing import Any

import psycopg
from django import db
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connection, transaction
from django.db.models.fields.json import KT
from psycopg import sql

from ml_platform.models import QuickTest

# The history's status -> QuickTest.status (the platform's own words may differ).
STATUS_FROM_HISTORY = {"running": "running", "completed": "completed", "failed": "failed"}
# A record is stamped when its statement starts and committed a moment later.
MARGIN = dt.timedelta(minutes=1)
CATCH_UP = (
    "SELECT DISTINCT quicktest_id FROM training_metrics_ingestions"
    " WHERE outcome = 'ingested' AND quicktest_id IS NOT NULL AND created_at >= %s"
)
LOST = (psycopg.OperationalError, db.OperationalError, db.InterfaceError)


class Command(BaseCommand):
    help = "LISTEN for the ingestion function's notifications and update QuickTest.status from them."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--channel", default=getattr(settings, "TRAINING_METRICS_CHANNEL", "training_metrics"),
                            help="the function's NOTIFY_CHANNEL (default: settings.TRAINING_METRICS_CHANNEL)")
        parser.add_argument("--catch-up-hours", type=float, default=24.0,
                            help="at start, rows ingested this far back are brought up to date (default 24)")
        parser.add_argument("--reconnect-delay", type=float, default=1.0,
                            help="seconds before the first reconnect attempt, doubled up to 30 (default 1)")

    def handle(self, *args: Any, channel: str, catch_up_hours: float, reconnect_delay: float, **options: Any) -> None:
        self.stopping = False
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        since: dt.datetime | None = None  # everything ingested before it is applied
        delay = reconnect_delay
        while not self.stopping:
            try:
                with self._connect() as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    # From here on every commit is notified: catch up on what came before.
                    listening_since = self._now(conn)
                    if since is None:
                        since = listening_since - dt.timedelta(hours=catch_up_hours)
                    self.say(f"listening on {channel}")
                    self._catch_up(since - MARGIN)
                    since, delay = listening_since, reconnect_delay
                    while not self.stopping:
                        for note in conn.notifies(timeout=1.0):
                            self._on_notify(note.payload)
                        since = self._now(conn)  # a heartbeat: a dead server shows within a second
            except LOST as exc:
                db.connections.close_all()  # Django's own connection died with the server too
                reason = " ".join(str(exc).split())[:200]  # libpq's text spans lines
                self.say(f"connection lost ({type(exc).__name__}: {reason}); reconnecting in {delay:g} s")
                self._sleep(delay)
                delay = min(delay * 2, 30.0)
        self.say("stopped")

    def _connect(self) -> psycopg.Connection:
        # Django's own connection settings, in a session of its own (LISTEN needs autocommit).
        params = {k: v for k, v in connection.get_connection_params().items() if k not in ("cursor_factory", "context")}
        return psycopg.connect(**params, autocommit=True, connect_timeout=10)

    @staticmethod
    def _now(conn: psycopg.Connection) -> dt.datetime:
        return conn.execute("SELECT now()").fetchone()[0]

    def _on_notify(self, payload: str) -> None:
        try:
            note = json.loads(payload)
            quicktest_id, generation, status = int(note["quicktest_id"]), str(note["generation"]), note["status"]
        except (ValueError, KeyError, TypeError) as exc:
            self.say(f"ignored a notification that is not the function's ({exc}): {payload[:200]!r}")
            return
        self.apply(quicktest_id, status, "notification", generation=generation)

    def _catch_up(self, since: dt.datetime) -> None:
        with connection.cursor() as cur:
            cur.execute(CATCH_UP, [since])
            ids = [row[0] for row in cur.fetchall()]
        # The status the row's history holds now (one key read per row, not the document).
        rows = QuickTest.objects.filter(pk__in=ids).annotate(history_status=KT("training_history_json__status"))
        changed = sum(self.apply(qt_id, status, "catch-up") for qt_id, status in rows.values_list("id", "history_status"))
        self.say(f"caught up: {len(ids)} row(s) ingested since {since.isoformat()}, {changed} updated")

    def apply(self, quicktest_id: int, history_status: str | None, how: str, generation: str | None = None) -> bool:
        """Save ``status`` on the row (``post_save`` runs) unless it already has it; True when saved."""
        status = STATUS_FROM_HISTORY.get(history_status or "completed")  # absent: "completed" (the format's rule)
        if status is None:
            return False
        rows = QuickTest.objects.filter(pk=quicktest_id)
        if generation is not None:  # the row still holds the notified generation, or the notification is stale
            rows = rows.filter(training_history_json__source__generation=generation)
        with transaction.atomic():
            qt = rows.select_for_update().only("id", "status", "updated_at").first()
            if qt is None or qt.status == status:
                return False
            previous, qt.status = qt.status, status
            qt.save(update_fields=["status", "updated_at"])
        self.say(f"quicktest {quicktest_id}: {previous} -> {status} ({how})")
        return True

    def say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True  # acted on between notifications (a handler must not raise mid-update)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))
