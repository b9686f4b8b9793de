"""Structured logs: one JSON object per line with a Cloud Logging ``severity``.

Cloud Run functions read JSON lines on stdout as structured entries
(``severity``, ``message`` and every other key as ``jsonPayload``).

Example::

    configure()
    log_event("INFO", "ingested", event_id="e1", object="gs://b/q/1/training_metrics.json",
              generation=3, outcome="ingested", duration_ms=41.2)
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

LOGGER = logging.getLogger("ingest")
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


class JsonFormatter(logging.Formatter):
    """``{"severity": ..., "message": ..., **fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"severity": record.levelname, "message": record.getMessage()}
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = self.formatException(record.exc_info)
        text = json.dumps(entry, default=str, ensure_ascii=False)
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                # A lone surrogate (a hostile event's field) has no UTF-8 form:
                # escaped, the line is still one valid JSON object.
                text = json.dumps(entry, default=str)
        return text


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (a redirected one included)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(stream: Any = None) -> None:
    """Send the ``ingest`` logger's records to ``stream`` (default: stdout) as JSON lines; idempotent."""
    if any(getattr(h, "_ingest_json", False) for h in LOGGER.handlers):
        return
    handler = logging.StreamHandler(stream) if stream is not None else _StdoutHandler()
    handler.setFormatter(JsonFormatter())
    handler._ingest_json = True  # type: ignore[attr-defined]
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def log_event(severity: str, message: str, **fields: Any) -> None:
    LOGGER.log(_LEVELS[severity], message, extra={"fields": fields})
