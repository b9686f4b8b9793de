"""Names and values are checked where they are logged, against the schema's limits (one definition)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.format_checks import check_document, check_strict_json
from trainer_callbacks import MetricsCollector, limits

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "functions" / "ingest" / "schema" / "training_metrics.v1.schema.json"
SHIPPED = Path(limits.__file__).parent / "schema" / limits.SCHEMA_FILE
LONGEST = limits.MAX_NAME_LENGTH


def test_the_shipped_schema_is_the_functions_schema() -> None:
    """The schema inside the trainer package is a real file (the folder builds alone) byte-identical to the function's, the format's one definition."""
    assert not SHIPPED.is_symlink(), f"{SHIPPED.relative_to(ROOT)} must be a real file: a link breaks `pip wheel` of a copied folder"
    assert SHIPPED.read_bytes() == SCHEMA_PATH.read_bytes(), (
        f"{SHIPPED.relative_to(ROOT)} differs from {SCHEMA_PATH.relative_to(ROOT)}: copy the canonical file over it"
    )


def test_the_byte_cap_mirrors_the_functions_default() -> None:
    """limits.FUNCTION_DEFAULT_MAX_BYTES is the function's default MAX_METRICS_BYTES, and MAX_VALUES and MAX_PARAM_LENGTH are the schema's."""
    from ingest.config import Settings

    from trainer_callbacks import limits

    assert limits.FUNCTION_DEFAULT_MAX_BYTES == Settings.__dataclass_fields__["max_metrics_bytes"].default
    schema = json.loads(SCHEMA_PATH.read_text())
    assert limits.MAX_VALUES == schema["x-maxValues"]
    assert limits.MAX_PARAM_LENGTH == schema["properties"]["params"]["additionalProperties"]["maxLength"]


def test_the_limits_are_the_schemas() -> None:
    """Each limit the collector applies is the value the schema states, and the schema uses no keyword the checks would ignore."""
    schema = json.loads(SCHEMA_PATH.read_text())

    def at(*path: str) -> dict:
        """The subschema at ``path``, following local $refs."""
        node = schema
        for key in path:
            node = node[key]
            while "$ref" in node:
                node = {**schema["$defs"][node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    name = at("properties", "loss", "propertyNames")
    assert (limits.MIN_NAME_LENGTH, limits.MAX_NAME_LENGTH) == (name.get("minLength", 0), name.get("maxLength"))
    assert limits.MIN_EPOCH == at("properties", "epochs", "items").get("minimum", 0)
    assert limits.MAX_EPOCH == at("properties", "epochs", "items").get("maximum")
    tower = at("properties", "weight_stats", "additionalProperties")
    assert limits.STAT_NAMES == tuple(k for k in tower["properties"] if k != "histogram")
    assert limits.MIN_COUNT == at("properties", "weight_stats", "additionalProperties", "properties", "histogram", "properties",
                                  "counts", "items", "items").get("minimum")
    assert limits.MAX_ERROR_LENGTH == at("properties", "error").get("maxLength")
    for section in ("loss", "metrics", "gradient", "weight_stats", "gradient_stats", "final_metrics", "params"):
        assert set(limits.name_schema(section)) <= limits.STRING_KEYWORDS, section
        assert limits.name_schema(section) == at("properties", section, "propertyNames"), section
    assert set(limits.epoch_schema()) <= limits.INTEGER_KEYWORDS
    assert set(limits.count_schema()) <= limits.INTEGER_KEYWORDS


def histogram(counts: list[Any] | None = None, edges: list[Any] | None = None) -> dict[str, Any]:
    return {"bin_edges": [-1.0, 0.0, 1.0] if edges is None else edges, "counts": [1, 2] if counts is None else counts}


CALLS: dict[str, Callable[..., None]] = {
    "log_metric": lambda c, name="loss", value=0.5, step=0: c.log_metric(name, value, step=step),
    "log_param": lambda c, name="lr", value=0.1, step=None: c.log_param(name, value),
    "log_weight_stats": lambda c, name="query", value=0.5, step=0, **kw: c.log_weight_stats(name, {"mean": value}, kw.get("h"), step=step),
    "log_gradient_stats": lambda c, name="query", value=0.5, step=0, **kw: c.log_gradient_stats(name, {"norm": value}, kw.get("h"), step=step),
}
BAD_NAMES = [
    ("", "too short"),
    ("x" * (LONGEST + 1), f"{LONGEST + 1} characters"),
    ("val\x00loss", "NUL"),
    ("val_\ud800", "lone surrogate"),
    (3, "a int"),
]
BAD_STEPS = [(1.7, "not a whole number"), (np.float64(2.9), "not a whole number"), (-1, ">= 0"), (10**400, ""), (True, "a bool"),
             (float("nan"), "not a whole number"), (np.zeros(2), "array")]
TOO_LARGE = [10**400, 10**5000]


def refused(call: str, argument: str, why: str, **kwargs: Any) -> None:
    """The call raises ValueError naming ``argument`` (and ``why``) and leaves the document as it was."""
    c = MetricsCollector("/nonexistent/never-written")
    CALLS["log_metric"](c, "loss", 1.0, 0)
    before = c.to_dict()
    with pytest.raises(ValueError, match=rf"argument `{re.escape(argument)}") as caught:
        CALLS[call](c, **kwargs)
    assert why in str(caught.value)
    assert c.to_dict() == before


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize(("name", "why"), BAD_NAMES, ids=["empty", "too-long", "nul", "surrogate", "not-a-string"])
def test_a_bad_name_is_refused_at_the_call(call: str, name: Any, why: str) -> None:
    """Empty, longer than the schema allows, NUL, a lone surrogate, not a string: ValueError naming the argument, nothing stored."""
    refused(call, "tower" if "stats" in call else "name", why, name=name)


@pytest.mark.parametrize("call", ["log_metric", "log_weight_stats", "log_gradient_stats"])
@pytest.mark.parametrize(("step", "why"), BAD_STEPS, ids=["1.7", "np2.9", "negative", "huge", "bool", "nan", "array"])
def test_a_bad_step_is_refused_at_the_call(call: str, step: Any, why: str) -> None:
    """A step that is not a whole number >= 0 (1.7, np.float64(2.9) were truncated before) is refused, not filed under another epoch."""
    refused(call, "step", why, step=step)


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("value", TOO_LARGE, ids=["1e400", "1e5000"])
def test_an_integer_too_large_for_json_is_refused_at_the_call(call: str, value: int) -> None:
    """An integer beyond a 64-bit float (read as infinity, or not writable at all) is refused where it was logged."""
    argument = {"log_metric": "value", "log_param": "value"}.get(call, "stats")
    refused(call, argument, "too large for a JSON number", value=value)


@pytest.mark.parametrize(
    ("h", "why"),
    [
        (histogram(counts=[1.5, 2]), "not a whole number"),
        (histogram(counts=[-1, 2]), "below 0"),
        (histogram(counts=[1, 2, 3]), "3 counts for 3 edges"),
        (histogram(counts=[10**400, 1]), "too large"),
        (histogram(edges=[0.0, float("nan"), 1.0]), "finite"),
        (histogram(edges=[1.0, 0.0, 2.0]), "not strictly increasing"),
        (histogram(edges=[1.0]), "at least 2"),
        ({"counts": [1]}, "bin_edges"),
    ],
    ids=["fractional-count", "negative-count", "count-length", "huge-count", "nan-edge", "decreasing-edges", "one-edge", "no-edges"],
)
def test_a_bad_histogram_is_refused_at_the_call(h: dict[str, Any], why: str) -> None:
    """Counts that are not B whole numbers >= 0, edges that are not increasing finite numbers: refused, naming the histogram."""
    for call in ("log_weight_stats", "log_gradient_stats"):
        refused(call, "histogram", why, h=h)


@pytest.mark.parametrize(("value", "why"), [("a\x00b", "NUL"), ("a\udcff", "lone surrogate"), (b"\xff".decode("utf-8", "surrogateescape"), "lone surrogate")])
def test_a_param_string_the_database_cannot_hold_is_refused(value: str, why: str) -> None:
    """A param value with NUL or a lone surrogate (a path decoded with surrogateescape) is refused, naming `value`."""
    refused("log_param", "value", why, value=value)


def test_what_the_schema_allows_is_kept_exactly(tmp_path: Path) -> None:
    """At the limits: a name of exactly the longest length, non-ASCII names, whole-number steps of any kind, 2**62, counts as floats 3.0."""
    c = MetricsCollector(tmp_path)
    longest = "é" * LONGEST
    c.log_metric(longest, 0.5, step=np.int64(0))
    c.log_metric("ndcg@10/кошка", 2**62, step=1.0)
    c.log_weight_stats("query", {"mean": 0.0}, histogram(counts=[3.0, np.int64(4)]), step=np.float32(1))
    c.log_param("tokenizer", "wordpiece ✓")
    c.save()
    doc = check_strict_json((tmp_path / "training_metrics.json").read_bytes())
    assert doc["epochs"] == [0, 1]
    assert doc["metrics"][longest] == [0.5, None] and doc["metrics"]["ndcg@10/кошка"] == [None, 2**62]
    assert doc["weight_stats"]["query"]["histogram"]["counts"] == [None, [3, 4]]
    check_document(doc)


def test_an_error_text_is_stored_escaped_and_clipped(tmp_path: Path) -> None:
    """The failed run's error (free text from an exception) with NUL and a lone surrogate is saved escaped, not refused."""
    c = MetricsCollector(tmp_path)
    c.log_metric("loss", 0.5, step=0)
    c.save(status="failed", error=RuntimeError("cannot open /data/\udcff\x00.tfrecord: " + "x" * 5000))
    doc = check_strict_json((tmp_path / "training_metrics.json").read_bytes())
    assert doc["error"].startswith("RuntimeError: cannot open /data/\\udcff\\x00.tfrecord: xxx") and len(doc["error"]) == 4000
    check_document(doc)
