"""The subcommands of ``metrics-ingest``, one module each (see ``metrics_ingest.cli``)."""

from __future__ import annotations

import re


def describe(docstring: str | None) -> str:
    """A command module's docstring as ``--help`` shows it: reST literals and
    ``Example::`` markers become plain text."""
    text = (docstring or "").replace("``", "")
    return re.sub(r"::$", ":", text, flags=re.M)
