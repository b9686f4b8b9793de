"""The bounded worker loop: items over a thread pool, results back in the caller's thread.

Submitting lazily (never more than ``in_flight`` items queued) is what makes
Ctrl-C cheap: once ``stopping()`` is true nothing new starts, and only the few
items already in flight are waited for. Each item may give several results
(an export reads a group of rows at once); they stream back through a queue
as the worker produces them.

Example::

    for outcome in bounded(refs, lambda ref: [ingest(ref)], workers=8, stopping=interrupt.event.is_set):
        report.outcomes.append(outcome)
"""

from __future__ import annotations

import concurrent.futures as cf
import queue
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from metrics_ingest.batch.errors import UsageError

T = TypeVar("T")
R = TypeVar("R")

# Workers are threads, each with a database connection and an HTTP connection:
# beyond this a batch only queues on the database (and a huge figure would
# pre-fill pools for nothing).
MAX_WORKERS = 256


def check_workers(workers: int) -> None:
    """Raise UsageError unless 1 <= workers <= MAX_WORKERS."""
    if not 1 <= workers <= MAX_WORKERS:
        raise UsageError(
            f"Invalid value for argument `workers`. Received: workers={workers}. Expected 1 to {MAX_WORKERS}."
        )


def bounded(
    items: Iterable[T],
    work: Callable[[T], Iterable[R]],
    *,
    workers: int,
    stopping: Callable[[], bool],
    in_flight: int | None = None,
    name: str = "batch",
) -> Iterator[R]:
    """Run ``work`` over ``items`` on ``workers`` threads, at most ``in_flight`` (default 2 x workers)
    submitted at once; yields every result in the calling thread. An exception from ``work`` is a bug
    in our own code: it is raised here rather than losing items silently."""
    limit = in_flight or workers * 2
    results: queue.Queue[R] = queue.Queue()

    def run(item: T) -> None:
        for result in work(item):
            results.put(result)

    todo = iter(items)
    exhausted = False
    pending: set[cf.Future[None]] = set()
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        while True:
            while not exhausted and not stopping() and len(pending) < limit:
                item = next(todo, _END)
                if item is _END:
                    exhausted = True
                else:
                    pending.add(pool.submit(run, item))  # type: ignore[arg-type]
            done: set[cf.Future[None]] = set()
            if pending:
                done, pending = cf.wait(pending, timeout=0.1, return_when=cf.FIRST_COMPLETED)
            while not results.empty():
                yield results.get_nowait()
            for future in done:
                future.result()
            if not pending and (exhausted or stopping()):
                while not results.empty():
                    yield results.get_nowait()
                return


_END = object()
