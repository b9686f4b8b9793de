"""``metrics-ingest report``: one run, or several side by side, as one self-contained HTML page.

The public surface: :func:`load_sources` (files, folders, ``gs://`` objects,
QuickTest rows -> runs), :func:`render_page` (runs -> HTML) and
:func:`write_report` (both, to a file).

Example::

    from ingest.config import Settings
    from metrics_ingest.report import load_sources, write_report

    runs = load_sources(["review/"], settings=Settings.from_env())
    write_report(runs, "review.html")
"""

from __future__ import annotations

import os
from pathlib import Path

from metrics_ingest.report._page import render_page
from metrics_ingest.report._runs import ReportError, Run, SourceUnavailable, run_from_bytes, run_from_document, unique_labels
from metrics_ingest.report._sources import load_sources, quicktest_run

__all__ = [
    "ReportError", "Run", "SourceUnavailable", "load_sources", "quicktest_run", "render_page", "run_from_bytes",
    "run_from_document", "write_report",
]


def write_report(runs: list[Run], path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Write the page for ``runs`` to ``path`` (replaced whole: a reader never sees half a page)."""
    if not runs:
        raise ReportError("no runs to show")
    unique_labels(runs)
    target = Path(path)
    text = render_page(runs, title=title)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, target)
    return target
