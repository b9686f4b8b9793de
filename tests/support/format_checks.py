"""Checks of training_metrics.json shared by both sides' tests.

``check_document(doc)`` validates against the shared JSON Schema
(functions/ingest/schema/training_metrics.v1.schema.json, read by path) and then
checks what JSON Schema cannot say: epochs strictly increase, every per-epoch
series and histogram counts row has one entry per epoch, and each counts row has
len(bin_edges) - 1 entries. It raises AssertionError naming the problem.

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

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "functions" / "ingest" / "schema" / "training_metrics.v1.schema.json"


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def check_schema(doc: Any) -> None:
    """AssertionError listing every place ``doc`` breaks the JSON Schema."""
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:20]]
        raise AssertionError("training_metrics.json does not match the schema:\n" + "\n".join(lines))


def check_alignment(doc: dict[str, Any]) -> None:
    """AssertionError for what the schema cannot express (see the module docstring)."""
    epochs = doc["epochs"]
    for earlier, later in zip(epochs, epochs[1:]):
        assert later > earlier, f"epochs are not strictly increasing: {earlier} then {later}"
    n = len(epochs)
    for section in ("loss", "metrics", "gradient"):
        for name, series in (doc.get(section) or {}).items():
            assert len(series) == n, f"{section}.{name} has {len(series)} entries for {n} epochs"
    for section in ("weight_stats", "gradient_stats"):
        for tower, stats in (doc.get(section) or {}).items():
            for name, series in stats.items():
                if name == "histogram":
                    edges, counts = series["bin_edges"], series["counts"]
                    assert len(counts) == n, f"{section}.{tower}.histogram.counts has {len(counts)} rows for {n} epochs"
                    assert all(b > a for a, b in zip(edges, edges[1:])), f"{section}.{tower}.histogram.bin_edges are not increasing"
                    for epoch, row in zip(epochs, counts):
                        assert row is None or len(row) == len(edges) - 1, (
                            f"{section}.{tower}.histogram.counts at epoch {epoch} has {len(row)} bins for {len(edges)} edges"
                        )
                else:
                    assert len(series) == n, f"{section}.{tower}.{name} has {len(series)} entries for {n} epochs"


def check_strict_json(data: bytes) -> Any:
    """Parse ``data`` as RFC 8259 JSON (no NaN/Infinity tokens) and return it."""

    def reject(token: str) -> None:
        raise AssertionError(f"the file contains the non-JSON token {token}")

    doc = json.loads(data.decode("utf-8"), parse_constant=reject)
    return doc


def check_document(doc: Any) -> None:
    """Schema plus alignment; AssertionError naming the first kind of problem found."""
    check_schema(doc)
    check_alignment(doc)
    for section in ("loss", "metrics", "gradient"):
        for name, series in (doc.get(section) or {}).items():
            for value in series:
                assert value is None or math.isfinite(value), f"{section}.{name} holds {value}"
