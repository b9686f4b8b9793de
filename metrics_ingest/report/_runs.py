"""One run as the report shows it: its normalized document, where it came from,
and which of its null values the file spelled as non-finite.

The document is checked by the function's own validator (``ingest.document``),
so a file the report draws is one the function would ingest, and a bad one is
named by the same JSON path the function would give.

Example::

    run = run_from_bytes(b'{"epochs": [0, 1], "loss": {"loss": [0.5, NaN]}}', label="a")
    run.document["loss"]["loss"]   # [0.5, None]
    run.non_finite                 # {("loss", "loss"): [(1, "NaN")]}
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from typing import Any

from ingest import document as metrics_document
from ingest.errors import Rejected


class ReportError(ValueError):
    """A source the report cannot draw (a bad file, a missing object, row or folder): exit status 2."""


class SourceUnavailable(RuntimeError):
    """A source that could not be reached (database down, GCS error): exit status 1."""


# The per-epoch series the page draws, as paths into the document.
_SERIES_MAPS = ("loss", "metrics", "gradient", "timing")
_STATS_MAPS = ("weight_stats", "gradient_stats")
_STAT_SERIES = ("mean", "std", "min", "max", "norm")


@dataclasses.dataclass
class Run:
    """A run to draw.

    Args:
        label: the run's name on the page (unique within a report).
        document: the normalized document (``ingest.document.normalize``).
        provenance: (fact, value) pairs shown in the run's section, in order.
        non_finite: series path -> [(index, "NaN" | "Infinity" | "-Infinity")]
            for values the file spelled as non-finite (they are null in ``document``).
        final_non_finite: ``final_metrics`` names whose value was non-finite.
    """

    label: str
    document: dict[str, Any]
    provenance: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    non_finite: dict[tuple[str, ...], list[tuple[int, str]]] = dataclasses.field(default_factory=dict)
    final_non_finite: dict[str, str] = dataclasses.field(default_factory=dict)


def run_from_bytes(data: bytes, *, label: str, where: str | None = None,
                   provenance: list[tuple[str, str]] | None = None) -> Run:
    """A file's bytes -> :class:`Run`; ``ReportError`` naming ``where`` and the bad field otherwise."""
    where = where or label
    try:
        prepared = metrics_document.prepare(data)
    except Rejected as exc:
        raise ReportError(f"{where} is not a metrics document: {exc.reason}") from None
    run = Run(label, prepared.document, list(provenance or []))
    # The function stores non-finite values as null; the bytes may say which
    # nulls were NaN or Infinity (older writers), so they are read once more
    # with those tokens kept as floats. Overflowing literals (1e999) parse as
    # infinities either way.
    raw = json.loads(bytes(data).decode("utf-8"), parse_constant=float)
    for path, values in _series(raw):
        marks = [(i, _spell(v)) for i, v in enumerate(values) if type(v) is float and not math.isfinite(v)]
        if marks:
            run.non_finite[path] = marks
    for name, value in (raw.get("final_metrics") or {}).items():
        if type(value) is float and not math.isfinite(value):
            run.final_non_finite[name] = _spell(value)
    return run


def run_from_document(doc: Any, *, label: str, where: str,
                      provenance: list[tuple[str, str]] | None = None) -> Run:
    """A document already parsed (a row's jsonb) -> :class:`Run`, checked as a file would be."""
    try:
        metrics_document.validate(doc)
    except Rejected as exc:
        raise ReportError(f"{where} is not a metrics document: {exc.reason}") from None
    return Run(label, metrics_document.normalize(doc), list(provenance or []))


def _spell(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _series(doc: dict[str, Any]) -> Iterator[tuple[tuple[str, ...], list[Any]]]:
    """(path, values) of every per-epoch series the page draws."""
    for key in _SERIES_MAPS:
        for name, values in (doc.get(key) or {}).items():
            yield (key, name), values
    for key in _STATS_MAPS:
        for tower, stats in (doc.get(key) or {}).items():
            for stat in _STAT_SERIES:
                if stat in stats:
                    yield (key, tower, stat), stats[stat]


def unique_labels(runs: list[Run]) -> None:
    """Make labels unique in place (``a``, ``a #2``...): the legend tells runs apart by them."""
    seen: dict[str, int] = {}
    for run in runs:
        count = seen.get(run.label, 0) + 1
        seen[run.label] = count
        if count > 1:
            run.label = f"{run.label} #{count}"
