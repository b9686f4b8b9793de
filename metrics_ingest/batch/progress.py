"""Progress on stderr: a tqdm bar on a terminal, one plain line per item otherwise.

Items that are not done are printed above the bar as they happen. A command
gives the line format and the test for "print it above the bar".

Example::

    progress = Progress(sys.stderr, format_line=lambda o: o.outcome, notable=lambda o: o.outcome == "failed")
    progress.start(120, unit="row")
    progress.update(outcome)
    progress.close()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO


class Progress:
    """A tqdm bar on a terminal (``tty``; default: ``stream.isatty()``), plain lines otherwise."""

    def __init__(
        self,
        stream: TextIO,
        *,
        format_line: Callable[[Any], str],
        notable: Callable[[Any], bool],
        tty: bool | None = None,
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._format_line = format_line
        self._notable = notable
        self._bar: Any = None

    def start(self, total: int, unit: str) -> None:
        """The bar, once the number of items is known (nothing printed without a terminal)."""
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, file=self.stream, unit=unit, dynamic_ncols=True)

    def update(self, outcome: Any) -> None:
        if self._bar is not None:
            if self._notable(outcome):
                self._bar.write(self._format_line(outcome), file=self.stream)
            self._bar.update(1)
        else:
            print(self._format_line(outcome), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
