"""Ctrl-C as a flag: a batch stops submitting work at a safe point instead of dying mid-item.

A Python signal handler runs between any two bytecodes of the main thread, so
raising from it could leave our own bookkeeping half-updated; the handler only
sets an event, and the worker loop reads it between items. A second Ctrl-C
raises KeyboardInterrupt (the user insists; each item is one transaction, so
even that leaves no partly written row).

Example::

    with InterruptFlag() as interrupt:
        for outcome in bounded(items, work, workers=4, stopping=interrupt.event.is_set):
            ...
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class InterruptFlag:
    """Turns SIGINT into ``self.event`` while the block runs (main thread only; elsewhere a no-op)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: Any = None

    def __enter__(self) -> InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
