"""The format's limits, read from the schema this package ships, and the checks that apply them.

The one definition of training_metrics.json is the JSON Schema
``functions/ingest/schema/training_metrics.v1.schema.json``. The trainer package
must not import the function's code, so its package data holds that very file
(``trainer_callbacks/schema/`` holds a copy, which a test keeps byte-identical to the
canonical file, so the folder builds a complete wheel on its own) and reads its limits from it here: name lengths (and a ``pattern``, should the
schema gain one), the epoch range, the histogram's shape, the statistics a tower
may have, the longest ``error``. Nothing here repeats a number the schema holds.

Two rules come from what carries the file rather than from the schema: every
string must be encodable as UTF-8 (a lone surrogate is not) and free of NUL
(PostgreSQL's jsonb, where the ingestion function stores the document, cannot
hold it); and an integer must fit a JSON number as every reader takes it, an
IEEE 754 double (RFC 8259, section 6): ``10**400`` would be read as infinity,
and ``10**5000`` cannot even be written by Python's ``json``.

Example::

    from trainer_callbacks import limits

    limits.check_name("val_loss", argument="name", section="loss")   # 'val_loss'
    limits.check_name("", argument="name", section="loss")           # ValueError naming `name`
    limits.MAX_NAME_LENGTH                                             # 256, from the schema
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from importlib import resources
from typing import Any

SCHEMA_FILE = "training_metrics.v1.schema.json"
# Keywords the checks below understand; the tests fail if the schema uses others
# where names, epochs or counts are defined, so a tightened schema is never
# silently half-applied.
STRING_KEYWORDS = frozenset({"type", "minLength", "maxLength", "pattern", "title", "description", "$comment"})
INTEGER_KEYWORDS = frozenset({"type", "minimum", "maximum", "title", "description", "$comment"})
_REPR_CHARS = 80


@functools.cache
def schema() -> dict[str, Any]:
    """The schema shipped with the package (a copy of the function's, checked identical by a test)."""
    text = resources.files("trainer_callbacks").joinpath("schema", SCHEMA_FILE).read_text("utf-8")
    return json.loads(text)


def resolve(node: Any) -> dict[str, Any]:
    """``node`` with a local ``$ref`` (``#/$defs/NAME``) followed; sibling keywords are kept."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/$defs/") or seen > 16:
            raise ValueError(f"the schema's reference {ref!r} is not a local $defs reference")
        target = schema()["$defs"][ref[len("#/$defs/") :]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        seen += 1
    return node if isinstance(node, dict) else {}


def section_schema(section: str) -> dict[str, Any]:
    """The resolved schema of a top-level key (``loss``, ``params``, ``weight_stats``...)."""
    return resolve(schema()["properties"][section])


def name_schema(section: str) -> dict[str, Any]:
    """The schema that names in ``section`` (its object keys) must satisfy."""
    return resolve(section_schema(section).get("propertyNames", {}))


def epoch_schema() -> dict[str, Any]:
    """The schema of one entry of ``epochs``."""
    return resolve(section_schema("epochs").get("items", {}))


def tower_schema() -> dict[str, Any]:
    """The schema of one tower's statistics (``weight_stats.TOWER``)."""
    return resolve(section_schema("weight_stats").get("additionalProperties", {}))


def histogram_schema() -> dict[str, Any]:
    return resolve(tower_schema()["properties"]["histogram"])


def count_schema() -> dict[str, Any]:
    """The schema of one histogram count."""
    counts = resolve(histogram_schema()["properties"]["counts"])
    return resolve(resolve(counts.get("items", {})).get("items", {}))


# -- the limits, as the schema states them ----------------------------------
MIN_NAME_LENGTH: int = name_schema("loss").get("minLength", 0)
MAX_NAME_LENGTH: int | None = name_schema("loss").get("maxLength")
MIN_EPOCH: int = epoch_schema().get("minimum", 0)
MAX_EPOCH: int | None = epoch_schema().get("maximum")
MIN_COUNT: int | None = count_schema().get("minimum")
MIN_BIN_EDGES: int = resolve(histogram_schema()["properties"]["bin_edges"]).get("minItems", 2)
STAT_NAMES: tuple[str, ...] = tuple(name for name in tower_schema()["properties"] if name != "histogram")
MAX_ERROR_LENGTH: int | None = section_schema("error").get("maxLength")
MAX_PARAM_LENGTH: int | None = resolve(section_schema("params").get("additionalProperties", {})).get("maxLength")
# The most values (numbers, strings, names...) the ingestion function takes in one file.
MAX_VALUES: int | None = schema().get("x-maxValues")
# The ingestion function's default byte cap (MAX_METRICS_BYTES in functions/ingest/config.py).
# A deployment setting rather than part of the format, so not in the schema: this constant
# mirrors the function's default, and a test fails if the two ever differ.
FUNCTION_DEFAULT_MAX_BYTES = 16 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class _NameRule:
    min_length: int
    max_length: int | None
    pattern: re.Pattern[str] | None

    @classmethod
    def of(cls, section: str) -> _NameRule:
        sub = name_schema(section)
        pattern = sub.get("pattern")
        return cls(sub.get("minLength", 0), sub.get("maxLength"), re.compile(pattern) if pattern else None)

    def expected(self) -> str:
        length = f"at most {self.max_length} characters" if self.max_length is not None else "any length"
        low = "a non-empty string" if self.min_length <= 1 else f"a string of at least {self.min_length} characters"
        pattern = f", matching {self.pattern.pattern!r}" if self.pattern else ""
        return f"{low} of {length}{pattern}, encodable as UTF-8 and without NUL"


@functools.cache
def _name_rule(section: str) -> _NameRule:
    return _NameRule.of(section)


def clipped_repr(value: Any) -> str:
    """``repr(value)``, cut to a readable length (a refused name may be megabytes long)."""
    try:
        text = repr(value)
    except ValueError:  # an integer over sys.get_int_max_str_digits() digits has no repr
        return f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else f"<a {type(value).__name__}>"
    return text if len(text) <= _REPR_CHARS else f"{text[:_REPR_CHARS - 1]}…"


def invalid(argument: str, value: Any, expected: str, why: str = "") -> ValueError:
    """The ValueError for a refused argument, in Keras' words (``Invalid value for argument `x`...``)."""
    because = f" ({why})" if why else ""
    return ValueError(
        f"Invalid value for argument `{argument}`. Received: {argument}={clipped_repr(value)}{because}. Expected {expected}."
    )


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be carried by the file and the database, or None."""
    if "\x00" in text:
        return "it contains NUL, which PostgreSQL's jsonb cannot hold"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"character {error.start} is a lone surrogate, which UTF-8 cannot encode"
    return None


def check_name(name: Any, *, argument: str, section: str) -> str:
    """``name`` if the schema allows it as a key of ``section``; else ValueError naming ``argument``.

    Example::

        check_name("query", argument="tower", section="weight_stats")   # 'query'
    """
    rule = _name_rule(section)
    if not isinstance(name, str):
        raise invalid(argument, name, rule.expected(), f"a {type(name).__name__}")
    if len(name) < rule.min_length:
        raise invalid(argument, name, rule.expected(), "too short")
    if rule.max_length is not None and len(name) > rule.max_length:
        raise invalid(argument, name, rule.expected(), f"{len(name)} characters")
    problem = text_problem(name)
    if problem:
        raise invalid(argument, name, rule.expected(), problem)
    if rule.pattern is not None and not rule.pattern.search(name):
        raise invalid(argument, name, rule.expected(), "does not match the pattern")
    return name


def check_text(text: str, *, argument: str, max_length: int | None = None) -> str:
    """``text`` (a string value, such as a parameter) if the file and the database can carry it
    (and, with ``max_length``, if it is at most that long)."""
    expected = "a string encodable as UTF-8 and without NUL" + (f", at most {max_length} characters" if max_length is not None else "")
    if max_length is not None and len(text) > max_length:
        raise invalid(argument, text, expected, f"{len(text)} characters")
    problem = text_problem(text)
    if problem:
        raise invalid(argument, text, expected, problem)
    return text


def fits_a_json_number(value: int) -> bool:
    """Whether an integer is a number every JSON reader can take (within an IEEE 754 double's range)."""
    try:
        float(value)
    except OverflowError:
        return False
    return True


def check_epoch(step: int, *, argument: str = "step") -> int:
    """``step`` (already an int) if the schema allows it in ``epochs``."""
    expected = f"an integer >= {MIN_EPOCH}" + (f" and <= {MAX_EPOCH}" if MAX_EPOCH is not None else "")
    if step < MIN_EPOCH or (MAX_EPOCH is not None and step > MAX_EPOCH) or not fits_a_json_number(step):
        raise invalid(argument, step, expected)
    return step


def printable_text(text: str, max_length: int | None = None) -> str:
    """Free text (an error message) made storable: NUL and lone surrogates escaped, clipped to ``max_length``."""
    if text_problem(text):
        text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    if max_length is not None and len(text) > max_length:
        text = text[: max_length - 1] + "…"
    return text
