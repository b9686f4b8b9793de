"""A per-process memory budget for the files being ingested at once.

Parsing a file costs many times its size in Python objects, and how many
depends on how dense it is, not on how large: measured peaks
(``bench/bench_memory.py``) are ~4.5x the file for a real training_metrics.json,
~6x for ``[1,1,...]``, ~12x for ``[0.5,0.5,...]`` and ~27x for ``[{},{},...]``
(each value an object and a pointer). The function serves several events at
once (``--concurrency``) and ``replay`` runs several workers: without a budget,
a few dense files arriving together exceed the instance's memory and kill
every event in flight. So each event is admitted at the worst case,
``PARSE_COST_PER_BYTE`` x its size, against ``BUDGET_BYTES``; an event that does
not fit waits for memory instead. Real files (~0.3-3 MB) never wait in
practice; with the default MAX_METRICS_BYTES (16 MiB) one file at the cap,
however dense, fits the budget alone.

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

# Memory per byte of file at the worst (the measured 27x of ``[{},{},...]``,
# the downloaded bytes included, plus room for the download buffer's growth).
PARSE_COST_PER_BYTE = 30
# The default memory for files in flight per process (MEMORY_BUDGET_BYTES): a
# 1 GiB instance less the runtime (~75 MiB measured, more while serving) and
# allocator headroom. deploy.sh sets it from the instance's --memory.
BUDGET_BYTES = 768 * 2**20
# The largest MAX_METRICS_BYTES whose worst case fits the budget alone (25.6 MiB):
# above it, one dense file at the cap can still exceed the instance's memory.
SAFE_MAX_METRICS_BYTES = BUDGET_BYTES // PARSE_COST_PER_BYTE


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
    """The process's budget (``settings.memory_budget_bytes``, shared by every thread).

    One per (cap, budget) pair, so that tests with settings of their own do not
    wait on each other; a deployment has one.
    """
    key = (settings.max_metrics_bytes, settings.memory_budget_bytes)
    found = _budgets.get(key)
    if found is not None:
        return found
    with _budgets_lock:
        return _budgets.setdefault(key, MemoryBudget(settings.memory_budget_bytes))


def memory_weight(ref: ObjectRef, settings: Settings) -> int:
    """What an event may cost in memory at the worst: ``PARSE_COST_PER_BYTE`` x its
    size, or x the cap when the size is unknown or the object is gzip (its
    inflated size is unknown); 0 when it is rejected from its size alone
    (never downloaded)."""
    cap = settings.max_metrics_bytes
    if ref.size is not None and ref.size > cap:
        return 0
    if ref.size is None or (ref.content_encoding or "").lower() == "gzip":
        return cap * PARSE_COST_PER_BYTE
    return ref.size * PARSE_COST_PER_BYTE
