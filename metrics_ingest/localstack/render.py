"""Print a QuickTest row's training history so a person reads it at a glance.

Example::

    print(render_history(history, quicktest_id=42, ingestion=record))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

BLOCKS = "▁▂▃▄▅▆▇█"
ASCII_BLOCKS = "_.-=+*#@"


def sparkline(values: Sequence[float | None], *, ascii_only: bool = False) -> str:
    """One character per value, low to high; a gap for a missing value.

    >>> sparkline([3, 2, 1, None, 0])
    '█▆▃ ▁'
    """
    blocks = ASCII_BLOCKS if ascii_only else BLOCKS
    finite = [v for v in values if _finite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    out = []
    for v in values:
        if not _finite(v):
            out.append(" ")
        else:
            out.append(blocks[min(len(blocks) - 1, int((v - low) / span * (len(blocks) - 1) + 0.5))])
    return "".join(out)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: Any) -> str:
    if not _finite(v):
        return "-" if v is None else str(v)
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{v:.2e}"
    return f"{v:.4g}"


def _series_line(name: str, values: Sequence[Any], width: int, ascii_only: bool) -> str:
    points = [v for v in values if _finite(v)]
    if not points:
        return f"    {name:<{width}}  (never logged)"
    first, last = points[0], points[-1]
    text = f"    {name:<{width}}  {_num(first):>9} -> {_num(last):<9} {sparkline(values, ascii_only=ascii_only)}"
    if len(points) < len(values):
        text += f"  ({len(points)} of {len(values)} epochs)"
    return text


def render_history(
    history: Mapping[str, Any],
    *,
    quicktest_id: int | None = None,
    folder: str | None = None,
    ingestion: Mapping[str, Any] | None = None,
    ascii_only: bool = False,
) -> str:
    """A few dozen lines: run, loss and metric curves, final metrics, towers, ingestion."""
    epochs = list(history.get("epochs") or [])
    lines: list[str] = []
    title = f"QuickTest {quicktest_id}" if quicktest_id is not None else "Training history"
    if folder:
        title += f"  {folder}"
    lines.append(title)
    span = f"epochs {epochs[0]}..{epochs[-1]}" if epochs else "no epochs"
    lines.append(
        f"  status {history.get('status', 'completed')}, {len(epochs)} epochs ({span}), saved {history.get('saved_at', '?')}"
    )
    if history.get("error"):
        lines.append(f"  error: {history['error']}")

    curves = [("loss", history.get("loss") or {}), ("metrics", history.get("metrics") or {})]
    for title, series in curves:
        if not series:
            continue
        width = max(len(n) for n in series)
        lines.append(f"  {title}:")
        for name in sorted(series, key=lambda n: (n.startswith("val_"), n)):
            lines.append(_series_line(name, series[name], width, ascii_only))

    final = history.get("final_metrics") or {}
    if final:
        lines.append("  final metrics:")
        width = max(len(n) for n in final)
        for name, value in sorted(final.items()):
            lines.append(f"    {name:<{width}}  {_num(value)}")

    towers = _towers(history)
    if towers:
        last = epochs[-1] if epochs else "?"
        lines.append(f"  towers at the last epoch ({last}):")
        header = f"    {'tower':<11}{'|w|':>9}{'w mean':>10}{'w std':>9}{'w min':>9}{'w max':>9}{'|grad|':>10}{'g std':>10}"
        lines.append(header)
        for tower in towers:
            w = (history.get("weight_stats") or {}).get(tower) or {}
            g = (history.get("gradient_stats") or {}).get(tower) or {}
            norm = (history.get("gradient") or {}).get(tower) or []
            lines.append(
                f"    {tower:<11}{_num(_last(norm)):>9}{_num(_last(w.get('mean'))):>10}{_num(_last(w.get('std'))):>9}"
                f"{_num(_last(w.get('min'))):>9}{_num(_last(w.get('max'))):>9}"
                f"{_num(_last(g.get('norm'))):>10}{_num(_last(g.get('std'))):>10}"
            )
        total = (history.get("gradient") or {}).get("total")
        if total:
            lines.append(f"    weight L2 norm, all weights: {_num(_last(total))}  {sparkline(total, ascii_only=ascii_only)}")

    params = history.get("params") or {}
    if params:
        lines.append("  params: " + ", ".join(f"{k}={v}" for k, v in sorted(params.items())))

    source = history.get("source") or {}
    if source or ingestion:
        lines.append("  ingestion:")
        if source:
            lines.append(
                f"    from gs://{source.get('bucket')}/{source.get('object') or source.get('name')}"
                f"#{source.get('generation')}, ingested at {history.get('ingested_at', '?')}"
            )
        if ingestion:
            size = ingestion.get("size_bytes")
            lines.append(
                f"    record #{ingestion.get('id')}: {ingestion.get('outcome')}"
                + (f", {size / 1024:.1f} KiB" if isinstance(size, (int, float)) else "")
                + (f", {ingestion.get('epochs')} epochs" if ingestion.get("epochs") is not None else "")
                + (f", {ingestion.get('duration_ms'):.0f} ms" if _finite(ingestion.get("duration_ms")) else "")
                + (f", event {ingestion.get('event_id')}" if ingestion.get("event_id") else "")
            )
    return "\n".join(lines)


def _towers(history: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for key in ("weight_stats", "gradient_stats", "gradient"):
        for name in history.get(key) or {}:
            if name != "total" and name not in names:
                names.append(name)
    return names


def _last(values: Any) -> Any:
    if isinstance(values, list):
        for v in reversed(values):
            if v is not None:
                return v
    return None
