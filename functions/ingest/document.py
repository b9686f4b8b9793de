"""Decode, parse, validate and normalize one training_metrics.json.

Pure functions, no I/O: the pipeline hands in the downloaded bytes and gets
back the normalized document, or :class:`ingest.errors.Rejected` with a reason
a platform engineer understands.

The format's one machine-readable definition is
``schema/training_metrics.v1.schema.json`` (JSON Schema 2020-12). What JSON
Schema cannot say (series aligned to ``epochs``, ``epochs`` strictly
increasing, histogram rows one shorter than ``bin_edges``) is checked here.

Example::

    doc = load_document(b'{"epochs": [0, 1], "loss": {"loss": [0.5, NaN]}}')
    doc["loss"]["loss"]     # [0.5, None]
    doc["schema_version"]   # 1 (files from the plan's original sketch lack it)
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any

from ingest.errors import Rejected

SCHEMA_RESOURCE = "training_metrics.v1.schema.json"
MAX_DEPTH = 64
_MAX_REASON = 300

# Keys every normalized document has; older files (the plan's sketch) lack some.
_DEFAULTS: tuple[tuple[str, Callable[[], Any]], ...] = (
    ("schema_version", lambda: 1),
    ("status", lambda: "completed"),
    ("available", lambda: True),
    ("loss", dict),
    ("metrics", dict),
    ("gradient", dict),
    ("weight_stats", dict),
    ("gradient_stats", dict),
    ("final_metrics", dict),
    ("params", dict),
)
_SERIES_MAPS = ("loss", "metrics", "gradient")
_STATS_MAPS = ("weight_stats", "gradient_stats")
_STAT_SERIES = ("mean", "std", "min", "max", "norm")

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST_PAIR = re.compile(r"\[\]|\{\}")


def load_document(data: bytes, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """Bytes of a training_metrics.json -> the normalized document.

    Raises:
        Rejected: the bytes are not a valid training_metrics.json (reason says why).
    """
    doc = parse(data, max_depth=max_depth)
    validate(doc)
    return normalize(doc)


def parse(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Strict UTF-8, nesting depth guard, then JSON with NaN/Infinity read as null."""
    if not data.strip():
        raise Rejected("the file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(f"the file is not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    unclosed = check_depth(text, max_depth)
    try:
        # NaN / Infinity tokens come from older writers (json.dumps' default):
        # accepted, stored as null (jsonb cannot hold them anyway).
        return json.loads(text, parse_constant=lambda _token: None)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string") or (
            unclosed and set(unclosed) <= {"[", "{"}
        ):
            raise Rejected(
                f"the JSON ends early at line {exc.lineno} column {exc.colno} (truncated file?): {exc.msg}"
            ) from None
        raise Rejected(f"the file is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer literal of > 4300 digits
        raise Rejected(_clip(f"the file is not usable JSON: {exc}")) from None


def check_depth(text: str, max_depth: int = MAX_DEPTH) -> str:
    """Reject nesting deeper than ``max_depth`` before parsing (bounded time and stack).

    Strings are blanked, leaving only brackets; each pass removes the innermost
    pairs (C speed), so a document of depth d empties in d passes. Brackets left
    after ``max_depth`` passes are either deeper nesting or unbalanced; the
    latter is left to the parser, whose message says where.

    Returns the brackets left unmatched ('' for a balanced document).
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    for _ in range(max_depth):
        if not brackets:
            return ""
        reduced = _INNERMOST_PAIR.sub("", brackets)
        if reduced == brackets:
            return brackets  # unbalanced: json.loads reports it
        brackets = reduced
    if brackets and _INNERMOST_PAIR.search(brackets):
        raise Rejected(f"the JSON is nested more than {max_depth} levels deep")
    return brackets


def validate(doc: Any) -> None:
    """Check ``doc`` against the schema, then the rules the schema cannot state."""
    if not isinstance(doc, dict):
        raise Rejected(f"the top-level value is {_json_type(doc)}, expected a JSON object")
    # The first error is enough to name the problem, and cheap to find.
    error = next(iter(_validator().iter_errors(doc)), None)
    if error is not None:
        raise Rejected(_describe(error))
    _check_alignment(doc)


def normalize(doc: dict[str, Any]) -> dict[str, Any]:
    """Fill keys older files lack; non-finite numbers (1e999) become null."""
    out = {key: doc[key] if key in doc else make() for key, make in _DEFAULTS}
    for key, value in doc.items():
        out.setdefault(key, value)
    for key in _SERIES_MAPS:
        out[key] = {name: _finite_list(series) for name, series in out[key].items()}
    for key in _STATS_MAPS:
        for stats in out[key].values():
            for stat in _STAT_SERIES:
                if stat in stats:
                    stats[stat] = _finite_list(stats[stat])
            histogram = stats.get("histogram")
            if histogram is not None:
                histogram["bin_edges"] = _finite_list(histogram["bin_edges"])
    out["final_metrics"] = {k: _finite(v) for k, v in out["final_metrics"].items()}
    out["params"] = {k: _finite(v) for k, v in out["params"].items()}
    return out


@functools.cache
def schema() -> dict[str, Any]:
    """The format definition, read once from the package."""
    return json.loads(resources.files("ingest").joinpath("schema", SCHEMA_RESOURCE).read_text("utf-8"))


@functools.cache
def _validator() -> Any:
    """One validator, built on first use (jsonschema costs ~100 ms to import)."""
    from jsonschema import Draft202012Validator, validators

    base_items = Draft202012Validator.VALIDATORS["items"]
    definitions = schema().get("$defs", {})
    checks: dict[int, Callable[[list], bool] | None] = {}

    # Per-epoch series are long arrays of numbers: checking each element
    # through the generic machinery costs ~20x a plain loop. When an array's
    # item schema is a bare type (+ minimum) and every element passes the
    # loop, the generic check is skipped; otherwise it runs, so the outcome
    # and the error message are exactly jsonschema's.
    def items(validator: Any, item_schema: Any, instance: Any, where: Any) -> Iterable[Any]:
        if isinstance(instance, list) and isinstance(item_schema, dict):
            key = id(item_schema)  # the schema's dicts live as long as the validator
            if key not in checks:
                checks[key] = _fast_check(definitions, item_schema)
            check = checks[key]
            if check is not None and check(instance):
                return
        yield from base_items(validator, item_schema, instance, where)

    Draft202012Validator.check_schema(schema())
    cls = validators.extend(Draft202012Validator, {"items": items})
    return cls(schema())


def _fast_check(definitions: Mapping[str, Any], item_schema: Mapping[str, Any]) -> Callable[[list], bool] | None:
    """A plain-loop predicate equivalent to ``item_schema`` when it is a bare type, else None."""
    ref = item_schema.get("$ref")
    if ref is not None:
        if len(item_schema) != 1 or not isinstance(ref, str) or not ref.startswith("#/$defs/"):
            return None
        resolved = definitions.get(ref[len("#/$defs/") :])
        if not isinstance(resolved, Mapping):
            return None
        item_schema = resolved
    if not set(item_schema) <= {"type", "minimum"}:
        return None
    types = item_schema.get("type")
    types = {types} if isinstance(types, str) else set(types or ())
    minimum = item_schema.get("minimum")
    # type(x) is int excludes bool, as JSON Schema does.
    if types == {"number", "null"} and minimum is None:
        return lambda xs: all(x is None or type(x) is float or type(x) is int for x in xs)
    if types == {"number"} and minimum is None:
        return lambda xs: all(type(x) is float or type(x) is int for x in xs)
    if types == {"integer"}:
        low = -math.inf if minimum is None else minimum
        return lambda xs: all(type(x) is int and x >= low for x in xs)
    return None


def _check_alignment(doc: dict[str, Any]) -> None:
    epochs = doc["epochs"]
    n = len(epochs)
    for i in range(1, n):
        if epochs[i] <= epochs[i - 1]:
            raise Rejected(f"epochs must strictly increase: epochs[{i}] = {epochs[i]} follows {epochs[i - 1]}")
    for key in _SERIES_MAPS:
        for name, series in doc.get(key, {}).items():
            _check_length(f"{key}.{name}", series, n)
    for key in _STATS_MAPS:
        for tower, stats in doc.get(key, {}).items():
            for stat in _STAT_SERIES:
                if stat in stats:
                    _check_length(f"{key}.{tower}.{stat}", stats[stat], n)
            histogram = stats.get("histogram")
            if histogram is None:
                continue
            where = f"{key}.{tower}.histogram"
            edges = histogram["bin_edges"]
            for i in range(1, len(edges)):
                if not edges[i] > edges[i - 1]:
                    raise Rejected(f"{where}.bin_edges must strictly increase: [{i}] = {edges[i]} follows {edges[i - 1]}")
            _check_length(f"{where}.counts", histogram["counts"], n)
            bins = len(edges) - 1
            for i, row in enumerate(histogram["counts"]):
                if row is not None and len(row) != bins:
                    raise Rejected(
                        f"{where}.counts[{i}] has {len(row)} bins but bin_edges defines {bins}"
                    )


def _check_length(where: str, series: list[Any], n: int) -> None:
    if len(series) != n:
        raise Rejected(
            f"{where} has {len(series)} values for {n} epochs (every series must have one value per epoch, "
            "null where none was logged)"
        )


def _describe(error: Any) -> str:
    """A jsonschema error -> 'at $.loss.val_loss[3]: expected number or null, got string'."""
    where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return _clip(f"at {where}: expected {expected}, got {_json_type(error.instance)}")
    if error.validator == "required":
        return _clip(f"at {where}: {error.message}")
    message = error.message
    if len(message) > 200:
        message = f"{error.validator} {json.dumps(error.validator_value)[:100]} not satisfied"
    return _clip(f"at {where}: {message}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _finite(value: Any) -> Any:
    if type(value) is float and not math.isfinite(value):
        return None
    return value


def _finite_list(values: list[Any]) -> list[Any]:
    isfinite = math.isfinite
    return [None if type(v) is float and not isfinite(v) else v for v in values]


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"
