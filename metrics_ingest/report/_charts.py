"""Runs -> the page's sections of charts, as plain data for ``report.js``.

One chart per series name: a ``val_X`` series is drawn in the chart of ``X``
(dashed, same colour) when ``X`` exists in the same map, otherwise in a chart of
its own. Every run's series of that name is overlaid in the chart. Sections:
loss, metrics grouped by the part of their name before the first ``/``,
weight norms, per tower weight and gradient statistics (one heat map per run
and histogram), timing.

Example::

    sections = build_sections([run])
    [s["title"] for s in sections]   # ['Loss', 'Metrics · factorized_top_k', 'Weight norms (L2)', ...]
"""

from __future__ import annotations

import math
import re
from typing import Any

from metrics_ingest.report._runs import Run

_STATS = (("weight_stats", "Weights"), ("gradient_stats", "Gradients"))
_STAT_SERIES = ("mean", "std", "min", "max", "norm")


def build_sections(runs: list[Run]) -> list[dict[str, Any]]:
    """The chart sections for ``runs`` (empty sections left out)."""
    sections: list[dict[str, Any]] = []
    _add(sections, "loss", "Loss", _series_charts(runs, "loss"))
    groups: dict[str, list[dict[str, Any]]] = {}
    for chart in _series_charts(runs, "metrics"):
        name = chart["title"]
        group = name.split("/", 1)[0] if "/" in name else ""
        groups.setdefault(group, []).append(chart)
    for group in sorted(groups, key=lambda g: (g == "", g)):
        title = f"Metrics · {group}" if group else "Metrics"
        _add(sections, f"metrics-{_slug(group) or 'other'}", title, groups[group])
    _add(sections, "norms", "Weight norms (L2)", _series_charts(runs, "gradient"))
    for key, what in _STATS:
        towers = _ordered(run.document.get(key) or {} for run in runs)
        for tower in towers:
            charts = _stats_charts(runs, key, what.lower(), tower) + _heatmaps(runs, key, what.lower(), tower)
            _add(sections, f"{_slug(key)}-{_slug(tower)}", f"{what} · {tower}", charts)
    _add(sections, "timing", "Timing", _series_charts(runs, "timing"))
    return sections


def _add(sections: list[dict[str, Any]], ident: str, title: str, charts: list[dict[str, Any]]) -> None:
    if charts:
        sections.append({"id": ident, "title": title, "charts": charts})


def _ordered(maps: Any) -> list[str]:
    """The keys of several dicts, in first-seen order."""
    seen: dict[str, None] = {}
    for mapping in maps:
        for key in mapping:
            seen.setdefault(key, None)
    return list(seen)


def _series_charts(runs: list[Run], key: str) -> list[dict[str, Any]]:
    names = _ordered((run.document.get(key) or {}) for run in runs)
    present = set(names)
    members: dict[str, list[str]] = {}  # chart -> its series names (X, then val_X)
    for name in names:
        base = name[4:] if name.startswith("val_") and name[4:] in present else name
        members.setdefault(base, []).append(name)
    charts = []
    for base, group in members.items():
        group.sort(key=lambda n: n != base)
        chart = _chart(f"{key}-{base}", base, key)
        chart["key"] = " ".join([key, *group])
        for index, run in enumerate(runs):
            series_map = run.document.get(key) or {}
            for name in group:
                if name in series_map:
                    chart["series"].append(_line(index, run, (key, name), name, series_map[name], name != base))
        charts.append(chart)
    return charts


def _stats_charts(runs: list[Run], key: str, what: str, tower: str) -> list[dict[str, Any]]:
    charts = []
    for stat in _STAT_SERIES:
        chart = _chart(f"{key}-{tower}-{stat}", f"{tower} {what} {stat}", key)
        for index, run in enumerate(runs):
            stats = (run.document.get(key) or {}).get(tower) or {}
            if stat in stats:
                chart["series"].append(_line(index, run, (key, tower, stat), stat, stats[stat], False))
        if chart["series"]:
            charts.append(chart)
    return charts


def _heatmaps(runs: list[Run], key: str, what: str, tower: str) -> list[dict[str, Any]]:
    charts = []
    for index, run in enumerate(runs):
        histogram = ((run.document.get(key) or {}).get(tower) or {}).get("histogram")
        if not histogram:
            continue
        charts.append({
            "id": f"{key}-{tower}-histogram-{index}",
            "kind": "heatmap",
            "title": f"{tower} {what} histogram" + (f" · {run.label}" if len(runs) > 1 else ""),
            "key": f"{key} {tower} histogram {run.label}",
            "run": index,
            "epochs": run.document["epochs"],
            "edges": histogram["bin_edges"],
            "counts": histogram["counts"],
        })
    return charts


def _chart(ident: str, title: str, key: str) -> dict[str, Any]:
    return {"id": ident, "kind": "line", "title": title, "key": f"{key} {title}", "series": []}


def _line(index: int, run: Run, path: tuple[str, ...], name: str, values: list[Any], validation: bool) -> dict[str, Any]:
    return {
        "run": index,
        "name": name,
        "val": validation,
        "x": run.document["epochs"],
        # Any non-finite float left (an overflowing literal in a map the
        # function does not normalize) is drawn as what it is: a mark, not a value.
        "y": [v if v is None or math.isfinite(v) else None for v in values],
        "marks": run.non_finite.get(path, []) + _left_non_finite(values, run.non_finite.get(path, [])),
    }


def _left_non_finite(values: list[Any], known: list[tuple[int, str]]) -> list[tuple[int, str]]:
    seen = {i for i, _ in known}
    return [
        (i, "NaN" if math.isnan(v) else "Infinity" if v > 0 else "-Infinity")
        for i, v in enumerate(values)
        if i not in seen and isinstance(v, float) and not math.isfinite(v)
    ]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
