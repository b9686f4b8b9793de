"""Checks of logged values (steps, numbers, histograms), as the format and the ingestion function take them.

Each returns the value converted, or raises ``ValueError`` naming the argument, so a
refused call changes nothing.

Example::

    check_step(np.int64(3))        # 3
    check_step(2.9)                # ValueError: not a whole number
    number(np.float32(0.1), "value")   # 0.1
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from trainer_callbacks import document, limits

STAT_NAMES = limits.STAT_NAMES


def check_step(step: Any, argument: str = "step") -> int:
    """``step`` as an int epoch index, or ValueError naming ``argument``."""
    if type(step) is int:  # what Keras passes: no conversion needed
        return limits.check_epoch(step, argument=argument)
    expected = "an integer epoch index >= 0"
    if isinstance(step, bool | np.bool_):
        raise limits.invalid(argument, step, expected, "a bool")
    try:
        value = document.to_number(step)  # a NumPy or tensor scalar too
    except (document.NotAScalar, document.NotAJsonNumber) as error:
        raise limits.invalid(argument, step, expected, str(error)) from error
    if value is None or (isinstance(value, float) and not value.is_integer()):
        # Truncating 2.9 to 2 would file the values under another epoch.
        raise limits.invalid(argument, step, expected, "not a whole number")
    return limits.check_epoch(int(value), argument=argument)


def number(value: Any, argument: str, of: str = "") -> float | int | None:
    try:
        return document.to_number(value)
    except (document.NotAScalar, document.NotAJsonNumber) as error:
        raise ValueError(
            f"Invalid value for argument `{argument}`{of}. Received: {argument}={limits.clipped_repr(value)}. "
            f"Expected one number (NaN and infinities are stored as null): {error}"
        ) from error


def check_stats(section: str, tower: str, stats: Mapping[str, Any]) -> dict[str, Any]:
    limits.check_name(tower, argument="tower", section=section)
    unknown = set(stats) - set(STAT_NAMES)
    if unknown:
        raise ValueError(
            f"Invalid value for argument `stats`. Received: unknown statistics {sorted(map(str, unknown))}. "
            f"Expected some of {list(STAT_NAMES)}."
        )
    return {name: number(value, f"stats[{name!r}]") for name, value in stats.items()}


def check_histogram(histogram: Mapping[str, Any]) -> tuple[list[Any], list[int]]:
    """``(bin_edges, counts)`` as the format and the ingestion function take them, or ValueError."""
    if not isinstance(histogram, Mapping) or "bin_edges" not in histogram or "counts" not in histogram:
        raise limits.invalid("histogram", histogram, '{"bin_edges": [B+1 numbers], "counts": [B whole numbers]}')
    raw_edges, raw_counts = plain(histogram["bin_edges"]), plain(histogram["counts"])
    edges = [number(e, "histogram['bin_edges']") for e in raw_edges]
    expected = f"at least {limits.MIN_BIN_EDGES} finite, strictly increasing numbers"
    if len(edges) < limits.MIN_BIN_EDGES or None in edges:
        raise limits.invalid("histogram['bin_edges']", histogram["bin_edges"], expected)
    if any(not b > a for a, b in zip(edges, edges[1:])):
        raise limits.invalid("histogram['bin_edges']", histogram["bin_edges"], expected, "not strictly increasing")
    counts = []
    expected = f"{len(edges) - 1} whole numbers" + (f" >= {limits.MIN_COUNT}" if limits.MIN_COUNT is not None else "")
    for raw in raw_counts:
        count = number(raw, "histogram['counts']")
        if count is None or (isinstance(count, float) and not count.is_integer()):
            raise limits.invalid("histogram['counts']", histogram["counts"], expected, f"{raw!r} is not a whole number")
        count = int(count)
        if limits.MIN_COUNT is not None and count < limits.MIN_COUNT:
            raise limits.invalid("histogram['counts']", histogram["counts"], expected, f"{count} is below {limits.MIN_COUNT}")
        counts.append(count)
    if len(counts) != len(edges) - 1:
        raise limits.invalid("histogram['counts']", histogram["counts"], expected, f"{len(counts)} counts for {len(edges)} edges")
    return edges, counts


def plain(values: Any) -> Any:
    """A NumPy array of integers or float64 as Python numbers in one call, not one conversion per bin
    (float32 keeps going through ``to_number``, for its shortest spelling)."""
    if isinstance(values, np.ndarray) and (values.dtype.kind in "iub" or values.dtype == np.float64):
        return values.tolist()
    return values


def param(name: str, value: Any) -> Any:
    """A hyperparameter as stored: numbers, bools, None, strings (dicts and lists as JSON text) within the schema's bound."""
    limits.check_name(name, argument="name", section="params")
    try:
        converted = document.to_param(value)
    except document.NotAJsonNumber as error:
        raise limits.invalid("value", value, f"a number, bool, string or None for param {name!r}", str(error)) from error
    if isinstance(converted, str):
        limits.check_text(converted, argument="value", max_length=limits.MAX_PARAM_LENGTH)
    return converted
