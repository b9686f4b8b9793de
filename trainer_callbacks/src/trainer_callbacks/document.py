"""The training_metrics.json document: value conversion and strict JSON.

The format is defined in ``functions/ingest/schema/training_metrics.v1.schema.json``
(and described in DESIGN.md). This module only knows how to turn what a training
loop hands us (Python, NumPy or TensorFlow scalars, possibly NaN) into the values
that format allows, and how to write and read the bytes.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np

from trainer_callbacks.limits import fits_a_json_number

SCHEMA_VERSION = 1
STATUSES = ("running", "completed", "failed")
TOP_LEVEL_SERIES = ("loss", "metrics", "gradient", "timing")
STATS_SECTIONS = ("weight_stats", "gradient_stats")


class NotAScalar(TypeError):
    """A logged value that is not one number (an array, a string...)."""


class NewerSchemaVersion(ValueError):
    """A file written by a newer format version: never continued, never rewritten as this one."""


class NotAJsonNumber(ValueError):
    """An integer too large for a JSON number (beyond an IEEE 754 double: ``10**400``)."""


def to_number(value: Any) -> float | int | None:
    """Convert a scalar from Python, NumPy or TensorFlow to a JSON number.

    Non-finite values become ``None`` (JSON ``null``); float32 values keep their
    shortest float32 spelling so the file does not carry 17 noise digits.

    Raises:
        NotAScalar: not one number (an array of several, a string...).
        NotAJsonNumber: an integer beyond what a JSON reader takes (see
            ``limits.fits_a_json_number``); it would be read as infinity, or
            (``10**5000``) could not be written at all.

    Example::

        to_number(np.float32(0.1))   # 0.1
        to_number(float("nan"))      # None
    """
    kind = type(value)
    if kind is float:  # the common cases first: this runs for every value logged
        return value if math.isfinite(value) else None
    if kind is int and fits_a_json_number(value):
        return value
    if value is None:
        return None
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()  # an eager tf.Tensor or a tf.Variable
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise NotAScalar(f"expected one number, got an array of shape {value.shape}")
        value = value.reshape(())[()]
    if isinstance(value, bool | np.bool_):
        return int(bool(value))
    if isinstance(value, numbers.Integral):
        number = int(value)
        if not fits_a_json_number(number):
            raise NotAJsonNumber(f"{_size(number)} is too large for a JSON number (beyond a 64-bit float)")
        return number
    if isinstance(value, np.floating) and value.dtype.itemsize < 8:
        # str() of a float32 is its shortest round-trip spelling.
        return float(str(value)) if np.isfinite(value) else None
    if isinstance(value, numbers.Real):
        try:
            number = float(value)
        except OverflowError:  # a Fraction or Decimal beyond a float
            raise NotAJsonNumber(f"{_size(value)} is too large for a JSON number (beyond a 64-bit float)") from None
        return number if math.isfinite(number) else None
    raise NotAScalar(f"expected a number, got {type(value).__name__}")


def _size(number: Any) -> str:
    """A huge number described by its size (str() of an integer over 4300 digits raises)."""
    if isinstance(number, int):
        return f"an integer of {number.bit_length()} bits"
    return f"a {type(number).__name__}"


def to_param(value: Any) -> str | float | int | bool | None:
    """Convert a hyperparameter: numbers as numbers, bools as bools, dicts and lists as JSON text, anything else as its string."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Mapping | list | tuple):
        # JSON text, which MLflow's params and any reader parse back (a repr would not be).
        return json.dumps(value, default=str, ensure_ascii=False, allow_nan=True)
    try:
        return to_number(value)
    except NotAScalar:
        return str(value)


def utc_now() -> str:
    """ISO-8601 UTC timestamp with a ``Z`` suffix."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dumps(document: Mapping[str, Any]) -> bytes:
    """Strict JSON bytes (``allow_nan=False``: a NaN that slipped through is a bug, not a token)."""
    return json.dumps(document, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def salvage(document: Any) -> bytes:
    """JSON bytes of everything in ``document`` that can be kept, for the local fallback copy
    when :func:`dumps` fails.

    A string UTF-8 cannot encode (a lone surrogate) is written as its ``\\u`` escape
    (``json.loads`` gives back the very same string); a number no JSON can carry
    (a non-finite float, an integer ``json`` refuses to write) becomes null; any
    other object its ``str()``. The result is always valid JSON.

    Example::

        salvage({"params": {"a\\ud800": 10**5000}})   # b'{"params":{"a\\\\ud800":null}}'
    """
    return json.dumps(_keepable(document), allow_nan=False, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _keepable(value: Any) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, Mapping):
        return {key if isinstance(key, str) else _text(key): _keepable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_keepable(item) for item in value]
    if isinstance(value, int):
        try:
            str(value)  # over sys.get_int_max_str_digits() digits, json cannot write it
        except ValueError:
            return None
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    return _text(value)


def _text(value: Any) -> str | None:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ must not cost the fallback copy; the value is dropped (null)
        return None


def loads(data: bytes | str, *, non_finite: str = "reject") -> dict[str, Any]:
    """Parse a document; refuses non-objects.

    Args:
        data: the file's bytes (UTF-8) or text.
        non_finite: what to do with ``NaN``/``Infinity`` tokens and numbers too
            large for a float (``1e999``): ``"reject"`` (default) raises
            ValueError; ``"null"`` reads them as None, as the ingestion function
            does (files from the plan's original sketch, written with
            ``json.dumps``' defaults, hold such tokens).

    Example::

        loads(b'{"epochs": [0], "loss": {"loss": [NaN]}}', non_finite="null")["loss"]   # {"loss": [None]}
    """
    if non_finite not in ("reject", "null"):
        raise ValueError(f"Invalid value for argument `non_finite`. Received: non_finite={non_finite!r}. Expected 'reject' or 'null'.")

    def _constant(token: str) -> None:
        if non_finite == "reject":
            raise ValueError(f"training_metrics.json contains the non-JSON token {token}")
        # non_finite == "null": the token is read as None.

    def _float(text: str) -> float | None:
        number = float(text)
        if math.isfinite(number):
            return number
        if non_finite == "reject":
            raise ValueError(f"training_metrics.json contains the number {text}, too large for a float")
        return None

    document = json.loads(data, parse_constant=_constant, parse_float=_float)
    if not isinstance(document, dict):
        raise ValueError("training_metrics.json must hold a JSON object")
    return document


def empty_document() -> dict[str, Any]:
    """A version 1 document with no epochs."""
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "available": True,
        "epochs": [],
        "loss": {},
        "metrics": {},
        "gradient": {},
        "timing": {},
        "weight_stats": {},
        "gradient_stats": {},
        "final_metrics": {},
        "params": {},
    }


def normalize(document: Mapping[str, Any]) -> dict[str, Any]:
    """Fill the keys an older file may lack and check what a resumed run relies on.

    Raises:
        ValueError: the epochs are not strictly increasing integers or a series is
            not aligned to them (appending to such a file would corrupt it further).
    """
    version = document.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
        raise NewerSchemaVersion(
            f"the file has schema_version {version!r}, newer than the {SCHEMA_VERSION} this trainer_callbacks writes: "
            "continuing it would rewrite it as an older version and lose what the newer writer stored "
            "(upgrade trainer_callbacks, or write to another folder)"
        )
    result = empty_document()
    for key, value in document.items():
        result[key] = value
    result["schema_version"] = SCHEMA_VERSION
    epochs = result["epochs"]
    if not isinstance(epochs, list) or not all(isinstance(e, int) and not isinstance(e, bool) for e in epochs):
        raise ValueError("'epochs' must be a list of integers")
    if any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ValueError("'epochs' must be strictly increasing")
    n = len(epochs)
    for section in TOP_LEVEL_SERIES:
        for name, series in result[section].items():
            if not isinstance(series, list) or len(series) != n:
                raise ValueError(f"'{section}.{name}' has {len(series)} entries for {n} epochs")
    for section in STATS_SECTIONS:
        for tower, stats in result[section].items():
            for name, series in stats.items():
                rows = series["counts"] if name == "histogram" else series
                if len(rows) != n:
                    raise ValueError(f"'{section}.{tower}.{name}' has {len(rows)} entries for {n} epochs")
    return result
