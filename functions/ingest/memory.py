"""A per-process memory budget for the files being ingested at once.

Parsing a file costs many times its size in Python objects, and how many
depends on how dense it is, not on how large: measured peaks
(``bench/bench_memory.py``) are ~4.5x the file for a real training_metrics.json,
~6x for ``[1,1,...]``, ~12x for ``[0.5,0.5,...]``, ~28x for ``[{},{},...]`` and
~44x for nested one-key objects (each value an object and a pointer), valid
or not. The function serves several events at
once (``--concurrency``) and ``replay`` runs several workers: without a budget,
a few dense files arriving together exceed the instance's memory and kill
every event in flight. So each event is admitted at the worst case,
``PARSE_COST_PER_BYTE`` x its size, against the budget (``MEMORY_BUDGET_BYTES``); an event that does
not fit waits for memory instead. Real files (~0.3-3 MB) never wait in
practice; with the default MAX_METRICS_BYTES (16 MiB) one file at the cap,
however dense, fits the budget alone.

Example::

    with memory_budget(settings.memory_budget_bytes).hold(memory_weight(ref, settings.max_metrics_bytes)):
        ...  # download, parse, write
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ingest.objects import ObjectRef

# Memory per byte of file at the worst, the downloaded bytes, the decoded text
# and the pre-parse scan included: the worst shape measured by
# bench/bench_memory.py is nested one-key objects ('{"":{"":{"":{}}}},...'),
# ~44x (each level a 184-byte dict for 5 bytes of text), with 10% to spare;
# schema-invalid files cost no more (their errors never copy the failing
# value: ingest.document). 16 MiB x 48 is the default budget, 768 MiB.
PARSE_COST_PER_BYTE = 48


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


def memory_budget(capacity: int) -> MemoryBudget:
    """The process's budget of ``capacity`` bytes (``Settings.memory_budget_bytes``), shared by every thread.

    One per capacity, so that tests with settings of their own do not wait on
    each other; a deployment has one.
    """
    found = _budgets.get(capacity)
    if found is not None:
        return found
    with _budgets_lock:
        return _budgets.setdefault(capacity, MemoryBudget(capacity))


def memory_weight(ref: ObjectRef, cap: int) -> int:
    """What an event may cost in memory at the worst: ``PARSE_COST_PER_BYTE`` x its
    size, or x the cap when the size is unknown or the object is gzip (its
    inflated size is unknown); 0 when it is rejected from its size alone
    (never downloaded). ``cap`` is ``Settings.max_metrics_bytes``."""
    if ref.size is not None and ref.size > cap:
        return 0
    if ref.size is None or (ref.content_encoding or "").lower() == "gzip":
        return cap * PARSE_COST_PER_BYTE
    return ref.size * PARSE_COST_PER_BYTE
