"""Hooks into one ``fit()``'s callback list: saves in step with ``BackupAndRestore``, and the fit's end.

Keras hands every callback of a ``fit()`` to one ``CallbackList``; the collector's
callbacks find it when training begins (it is the caller of their
``on_train_begin``) and hook two things on that one object, for that fit only:

- **BackupAndRestore**, wherever it stands in the list, whatever its ``save_freq``
  (Keras 3 and tf-keras): each of its backups is preceded by a save of the
  collector, so the file is never behind the checkpoint. A backup at an epoch end
  waits until every callback has finished that epoch (the list's ``on_epoch_end``
  returns), then the collector saves, then the backup is written; a backup inside
  an epoch (``save_freq=N`` batches) saves the epochs finished so far first. A
  save with nothing new since the last one uploads nothing; a save that fails
  skips that backup (the checkpoint stays in step with the file) and training goes on.
- **the fit's end**: after the list's ``on_train_end`` (every callback's) returns,
  the collector is told, so a collector used without a ``with`` block saves then.

Example::

    hooks = FitHooks.attach(collector, callback_list)   # done by the callbacks, at on_train_begin
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger("trainer_callbacks")

_ORIGINAL = "_trainer_callbacks_original_save"


def find_callback_list(frame: FrameType | None) -> Any:
    """The Keras ``CallbackList`` among the callers of ``frame`` (Keras 3 and tf-keras both call hooks from it), or None."""
    depth = 0
    while frame is not None and depth < 12:
        owner = frame.f_locals.get("self")
        if owner is not None and type(owner).__name__ == "CallbackList" and isinstance(getattr(owner, "callbacks", None), list):
            return owner
        frame, depth = frame.f_back, depth + 1
    return None


def is_backup_and_restore(callback: Any) -> bool:
    return any(kind.__name__ == "BackupAndRestore" for kind in type(callback).__mro__)


def _save_method(backup: Any) -> str | None:
    """The method that writes a backup: Keras 3's ``_save_model()``, tf-keras' ``_backup(epoch, batch)``."""
    for name in ("_save_model", "_backup"):
        if callable(getattr(type(backup), name, None)):
            return name
    return None


class FitHooks:
    """The hooks installed on one fit's callback list; removed when the fit ends."""

    def __init__(self, callback_list: Any, on_sync: Callable[[], bool], on_end: Callable[[], None]) -> None:
        self.callback_list = callback_list
        self._on_sync = on_sync
        self._on_end = on_end
        self._in_epoch_end = False
        self._deferred: list[Callable[[], Any]] = []
        self._wrapped: list[tuple[Any, str]] = []
        self.backups = [cb for cb in callback_list.callbacks if is_backup_and_restore(cb)]

    @classmethod
    def attach(cls, callback_list: Any, on_sync: Callable[[], bool], on_end: Callable[[], None]) -> FitHooks:
        hooks = cls(callback_list, on_sync, on_end)
        for backup in hooks.backups:
            name = _save_method(backup)
            if name is None:
                logger.warning("%s has no known save method; the metrics file may fall behind its backups", type(backup).__name__)
                continue
            hooks._wrap_backup(backup, name)
        hooks._wrap_list()
        if hooks.backups:
            logger.info("BackupAndRestore among the callbacks: the metrics are saved with each of its backups")
        return hooks

    def _wrap_backup(self, backup: Any, name: str) -> None:
        original = getattr(type(backup), name).__get__(backup)
        backup.__dict__.pop(name, None)  # a wrapper left by a fit that raised
        setattr(backup, _ORIGINAL, original)

        def save_after_metrics(*args: Any, **kwargs: Any) -> Any:
            if self._in_epoch_end:
                # Other callbacks may not have logged this epoch yet: back up once they all have.
                self._deferred.append(lambda: self._synced(original, args, kwargs))
                return None
            return self._synced(original, args, kwargs)

        setattr(backup, name, save_after_metrics)
        self._wrapped.append((backup, name))

    def _synced(self, original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not self._on_sync():
            logger.warning("the metrics could not be saved before this backup; the backup is skipped so the two stay in step")
            return None
        return original(*args, **kwargs)

    def _wrap_list(self) -> None:
        callback_list = self.callback_list
        epoch_end = callback_list.on_epoch_end
        train_end = callback_list.on_train_end

        def on_epoch_end(epoch: int, logs: Any = None) -> None:
            self._in_epoch_end = True
            try:
                epoch_end(epoch, logs)
            finally:
                self._in_epoch_end = False
            deferred, self._deferred = self._deferred, []
            for backup in deferred:
                backup()

        def on_train_end(logs: Any = None) -> None:
            try:
                train_end(logs)
            finally:
                self.detach()
            self._on_end()

        callback_list.on_epoch_end = on_epoch_end
        callback_list.on_train_end = on_train_end

    def detach(self) -> None:
        """Put back what was hooked (also when a fit raised and never reached its end)."""
        for backup, name in self._wrapped:
            backup.__dict__.pop(name, None)
            backup.__dict__.pop(_ORIGINAL, None)
        self._wrapped = []
        for name in ("on_epoch_end", "on_train_end"):
            self.callback_list.__dict__.pop(name, None)
