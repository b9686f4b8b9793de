"""The subcommands of ``metrics-ingest``, one module each (see ``metrics_ingest.cli``)."""

from __future__ import annotations

import argparse
import re


def describe(docstring: str | None) -> str:
    """A command module's docstring as ``--help`` shows it: reST literals and
    ``Example::`` markers become plain text."""
    text = (docstring or "").replace("``", "")
    return re.sub(r"::$", ":", text, flags=re.M)


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts that must be at least 1 (a bad value exits 2 with the usage)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
