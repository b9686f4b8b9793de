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

import dataclasses
import functools
import itertools
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

# A string, or an unterminated one running to the end of the text: every
# match succeeds, so the scan is linear whatever the input (a pattern that can
# fail would be retried from each later quote: quadratic on '"\\"\\"...').
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
# Outside strings, valid JSON is brackets plus these (numbers, separators,
# whitespace, true/false/null and the NaN/Infinity extension): deleted, they
# leave the brackets. Anything else is invalid JSON, counted as no bracket and
# left for the parser to name.
_NOT_BRACKET = str.maketrans("", "", "0123456789+-.eE,: \t\r\n" + "truefalsnNIiy")
_DEPTH_CHUNK = 1 << 20
_DEPTH_STEP = tuple(1 if c in b"[{" else -1 if c in b"]}" else 0 for c in range(256))


def load_document(data: bytes, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """Bytes of a training_metrics.json -> the normalized document.

    Raises:
        Rejected: the bytes are not a valid training_metrics.json (reason says why).
    """
    return prepare(data, max_depth=max_depth).document


def parse(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Strict UTF-8, nesting depth guard, then JSON with NaN/Infinity read as null."""
    return _parse(data, max_depth)[1]


def _parse(data: bytes, max_depth: int) -> tuple[str, Any, bool]:
    """(text, value, whether NaN/Infinity tokens were read as null)."""
    if not data or data.isspace():  # not strip(): that copies a large file
        raise Rejected("the file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(f"the file is not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    unclosed = check_depth(text, max_depth)
    constants: list[str] = []

    def constant(token: str) -> None:
        # NaN / Infinity tokens come from older writers (json.dumps' default):
        # accepted, stored as null (jsonb cannot hold them anyway).
        constants.append(token)
        return None

    try:
        return text, json.loads(text, parse_constant=constant), bool(constants)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string") or unclosed > 0:
            raise Rejected(
                f"the JSON ends early at line {exc.lineno} column {exc.colno} (truncated file?): {exc.msg}"
            ) from None
        raise Rejected(f"the file is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer literal of > 4300 digits
        raise Rejected(_clip(f"the file is not usable JSON: {exc}")) from None


def check_depth(text: str, max_depth: int = MAX_DEPTH) -> int:
    """Reject nesting deeper than ``max_depth`` before parsing, in linear time.

    Strings are blanked (an unterminated one runs to the end of the text, so
    no input makes the scan go back over it), everything but brackets is
    deleted, and the running depth is summed by C iterators: about 40 ns per
    bracket, seconds at worst for a MAX_METRICS_BYTES file of brackets alone.

    Returns the depth left open at the end (> 0: the text stops inside a
    structure, e.g. truncated); mismatched bracket kinds are the parser's to report.
    """
    steps = _STRING.sub("", text).translate(_NOT_BRACKET).encode("ascii", "replace")
    depth = 0
    for start in range(0, len(steps), _DEPTH_CHUNK):  # chunked: a deep start stops early
        chunk = steps[start : start + _DEPTH_CHUNK]
        running = list(itertools.accumulate(map(_DEPTH_STEP.__getitem__, chunk), initial=depth))
        if max(running) > max_depth:
            raise Rejected(f"the JSON is nested more than {max_depth} levels deep")
        depth = running[-1]
    return depth


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
    return _normalize(doc)[0]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A valid file, ready to store.

    ``document`` is the normalized document. When normalization only adds
    top-level keys, ``text`` is the file's own JSON text and ``added`` the keys
    it lacks: the database can store ``text::jsonb || added`` without this
    process serializing the document again (the same value, for less work).
    """

    document: dict[str, Any]
    text: str | None
    added: dict[str, Any]


def prepare(data: bytes, *, max_depth: int = MAX_DEPTH) -> Prepared:
    """Bytes -> :class:`Prepared` (see :func:`load_document`)."""
    text, doc, constants = _parse(data, max_depth)
    validate(doc)
    out, changed = _normalize(doc)
    if changed or constants:
        return Prepared(out, None, {})
    return Prepared(out, text, {key: out[key] for key in out if key not in doc})


def _normalize(doc: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The normalized document, and whether anything below the top level changed."""
    out = {key: doc[key] if key in doc else make() for key, make in _DEFAULTS}
    for key, value in doc.items():
        out.setdefault(key, value)
    changed = False

    def finite(values: list[Any]) -> list[Any]:
        nonlocal changed
        if any(type(v) is float and not math.isfinite(v) for v in values):
            changed = True
            return [None if type(v) is float and not math.isfinite(v) else v for v in values]
        return values

    for key in _SERIES_MAPS:
        series_map = out[key]
        for name in series_map:
            series_map[name] = finite(series_map[name])
    for key in _STATS_MAPS:
        for stats in out[key].values():
            for stat in _STAT_SERIES:
                if stat in stats:
                    stats[stat] = finite(stats[stat])
    for key in ("final_metrics", "params"):
        values = out[key]
        for name, value in values.items():
            if type(value) is float and not math.isfinite(value):
                values[name] = None
                changed = True
    return out, changed


@functools.cache
def schema() -> dict[str, Any]:
    """The format definition, read once from the package."""
    return json.loads(resources.files("ingest").joinpath("schema", SCHEMA_RESOURCE).read_text("utf-8"))


@functools.cache
def _validator() -> Any:
    """One validator, built on first use (jsonschema costs ~100 ms to import)."""
    from jsonschema import Draft202012Validator, validators

    base = Draft202012Validator.VALIDATORS
    shortcuts: dict[int, Callable[[list[Any]], bool] | None] = {}

    def shortcut(subschema: Any) -> Callable[[list[Any]], bool] | None:
        key = id(subschema)  # the schema's dicts live as long as the validator
        if key not in shortcuts:
            shortcuts[key] = _all_satisfy(subschema) if isinstance(subschema, dict) else None
        return shortcuts[key]

    # A file is thousands of numbers in a few hundred arrays and maps: sent
    # one by one through the generic machinery they cost ~20x a C-speed check.
    # Where a keyword applies a simple subschema to every element (items),
    # value (additionalProperties) or key (propertyNames) and all of them pass
    # the shortcut, the generic check is skipped; otherwise it runs, so the
    # outcome and the error message are exactly jsonschema's.
    def items(validator: Any, sub: Any, instance: Any, where: Any) -> Iterable[Any]:
        check = shortcut(sub) if isinstance(instance, list) else None
        if check is None or not check(instance):
            yield from base["items"](validator, sub, instance, where)

    def additional_properties(validator: Any, sub: Any, instance: Any, where: Any) -> Iterable[Any]:
        simple = isinstance(instance, dict) and "properties" not in where and "patternProperties" not in where
        check = shortcut(sub) if simple else None
        if check is None or not check(list(instance.values())):
            yield from base["additionalProperties"](validator, sub, instance, where)

    def property_names(validator: Any, sub: Any, instance: Any, where: Any) -> Iterable[Any]:
        check = shortcut(sub) if isinstance(instance, dict) else None
        if check is None or not check(list(instance)):
            yield from base["propertyNames"](validator, sub, instance, where)

    # jsonschema's own ``properties`` (descend into each declared property
    # present), minus the descent for a value that passes its shortcut: a
    # tower's mean/std/min/max/norm series, ``epochs``, ``saved_at``...
    def properties(validator: Any, declared: Any, instance: Any, where: Any) -> Iterable[Any]:
        if not validator.is_type(instance, "object"):
            return
        for name, sub in declared.items():
            if name in instance:
                check = shortcut(sub)
                if check is not None and check([instance[name]]):
                    continue
                yield from validator.descend(instance[name], sub, path=name, schema_path=name)

    Draft202012Validator.check_schema(schema())
    cls = validators.extend(
        Draft202012Validator,
        {
            "items": items,
            "additionalProperties": additional_properties,
            "propertyNames": property_names,
            "properties": properties,
        },
    )
    # The format has no recursive references: inlining them once spares the
    # validator a reference lookup per series.
    return cls(_inline_refs(schema(), schema().get("$defs", {})))


def _inline_refs(node: Any, definitions: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
            return _inline_refs(definitions[ref[len("#/$defs/") :]], definitions)
        return {key: _inline_refs(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline_refs(item, definitions) for item in node]
    return node


_NUMBER_OR_NULL = frozenset({float, int, type(None)})
_NUMBER = frozenset({float, int})
_INT = frozenset({int})
_STR = frozenset({str})
_BOOL = frozenset({bool})
_LIST = frozenset({list})
_LIST_OR_NULL = frozenset({list, type(None)})
# Exact Python types per JSON type; "integer" leaves out 3.0, which then takes the generic check.
_PY_TYPES: dict[str, frozenset[type]] = {
    "string": _STR,
    "number": _NUMBER,
    "integer": _INT,
    "boolean": _BOOL,
    "null": frozenset({type(None)}),
    "array": _LIST,
    "object": frozenset({dict}),
}


def _all_satisfy(sub: Mapping[str, Any]) -> Callable[[list[Any]], bool] | None:
    """A C-speed test that every item of a list satisfies ``sub``, for the simple
    subschemas the format uses (a type, minimum, string lengths, arrays (or
    null) of those, minItems);
    None for anything else. Exact type sets: bool is not a number, as in JSON Schema."""
    keys = set(sub)
    types = sub.get("type")
    types = {types} if isinstance(types, str) else set(types or ())

    def typed(allowed: frozenset[type]) -> Callable[[list[Any]], bool]:
        return lambda xs: all(map(allowed.__contains__, map(type, xs)))

    if keys <= {"type", "minimum"}:
        minimum = sub.get("minimum")
        if types == {"number", "null"} and minimum is None:
            return typed(_NUMBER_OR_NULL)
        if types == {"number"} and minimum is None:
            return typed(_NUMBER)
        if types == {"integer"}:
            low = -math.inf if minimum is None else minimum
            return lambda xs: typed(_INT)(xs) and (not xs or min(xs) >= low)
        if minimum is None and types and types <= _PY_TYPES.keys():  # e.g. params: string/number/boolean/null
            return typed(frozenset().union(*(_PY_TYPES[t] for t in types)))
        return None
    if types == {"string"} and keys <= {"type", "minLength", "maxLength"}:
        low, high = sub.get("minLength", 0), sub.get("maxLength", math.inf)

        def strings(xs: list[Any]) -> bool:
            if not typed(_STR)(xs):
                return False
            lengths = list(map(len, xs))
            return not lengths or (min(lengths) >= low and max(lengths) <= high)

        return strings
    if types == {"array"} and keys in ({"type", "items"}, {"type", "items", "minItems"}) and isinstance(sub["items"], dict):
        inner = _all_satisfy(sub["items"])
        if inner is None:
            return None
        shortest = sub.get("minItems", 0)
        return lambda xs: typed(_LIST)(xs) and all(map(inner, xs)) and (not xs or min(map(len, xs)) >= shortest)
    if types == {"array", "null"} and keys == {"type", "items"} and isinstance(sub["items"], dict):
        inner = _all_satisfy(sub["items"])
        if inner is None:
            return None
        return lambda xs: typed(_LIST_OR_NULL)(xs) and all(inner(x) for x in xs if x is not None)
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
            try:
                finite = all(math.isfinite(e) for e in edges)
            except OverflowError:  # an integer beyond any float (10**400): no bin edge either
                finite = False
            if not finite:
                raise Rejected(f"{where}.bin_edges must be finite numbers")
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


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"
