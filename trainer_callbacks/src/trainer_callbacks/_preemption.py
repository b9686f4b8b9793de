"""SIGTERM (Vertex AI's notice of preemption, a cancelled job) turned into a save, safely.

A Python signal handler runs between two bytecodes of the main thread. Raising
from it wherever the thread stands could leave a half-inserted epoch row (3,000
series make that window wide). So the handler looks at where it interrupted:
inside the document's own operations (``_aligned_document``, ``_resume``) it only
sets a flag, and the collector raises :class:`TrainingTerminated` as soon as that
operation has finished (:meth:`Preemption.raise_if_pending`); anywhere else
(Keras, the model, the user's code) it raises at once, which unwinds ``fit()``.
A second SIGTERM while the first is being handled is ignored (the save is under
way; Vertex AI's SIGKILL follows its grace period anyway).

Example::

    guard = Preemption()
    guard.install()            # in the main thread, only over the default handler
    ...                        # work; collector operations call guard.raise_if_pending()
    guard.uninstall()
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

# Modules whose frames must not be interrupted by an exception: they change the document.
_CRITICAL = ("trainer_callbacks._aligned_document", "trainer_callbacks._resume")


class TrainingTerminated(SystemExit):
    """Raised in the training thread when the process receives SIGTERM inside a
    collector's ``with`` block (Vertex AI's notice of preemption, a job cancelled).

    It unwinds ``fit()`` so that the block saves the epochs so far as ``failed``,
    then ends the process with status 143 (128 + SIGTERM), as the signal would have.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"terminated by {signal.Signals(self.signum).name} (preempted or cancelled)"


def _in_critical_code(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_globals.get("__name__") in _CRITICAL:
            return True
        frame = frame.f_back
    return False


class Preemption:
    """Owns the SIGTERM handler while a collector is in use; see the module docstring."""

    def __init__(self) -> None:
        self._saved: Any = None
        self.pending: int | None = None  # a signal received inside a critical operation
        self.received: int | None = None  # the signal that terminated the run, once raised or pending
        self.quiet = False  # the final save is under way: a SIGTERM now is noted, not raised

    @property
    def installed(self) -> bool:
        return self._saved is not None

    def install(self) -> bool:
        """Take SIGTERM over, if this is the main thread and SIGTERM has its default handler."""
        if self.installed or threading.current_thread() is not threading.main_thread():
            return False
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return False  # a handler of the user's own: left alone
        self._saved = signal.signal(signal.SIGTERM, self._handle)
        return True

    def uninstall(self) -> None:
        if self._saved is not None:
            signal.signal(signal.SIGTERM, self._saved)
            self._saved = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return  # already terminating: the save is under way
        self.received = signum
        if self.quiet or _in_critical_code(frame):
            self.pending = signum
            return
        raise TrainingTerminated(signum)

    def raise_if_pending(self) -> None:
        """Raise the deferred :class:`TrainingTerminated`, at a point where the document is whole."""
        if self.pending is not None and not self.quiet and threading.current_thread() is threading.main_thread():
            signum, self.pending = self.pending, None
            raise TrainingTerminated(signum)
