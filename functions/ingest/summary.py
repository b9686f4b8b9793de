"""The ``summary`` the function adds to every history: one line per series, for ranking runs.

For every series of ``loss`` and ``metrics``: its ``final`` value (the last
epoch's, null when nothing was logged there), its ``best`` value and that
value's epoch ``best_epoch`` (the minimum for names containing ``loss`` or
``error``, the maximum otherwise; the first epoch on ties; nulls never count)
and ``nulls``, how many entries are null. The platform ranks runs from these
few numbers instead of loading every series (docs/platform.md has the query).

Pure: no I/O, the document is not modified. A non-finite float (a document
not yet normalized) counts as null, as it would be stored.

Example::

    summarize({"epochs": [0, 1, 2], "loss": {"val_loss": [0.9, None, 0.7]}, "metrics": {}})
    # {'val_loss': {'final': 0.7, 'best': 0.7, 'best_epoch': 2, 'nulls': 1}}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

SUMMARIZED_MAPS = ("loss", "metrics")
_LOWER_IS_BETTER = ("loss", "error")
_INFINITIES = (math.inf, -math.inf)


def lower_is_better(name: str) -> bool:
    """Whether the best value of series ``name`` is its minimum (names containing ``loss`` or ``error``)."""
    return any(word in name for word in _LOWER_IS_BETTER)


def summarize(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: {"final", "best", "best_epoch", "nulls"}}`` for every series of ``loss`` and ``metrics``.

    A name present in both maps (never written by the trainer) is summarized
    from ``loss``, the map read first.
    """
    epochs = document.get("epochs") or []
    out: dict[str, dict[str, Any]] = {}
    for key in SUMMARIZED_MAPS:
        for name, values in (document.get(key) or {}).items():
            if name not in out:
                out[name] = summarize_series(name, values, epochs)
    return out


def summarize_series(name: str, values: Sequence[Any], epochs: Sequence[int]) -> dict[str, Any]:
    """One series' summary (see :func:`summarize`); ``values[i]`` belongs to ``epochs[i]``."""
    nulls = values.count(None)
    present = [v for v in values if v is not None] if nulls else values
    if not _all_finite(present):  # only in a document not yet normalized: NaN and infinities are nulls too
        present = [v for v in present if v == v and v not in _INFINITIES]
        nulls = len(values) - len(present)
    final = values[-1] if values else None
    if final is not None and not (final == final and final not in _INFINITIES):
        final = None
    if not present:
        return {"final": final, "best": None, "best_epoch": None, "nulls": len(values)}
    best = min(present) if lower_is_better(name) else max(present)
    index = values.index(best)  # the first entry equal to best (None and NaN never are): ties go to the earliest
    return {
        "final": final,
        "best": best,
        "best_epoch": epochs[index] if index < len(epochs) else None,
        "nulls": nulls,
    }


def _all_finite(values: Sequence[Any]) -> bool:
    """Whether no value is NaN or infinite, at C speed: an exact sum is finite unless one is
    (or the finite ones overflow it, or an integer is too large for a float: then the slow check decides)."""
    try:
        return math.isfinite(math.fsum(values))
    except OverflowError:
        return False
