"""Decode, parse, validate and normalize one training_metrics.json.

Pure functions, no I/O: the pipeline hands in the downloaded bytes and gets
back the normalized document, or :class:`ingest.errors.Rejected` with a reason
a platform engineer understands.

The format's one machine-readable definition is
``schema/training_metrics.v1.schema.json`` (JSON Schema 2020-12), checked by
``jsonschema-rs`` (a compiled validator: no per-keyword code of ours). What
JSON Schema cannot say is checked here, each bound read from the schema file:
series aligned to ``epochs``, ``epochs`` strictly increasing and spelled as
integers, histogram rows one shorter than ``bin_edges``, an unknown top-level
value's size (``x-maxJsonBytes``), and what PostgreSQL's jsonb cannot store
(a NUL or a lone surrogate in a string, more than ``x-maxValues`` values),
so such a file is rejected with its JSON path before the database is asked.

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
import sys
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

from ingest.errors import Rejected, printable

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
# Per-epoch series maps a file may leave out (older writers have none).
_OPTIONAL_SERIES_MAPS = ("timing",)
_STATS_MAPS = ("weight_stats", "gradient_stats")
_STAT_SERIES = ("mean", "std", "min", "max", "norm")

# A string, or an unterminated one running to the end of the text: every
# match succeeds, so the scan is linear whatever the input (a pattern that can
# fail would be retried from each later quote: quadratic on '"\\"\\"...').
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
# Outside strings, valid JSON is brackets plus numbers, separators, whitespace,
# true/false/null and the NaN/Infinity extension. Deleting every byte but the
# four brackets leaves the brackets; anything invalid counts as no bracket and
# is left for the parser to name.
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_DEPTH_CHUNK = 1 << 20
_DEPTH_STEP = tuple(1 if c in b"[{" else -1 if c in b"]}" else 0 for c in range(256))
# Escapes that make a string PostgreSQL cannot store: \u0000 (jsonb refuses
# it) and a UTF-16 surrogate (paired ones decode to one character; a lone
# one is not Unicode text). Only a file containing one is walked to name the place.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
# Digits as '0' and 'E' as 'e': a long digit run or a long negative exponent
# is then one literal search each (see _scan).
_ZEROED = bytes.maketrans(b"123456789E", b"000000000e")
_LONG_DIGITS = b"0" * 1000
_LOW_EXPONENT = re.compile(rb"e-0000")  # sre's literal search: "in" crawls on a needle ending in '0'
# Piecewise (not one-shot) encoding, to measure a value's JSON size with an early stop.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=True)


def load_document(data: bytes, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """Bytes of a training_metrics.json -> the normalized document.

    Raises:
        Rejected: the bytes are not a valid training_metrics.json (reason says why).
    """
    return prepare(data, max_depth=max_depth).document


def parse(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Strict UTF-8, nesting depth and value-count guards, then JSON with NaN/Infinity read as null."""
    return _parse(data, max_depth)[1]


def _parse(data: bytes, max_depth: int) -> tuple[str, Any, bool]:
    """(text, value, whether the text cannot be stored as written: NaN/Infinity
    tokens read as null, or a number literal PostgreSQL's numeric refuses)."""
    if not data or data.isspace():  # not strip(): that copies a large file
        raise Rejected("the file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(f"the file is not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    limit = max_values()
    # The count is at most one per character: a text no longer than the limit
    # cannot exceed it, and is not counted.
    unclosed, values, exotic = _scan(text, max_depth, count_values=len(text) > limit)
    if values > limit:
        # Before parsing (the parse would cost ~100 bytes per value) and before
        # PostgreSQL, which fails on such a document with "total size of jsonb
        # object elements exceeds the maximum" or "invalid memory alloc request
        # size", the same way on every retry.
        raise Rejected(
            f"the file holds about {values:,} values (numbers, strings, names); at most {limit:,} are accepted"
            " (x-maxValues in the schema: PostgreSQL's jsonb cannot store much more in one document)"
        )
    constants: list[str] = []

    def constant(token: str) -> None:
        # NaN / Infinity tokens come from older writers (json.dumps' default):
        # accepted, stored as null (jsonb cannot hold them anyway).
        constants.append(token)
        return None

    try:
        return text, json.loads(text, parse_constant=constant), bool(constants) or exotic
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string") or unclosed > 0:
            raise Rejected(
                f"the JSON ends early at line {exc.lineno} column {exc.colno} (truncated file?): {exc.msg}"
            ) from None
        raise Rejected(f"the file is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError:  # an integer literal longer than Python converts (4300 digits by default)
        raise Rejected(_huge_integer(text)) from None
    except RecursionError:  # not expected below MAX_DEPTH; named rather than retried
        raise Rejected(f"the JSON is nested too deeply to parse (limit {max_depth} levels)") from None


class _HugeInt:
    """Stands in for an integer literal too long to convert, to find its JSON path."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _huge_integer(text: str) -> str:
    """The reason for an integer literal too long to convert, naming where it is."""
    limit = sys.get_int_max_str_digits() or 4300
    try:
        doc = json.loads(text, parse_int=lambda s: _HugeInt(len(s)) if len(s) > limit else int(s),
                         parse_constant=lambda _: None)  # fmt: skip
    except ValueError:  # the text is bad further on too: no path to name
        return f"the file holds an integer of more than {limit} digits"
    for where, value in _walk(doc):
        if isinstance(value, _HugeInt):
            return f"at {where}: an integer of {value.digits} digits (at most {limit})"
    return f"the file holds an integer of more than {limit} digits"


def _walk(value: Any, where: str = "$") -> Iterator[tuple[str, Any]]:
    """(JSON path, value) for ``value`` and everything inside it, depth first."""
    yield where, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{where}[{i}]")


def check_depth(text: str, max_depth: int = MAX_DEPTH) -> int:
    """Reject nesting deeper than ``max_depth`` before parsing, in linear time.

    Returns the depth left open at the end (> 0: the text stops inside a
    structure, e.g. truncated); mismatched bracket kinds are the parser's to report.
    """
    return _scan(text, max_depth)[0]


def _scan(text: str, max_depth: int, count_values: bool = True) -> tuple[int, int, bool]:
    """(depth left open at the end, about how many values the text holds,
    whether a number literal may be one PostgreSQL cannot store), in linear time.

    Strings are blanked (an unterminated one runs to the end of the text, so
    no input makes the scan go back over it), everything but brackets is
    deleted, and the running depth is summed by C iterators: about 40 ns per
    bracket, seconds at worst for a MAX_METRICS_BYTES file of brackets alone.
    The value count is what separates them (commas outside strings) plus one
    per array or object: exact for a file without empty containers, an upper
    bound otherwise (never more than the text's length). Without
    ``count_values``, only the brackets are counted.

    PostgreSQL's numeric takes at most 16,383 digits after the point:
    ``1e-20000`` or a 20,000-digit fraction fails there, though Python reads
    it (as 0.0 or a nearby float). A run of 1,000 digits or an exponent of
    -1000 or below (either is rare enough to over-match) marks the text as
    not storable verbatim: the parsed values are stored instead.
    """
    # Outside strings the text is ASCII (anything else is invalid JSON, read
    # as '?'): as bytes, the passes below are C table lookups and literal
    # searches, fewer than over the str (one regex for both exponent cases).
    zeroed = _STRING.sub("", text).encode("ascii", "replace").translate(_ZEROED)
    exotic = _LONG_DIGITS in zeroed or _LOW_EXPONENT.search(zeroed) is not None
    commas = zeroed.count(b",") if count_values else 0
    steps = zeroed.translate(None, _NOT_BRACKET)
    del zeroed
    depth = 0
    for start in range(0, len(steps), _DEPTH_CHUNK):  # chunked: a deep start stops early
        chunk = steps[start : start + _DEPTH_CHUNK]
        running = list(itertools.accumulate(map(_DEPTH_STEP.__getitem__, chunk), initial=depth))
        if max(running) > max_depth:
            raise Rejected(f"the JSON is nested more than {max_depth} levels deep")
        depth = running[-1]
    return depth, commas + steps.count(b"[") + steps.count(b"{"), exotic


def validate(doc: Any, text: str | None = None) -> None:
    """Check ``doc`` against the schema, then the rules the schema cannot state.

    ``text``, the JSON ``doc`` was parsed from, lets a file without suspect
    escapes skip the walk for strings PostgreSQL cannot store.
    """
    if not isinstance(doc, dict):
        raise Rejected(f"the top-level value is {_json_type(doc)}, expected a JSON object")
    # A one-character search runs at memory speed ('\\u' would cost ~100x more).
    if text is None or ("\\" in text and _SUSPECT_ESCAPE.search(text)):
        _check_strings(doc)  # also before the validator, which cannot take a lone surrogate
    # Cheap structural checks first: an unknown top-level value's size, read
    # without serializing it whole (the validator's own error would copy it).
    _check_unknown_values(doc)
    if not _validator().is_valid(doc):
        # Located without asking the validator to describe a large value (its
        # errors carry a full copy of the failing one). A number too large for a
        # float (1e999) was parsed as infinity, which the validator sees as
        # null; judged as the number it is written as, it may pass after all.
        reason = _locator().locate(doc)
        if reason is not None:
            raise Rejected(_clip(reason))
        if not _has_non_finite(doc):
            raise Rejected("the file does not match the schema")  # not expected: a keyword the locator lacks
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
    text, doc, rewrite = _parse(data, max_depth)
    validate(doc, text)
    out, changed = _normalize(doc, parsed=True)
    if changed or rewrite:
        return Prepared(out, None, {})
    return Prepared(out, text, {key: out[key] for key in out if key not in doc})


def _normalize(doc: dict[str, Any], parsed: bool = False) -> tuple[dict[str, Any], bool]:
    """The normalized document, and whether anything below the top level changed.

    ``parsed``: ``doc`` comes from :func:`_parse`, where NaN tokens became
    None, so the only non-finite floats are overflowing literals (infinities),
    found by C-speed membership tests instead of a check per value.
    """
    out = {key: doc[key] if key in doc else make() for key, make in _DEFAULTS}
    for key, value in doc.items():
        out.setdefault(key, value)
    changed = False

    def finite(values: list[Any]) -> list[Any]:
        nonlocal changed
        if (
            (math.inf in values or -math.inf in values)
            if parsed
            else any(type(v) is float and not math.isfinite(v) for v in values)
        ):
            changed = True
            return [None if type(v) is float and not math.isfinite(v) else v for v in values]
        return values

    for key in _SERIES_MAPS + _OPTIONAL_SERIES_MAPS:
        series_map = out.get(key) or {}
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


def max_values() -> int:
    """The most values one file may hold (the schema's ``x-maxValues``)."""
    return int(schema()["x-maxValues"])


@functools.cache
def _validator() -> Any:
    """The compiled validator, built on first use (the function's cold start does not pay for it)."""
    import jsonschema_rs

    return jsonschema_rs.validator_for(schema())


@functools.cache
def _locator() -> Any:
    from ingest._schema_errors import Locator

    import jsonschema_rs

    return Locator(schema(), jsonschema_rs.validator_for, _describe, _json_type)


def _check_strings(doc: dict[str, Any]) -> None:
    """Reject a name or string holding a NUL or a lone surrogate, naming where it is."""
    for where, value in _walk(doc):
        names = value.keys() if isinstance(value, dict) else ()
        for text, what in itertools.chain(((k, "the name") for k in names), [(value, "the string")]):
            if not isinstance(text, str):
                continue
            if "\x00" in text:
                problem = "a NUL character (\\u0000)"
            elif _encodable(text):
                continue
            else:
                problem = "a lone UTF-16 surrogate (half of a pair, not a character)"
            shown = printable(repr(text), 80)
            raise Rejected(f"at {where}: {what} {shown} holds {problem}, which PostgreSQL cannot store")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _has_non_finite(value: Any) -> bool:
    return any(type(v) is float and not math.isfinite(v) for _, v in _walk(value))


def _check_unknown_values(doc: dict[str, Any]) -> None:
    """A top-level value the schema does not define is kept, up to its ``x-maxJsonBytes``.

    Measured by encoding it piece by piece and stopping at the limit: a huge
    value is never serialized whole.
    """
    known = schema()["properties"]
    unknown = schema()["$defs"]["unknownValue"]
    limit = int(unknown["x-maxJsonBytes"])
    for key, value in doc.items():
        if key in known or isinstance(value, (bool, int, float)) or value is None:
            continue
        # The schema's own bounds on the value, in its words (as the validator would say).
        for kind, keyword, words in ((str, "maxLength", "characters"), (list, "maxItems", "items"),
                                     (dict, "maxProperties", "keys")):  # fmt: skip
            if isinstance(value, kind) and keyword in unknown and len(value) > unknown[keyword]:
                more = "longer than" if kind is str else "more than"
                raise Rejected(f"at $.{printable(key, 60)}: {more} {unknown[keyword]} {words}")
        size = 0
        for chunk in _ENCODER.iterencode(value):
            size += len(chunk.encode("utf-8", "surrogatepass"))
            if size > limit:
                raise Rejected(
                    f"at $.{printable(key, 60)}: an unknown top-level value of more than {limit:,} bytes as JSON;"
                    f" at most {limit:,} are kept (x-maxJsonBytes in the schema)"
                )


def _check_alignment(doc: dict[str, Any]) -> None:
    epochs = doc["epochs"]
    n = len(epochs)
    for i, epoch in enumerate(epochs):
        if type(epoch) is not int:  # 3.0: an integer to JSON Schema, but not how an epoch is written
            raise Rejected(f"at $.epochs[{i}]: expected an integer written without a fraction, got {epoch!r}")
        if i and epoch <= epochs[i - 1]:
            raise Rejected(f"epochs must strictly increase: epochs[{i}] = {epoch} follows {epochs[i - 1]}")
    for key in _SERIES_MAPS + _OPTIONAL_SERIES_MAPS:
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


def _path(parts: Any) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _describe(error: Any, prefix: list[Any] | None = None, base: Any = None) -> str:
    """A jsonschema-rs error -> 'at $.loss.val_loss[3]: expected number or null, got a string'.

    Built from the error's location and keyword, never from a quoted
    instance alone: a value can be megabytes long.
    """
    where = _path([*(prefix or []), *error.instance_path])
    kind = error.kind
    name = kind.name
    if name == "type":
        return _clip(f"at {where}: expected {' or '.join(_types(error, base))}, got {_json_type(error.instance)}")
    if name == "required":
        return _clip(f"at {where}: '{kind.property}' is a required property")
    if name == "propertyNames":
        inner = kind.error
        shown = printable(repr(inner.instance), 60)
        return _clip(f"at {where}: the name {shown} breaks the schema's {inner.kind.name} {_limit(inner.kind)}")
    limits = {
        "maxLength": "longer than {} characters",
        "minLength": "shorter than {} characters",
        "maxItems": "more than {} items",
        "minItems": "fewer than {} items",
        "maxProperties": "more than {} keys",
    }
    if name in limits:
        return _clip(f"at {where}: {limits[name].format(_limit(kind))}")
    message = error.message
    if len(message) > 200:
        message = f"the schema's {name} {_limit(kind)} is not satisfied"
    return _clip(f"at {where}: {message}")


def _types(error: Any, base: Any = None) -> list[str]:
    """The ``type`` keyword's list in the schema's own order (the error's is sorted);
    ``base``: the part of the schema the error's path starts from (default: the root)."""
    node: Any = schema() if base is None else base
    try:
        for part in error.schema_path:
            node = node[part]
    except (KeyError, IndexError, TypeError):
        return list(error.kind.types)
    return [node] if isinstance(node, str) else list(node)


def _limit(kind: Any) -> str:
    value = getattr(kind, "limit", None)
    if value is None:
        value = getattr(kind, "value", "")
    return printable(json.dumps(value) if not isinstance(value, str) else value, 100)


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
