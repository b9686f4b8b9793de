"""Collectors used without a ``with`` block are saved at interpreter exit, never lost silently.

Each collector registers itself at its first change. At exit (``atexit``), every
one that is not closed and holds changes not yet saved is saved: ``failed`` with
the error when the interpreter is ending on an uncaught exception (seen by a
``sys.excepthook`` that records it and then calls the hook that was there before)
or on SIGTERM, ``completed`` otherwise.

Example::

    track(collector)   # the collector calls this itself; nothing to do for a user
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
from types import TracebackType
from typing import Any

logger = logging.getLogger("trainer_callbacks")

# Strong references: a collector dropped by the user before exit must still be saved.
_collectors: dict[int, Any] = {}
_lock = threading.Lock()
_installed = False
_uncaught: BaseException | None = None
_previous_hook: Any = None


def _excepthook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    global _uncaught
    _uncaught = error
    (_previous_hook or sys.__excepthook__)(kind, error, tb)


def _save_all() -> None:
    for collector in list(_collectors.values()):
        try:
            collector._save_at_exit(_uncaught)
        except Exception as error:  # noqa: BLE001 - at exit, each collector gets its try; the error is logged with its copy
            logger.error("saving the metrics of %s at interpreter exit failed: %s", getattr(collector, "uri", "?"), error)


def track(collector: Any) -> None:
    """Have ``collector`` saved at interpreter exit if it still holds unsaved changes then."""
    global _installed, _previous_hook
    with _lock:
        if not _installed:
            _previous_hook = sys.excepthook
            sys.excepthook = _excepthook
            atexit.register(_save_all)
            _installed = True
        _collectors[id(collector)] = collector


def untrack(collector: Any) -> None:
    with _lock:
        _collectors.pop(id(collector), None)
