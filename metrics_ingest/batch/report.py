"""What every batch report has: its items' outcomes, the counts by outcome, and the exit status.

A command's report subclasses :class:`BatchReport`, naming its ``OUTCOMES``
and saying which outcome is not done (``is_bad``); the counting, the
"not started" figure after Ctrl-C and the exit status are the same for all:
130 when interrupted, 1 when any item is not done, else 0.

Example::

    @dataclasses.dataclass(kw_only=True)
    class MyReport(BatchReport):
        OUTCOMES = ("done", "failed")
        def is_bad(self, outcome): return outcome.outcome == "failed"
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, ClassVar


@dataclasses.dataclass(kw_only=True)
class BatchReport:
    """The outcomes of one batch run (``outcomes``: objects with an ``outcome`` attribute).

    Example::

        report.counts["failed"], report.not_started, report.exit_status
    """

    OUTCOMES: ClassVar[tuple[str, ...]] = ()

    workers: int
    run_id: str
    outcomes: list[Any] = dataclasses.field(default_factory=list)
    interrupted: bool = False
    duration_s: float = 0.0

    @property
    def total(self) -> int:
        """How many items the batch meant to process (listed files, selected rows)."""
        raise NotImplementedError

    def is_bad(self, outcome: Any) -> bool:
        """Whether this item is not done (makes the exit status 1)."""
        raise NotImplementedError

    @property
    def counts(self) -> dict[str, int]:
        counter = Counter(o.outcome for o in self.outcomes)
        return {name: counter.get(name, 0) for name in self.OUTCOMES}

    @property
    def not_started(self) -> int:
        return self.total - len(self.outcomes)

    @property
    def exit_status(self) -> int:
        if self.interrupted:
            return 130
        return 1 if any(self.is_bad(o) for o in self.outcomes) else 0
