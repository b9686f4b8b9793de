"""Checks of training_metrics.json shared by both sides' tests.

``check_document(doc)`` validates against the shared JSON Schema
(functions/ingest/schema/training_metrics.v1.schema.json, read by path) with
the library the function uses (jsonschema-rs, Draft 2020-12), then
serializes ``doc`` as strict JSON (no NaN/Infinity: the file format forbids
them) and hands the bytes to the function's own reader,
``ingest.document.prepare``, the code that ingests the file in production. The
reader checks what JSON Schema cannot say (epochs strictly increase, every
per-epoch series and histogram counts row has one entry per epoch, each counts
row has len(bin_edges) - 1 entries, bin edges finite and increasing) and names
the problem when it rejects. A document the reader would have to change (a
value it turns into null) fails too: the trainer writes exactly what gets stored.
Every failure is an AssertionError naming the problem.

The trainer package never imports the function code (DESIGN.md); its tests may,
so the trainer's output is checked by the one real reader.

Example::

    from tests.support.format_checks import check_document
    check_document(json.loads(path.read_bytes()))
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import jsonschema_rs
from ingest import document as function_reader
from ingest.errors import Rejected

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "functions" / "ingest" / "schema" / "training_metrics.v1.schema.json"


@functools.cache
def _validator() -> Any:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema_rs.meta.validate(schema)  # the schema itself is valid Draft 2020-12
    return jsonschema_rs.validator_for(schema)


def check_schema(doc: Any) -> None:
    """AssertionError listing every place ``doc`` breaks the JSON Schema."""
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(map(str, e.instance_path)))
    if errors:
        lines = [f"{'/'.join(map(str, e.instance_path)) or '<root>'}: {e.message[:300]}" for e in errors[:20]]
        raise AssertionError("training_metrics.json does not match the schema:\n" + "\n".join(lines))


def check_strict_json(data: bytes) -> Any:
    """Parse ``data`` as RFC 8259 JSON (no NaN/Infinity tokens) and return it."""

    def reject(token: str) -> None:
        raise AssertionError(f"the file contains the non-JSON token {token}")

    doc = json.loads(data.decode("utf-8"), parse_constant=reject)
    return doc


def _non_finite_paths(value: Any, where: str = "$") -> list[str]:
    """Where ``value`` holds NaN or an infinity (JSON has no token for them)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{where} = {value}"]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _non_finite_paths(item, f"{where}.{key}")]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _non_finite_paths(item, f"{where}[{i}]")]
    return []


def _assert_finite(doc: Any) -> None:
    bad = _non_finite_paths(doc)
    assert not bad, "non-finite numbers (the format writes null): " + ", ".join(bad[:10])


def check_with_function_reader(doc: Any) -> dict[str, Any]:
    """Strict JSON bytes of ``doc`` through ``ingest.document.prepare``; returns what it would store.

    AssertionError when ``doc`` holds a non-finite number, when the reader
    rejects the bytes (with the reader's reason) or when it would change a value.
    """
    _assert_finite(doc)
    data = json.dumps(doc, allow_nan=False, ensure_ascii=False).encode("utf-8")
    try:
        prepared = function_reader.prepare(data)
    except Rejected as rejected:
        raise AssertionError(f"the ingestion function's reader rejects the document: {rejected}") from None
    changed = sorted(key for key in doc if prepared.document.get(key) != doc[key])
    assert not changed, f"the ingestion function's reader would change {changed}"
    return prepared.document


def check_document(doc: Any) -> None:
    """Numbers JSON can spell, the schema, then the function's reader; AssertionError naming the first kind of problem found."""
    # First: the validator cannot judge NaN or an infinity (JSON has no token
    # for them), so it would only say "not a number or null".
    _assert_finite(doc)
    check_schema(doc)
    check_with_function_reader(doc)
