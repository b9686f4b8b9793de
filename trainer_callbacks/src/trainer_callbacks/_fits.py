"""One ``fit()`` at a time: which callbacks belong to it, its hooks on Keras' callback list, its numbering.

A second ``fit()`` on one collector that starts at epoch 0 continues the document after
its last epoch: its epochs are numbered from there (as if ``initial_epoch`` had been
given), ``params.epochs`` counts every fit's, and each fit is recorded in ``fits``.
A fit with an explicit ``initial_epoch``, and the first fit of a process, keep
Keras' own numbers (the resume rules decide what a restarted process continues).

Example::

    fits = Fits()
    fits.open(callback, callback_list, {"epochs": 2}, on_sync, on_end)   # at on_train_begin
    fits.number(doc, 0)                                                 # at the first epoch begin
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from trainer_callbacks._aligned_document import AlignedDocument
from trainer_callbacks._backup_sync import FitHooks

logger = logging.getLogger("trainer_callbacks")


class Fits:
    """The fit in progress (at most one) and what earlier fits left: see the module docstring."""

    def __init__(self) -> None:
        self.hooks: FitHooks | None = None
        self.callbacks: set[int] = set()  # where no callback list was found: the fit's callbacks, by id
        self.pending = False  # opened, its first epoch not seen yet
        self.keras_epochs: int | None = None
        self.begun = 0
        self.offset = 0  # added to every step logged during (and after) this fit
        self.sigterm_installed = False

    def joins_open_fit(self, callback: Any, callback_list: Any) -> bool:
        """Whether ``callback`` begins training within the fit already open (another callback of it began first)."""
        if callback_list is not None:
            return self.hooks is not None and self.hooks.callback_list is callback_list
        if self.callbacks:
            self.callbacks.add(id(callback))
            return True
        return False

    def open(self, callback: Any, callback_list: Any, keras_params: Mapping[str, Any],
             on_sync: Callable[[], bool], on_end: Callable[[], None]) -> None:
        self.pending = True
        epochs = keras_params.get("epochs")
        self.keras_epochs = epochs if isinstance(epochs, int) else None
        if callback_list is not None:
            self.hooks = FitHooks.attach(callback_list, on_sync, on_end)
        else:
            self.callbacks = {id(callback)}

    def number(self, doc: AlignedDocument, epoch: int) -> None:
        """The fit's first epoch is ``epoch`` (Keras' number): number it and record it in ``fits``."""
        self.pending = False
        last = doc.last_epoch()
        self.offset = last + 1 if self.begun and epoch == 0 and last is not None else 0
        self.begun += 1
        doc.begin_fit(self.offset + epoch, epoch)
        if self.offset:
            logger.info("a new fit() from epoch 0 on this collector: its epochs are numbered from %d", self.offset)
            if self.keras_epochs is not None:
                doc.put_param("epochs", self.offset + self.keras_epochs)

    def callback_ended(self, callback: Any) -> bool:
        """A callback's ``on_train_end`` where no callback list was found; True when it was the fit's last."""
        if self.hooks is None and id(callback) in self.callbacks:
            self.callbacks.discard(id(callback))
            return not self.callbacks
        return False

    def close(self) -> None:
        self.hooks = None
        self.callbacks = set()
        self.pending = False
