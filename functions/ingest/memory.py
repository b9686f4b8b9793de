"""A per-process memory budget for the files being ingested at once.

Parsing and validating a file costs several times its size in Python objects
(about 6x for a large plain file). The function serves several events at once
(``--concurrency``) and ``replay`` runs several workers: without a budget, a
handful of files near ``MAX_METRICS_BYTES`` arriving together could exceed the
instance's memory and kill every event in flight. With it, such an event waits
for memory instead; small files (the usual ~0.5 MB) never wait in practice.

Example::

    with memory_budget(settings).hold(memory_weight(ref, settings)):
        ...  # download, parse, write
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ingest.config import Settings
    from ingest.objects import ObjectRef

# File bytes in flight per process, in units of MAX_METRICS_BYTES: two files at
# the cap (~6x each in memory, ~800 MiB with the default) fit the deployed
# 1 GiB with the runtime; a third waits.
BUDGET_FILES = 2


class MemoryBudget:
    """A weighted semaphore: a hold of ``weight`` waits while the holds in flight
    would pass ``capacity``. A weight above the capacity is held as the whole
    capacity (it runs alone rather than never). Holds are granted in arrival
    order, so a stream of small files cannot starve a large one.

    Example::

        budget = MemoryBudget(128 * 2**20)
        with budget.hold(50 * 2**20):
            ...
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._changed = threading.Condition()
        self._queue: collections.deque[object] = collections.deque()

    @contextlib.contextmanager
    def hold(self, weight: int) -> Iterator[None]:
        weight = min(weight, self.capacity)
        if weight <= 0:
            yield
            return
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            while self._queue[0] is not ticket or self.in_use + weight > self.capacity:
                self._changed.wait()
            self._queue.popleft()
            self.in_use += weight
            self._changed.notify_all()  # the next in line may fit as well
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= weight
                self._changed.notify_all()


_budgets: dict[int, MemoryBudget] = {}
_budgets_lock = threading.Lock()


def memory_budget(settings: Settings) -> MemoryBudget:
    """The process's budget for ``settings.max_metrics_bytes`` (shared by every thread)."""
    key = settings.max_metrics_bytes
    found = _budgets.get(key)
    if found is not None:
        return found
    with _budgets_lock:
        return _budgets.setdefault(key, MemoryBudget(BUDGET_FILES * key))


def memory_weight(ref: ObjectRef, settings: Settings) -> int:
    """The file bytes an event may bring into memory: its size, or the cap when
    the size is unknown or the object is gzip (its inflated size is unknown);
    0 when it is rejected from its size alone (never downloaded)."""
    cap = settings.max_metrics_bytes
    if ref.size is not None and ref.size > cap:
        return 0
    if ref.size is None or (ref.content_encoding or "").lower() == "gzip":
        return cap
    return ref.size
