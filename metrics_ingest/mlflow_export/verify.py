"""Point-by-point comparison of an exported document with the MLflow run it came from.

For every metric key: the newest value at each step (recomputed here from the
raw points, apart from the builder's code) must equal the document's value at
that epoch, bit for bit as the row stores it (:func:`as_stored`: PostgreSQL's
jsonb keeps every double exactly except -0.0, which it holds as 0.0), null
where MLflow holds NaN or +-infinity, and null at every epoch where the key was
not logged. Every param must be there, its string form (``mapping.param_text``:
2048 -> "2048", true -> "true") MLflow's exact string, and the document may
hold no series, final value or param that MLflow does not. Where a key lives in
the document, and an empty name's new name, come from the same rules the export used.

Example::

    difference = verify_document(row_history, run, NameRules.default())
    print("verified" if difference is None else f"mismatch: {difference}")
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from metrics_ingest.mlflow_export.mapping import (
    Location,
    MappingError,
    NameRules,
    Plan,
    param_text,
    plan_run,
    with_document_names,
)
from metrics_ingest.mlflow_export.model import MlflowRun, Point, clean_value, order_value


def expected_values(points: list[Point]) -> dict[int, float | None]:
    """Per step, the value the document must hold (the last after sorting by step, timestamp, value)."""
    ordered = sorted(points, key=lambda p: (p[0], p[1], order_value(p[2])))  # (step, timestamp, value)
    return {p[0]: clean_value(p[2]) for p in ordered}  # later points overwrite earlier ones


def as_stored(value: float) -> float:
    """A double as the row's jsonb gives it back: itself (jsonb's numeric holds the shortest
    decimal that reads back to the same double), except -0.0, which numeric cannot hold: 0.0."""
    return 0.0 if value == 0 else value


def verify_document(doc: Mapping[str, Any], run: MlflowRun, rules: NameRules, plan: Plan | None = None) -> str | None:
    """None when ``doc`` holds exactly ``run``'s history; else the first difference, in words.

    ``plan`` (where each key lives) may be passed when already made for ``run`` with ``rules``.
    """
    if not isinstance(doc, Mapping):
        return "the row has no history"
    mlflow = doc.get("mlflow")
    if not isinstance(mlflow, Mapping) or mlflow.get("run_id") != run.run_id:
        return f"the document is not the export of run {run.run_id} (mlflow.run_id is {_short(mlflow)})"
    if plan is None:
        try:
            plan = plan_run(run, rules)  # renames empty names itself
        except MappingError as exc:
            return str(exc)
    run = with_document_names(run)
    epochs = doc.get("epochs")
    if epochs != plan.epochs:
        return f"epochs differ: MLflow has steps {_short(plan.epochs)}, the document {_short(epochs)}"

    expected_names: dict[str, set[str]] = {"loss": set(), "metrics": set(), "gradient": set(), "final_metrics": set()}
    for key in sorted(run.metrics):
        want = expected_values(run.metrics[key])
        placement = plan.placements.get(key)
        if placement is None:
            return f"metric {key!r} has no place in the document"
        for location in placement.locations:
            if location.section in expected_names:
                expected_names[location.section].add(location.name)
            if location.section == "final_metrics":
                final = doc.get("final_metrics", {})
                if key not in final:
                    return f"final_metrics.{key} is missing"
                value = want[max(want)] if want else None
                if not _same(final[key], value):
                    return f"final_metrics.{key}: MLflow has {value!r} (last step), the document {final[key]!r}"
                continue
            series = _series(doc, location, len(plan.epochs))
            if isinstance(series, str):
                return series
            for epoch, got in zip(plan.epochs, series):
                value = want.get(epoch)
                if not _same(got, value):
                    what = "nothing" if epoch not in want else repr(value)
                    return f"{location} at epoch {epoch} (metric {key!r}): MLflow has {what}, the document {got!r}"

    for (section, tower), edges in plan.histogram_edges.items():
        histogram = ((doc.get(section) or {}).get(tower) or {}).get("histogram") or {}
        if histogram.get("bin_edges") != edges:
            return f"{section}.{tower}.histogram.bin_edges: MLflow's param has {_short(edges)}, the document {_short(histogram.get('bin_edges'))}"
    for section, names in expected_names.items():
        extra = sorted(set(doc.get(section, {}) or {}) - names)
        if extra:
            return f"{section}.{extra[0]} is in the document but not in MLflow"
    params = doc.get("params", {}) or {}
    for key in sorted(run.params):
        if key not in params:
            return f"params.{key} is missing"
        if param_text(params[key]) != run.params[key]:
            return f"params.{key}: MLflow has {_short(run.params[key])}, the document {_short(params[key])}"
    extra_params = sorted(set(params) - set(run.params))
    if extra_params:
        return f"params.{extra_params[0]} is in the document but not in MLflow"
    return None


def _series(doc: Mapping[str, Any], location: Location, n: int) -> list[Any] | str:
    section = doc.get(location.section)
    if not isinstance(section, Mapping) or location.name not in section:
        return f"{location.section}.{location.name} is missing"
    value = section[location.name]
    if location.bin is not None:
        histogram = value.get("histogram") if isinstance(value, Mapping) else None
        if not isinstance(histogram, Mapping) or not isinstance(histogram.get("counts"), list):
            return f"{location.section}.{location.name}.histogram is missing"
        rows = histogram["counts"]
        if len(rows) != n:
            return f"{location.section}.{location.name}.histogram.counts has {len(rows)} rows for {n} epochs"
        return [None if row is None else row[location.bin] for row in rows]
    if location.stat is not None:
        if not isinstance(value, Mapping) or location.stat not in value:
            return f"{location} is missing"
        value = value[location.stat]
    if not isinstance(value, list) or len(value) != n:
        return f"{location} is not a series of {n} values"
    return value


def _same(got: Any, want: float | None) -> bool:
    """The rule: both null, or the same 64 bits once both are as the row stores them."""
    if want is None or got is None:
        return got is None and want is None
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return False
    try:
        number = float(got)  # jsonb prints 1e300 as a 301-digit integer: it reads back as an int
    except OverflowError:
        return False
    return struct.pack("<d", as_stored(number)) == struct.pack("<d", as_stored(want))


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
