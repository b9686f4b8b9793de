"""Builders of training_metrics.json documents for tests and the benchmark."""

from __future__ import annotations

import json
import random
from typing import Any


def v1_document(
    epochs: int = 3,
    *,
    metrics: int = 2,
    towers: tuple[str, ...] = ("query", "candidate"),
    bins: int = 4,
    seed: int = 0,
    status: str = "completed",
    count_max: int = 1000,
) -> dict[str, Any]:
    """A schema_version 1 document with every key, aligned series and histograms."""
    rng = random.Random(seed)
    ep = list(range(epochs))

    def series() -> list[float]:
        return [rng.random() for _ in ep]

    def tower_stats(norm: bool) -> dict[str, Any]:
        stats: dict[str, Any] = {k: series() for k in ("mean", "std", "min", "max")}
        if norm:
            stats["norm"] = series()
        stats["histogram"] = {
            "bin_edges": [-1.0 + 2.0 * i / bins for i in range(bins + 1)],
            "counts": [[rng.randrange(count_max) for _ in range(bins)] for _ in ep],
        }
        return stats

    loss_names = ["loss", "val_loss", "total_loss", "regularization_loss"]
    return {
        "schema_version": 1,
        "status": status,
        "saved_at": "2026-11-26T08:00:00Z",
        "available": True,
        "epochs": ep,
        "loss": {name: series() for name in loss_names},
        "metrics": {f"factorized_top_k/top_{i}_categorical_accuracy": series() for i in range(metrics)},
        "gradient": {"total": series(), **{t: series() for t in towers}},
        "weight_stats": {t: tower_stats(False) for t in towers},
        "gradient_stats": {t: tower_stats(True) for t in towers},
        "final_metrics": {"final_loss": 0.25, "test_recall_at_100": 0.075},
        "params": {"epochs": epochs, "batch_size": 2048, "optimizer": "adagrad", "use_bias": True, "note": None},
    }


def appendix_document(epochs: int = 3) -> dict[str, Any]:
    """A file as the original plan's sketch wrote it: no schema_version, status or metrics."""
    doc = v1_document(epochs, metrics=0)
    for key in ("schema_version", "status", "metrics"):
        doc.pop(key)
    doc["saved_at"] = "2024-01-15T10:30:00.123456"
    return doc


def megabyte_document(metrics: int = 140) -> dict[str, Any]:
    """The benchmark's file: 50 epochs x ``metrics`` per-epoch metrics (4 of them
    losses) + 4 histograms x 50 bins; 140 metrics are ~0.46 MB as
    ``dumps(doc, indent=2)`` (the plan's sketch's layout), 540 are ~1 MB."""
    return v1_document(50, metrics=metrics - 4, towers=("query", "candidate"), bins=50, seed=1, count_max=10**9)


def dumps(doc: Any, indent: int | None = None) -> bytes:
    return json.dumps(doc, indent=indent).encode()


# The densest file shapes found, as (head, unit, tail): a file is head + unit * n + tail.
# Parsing cost per byte depends on the shape, not the size; the last three fail the schema
# where the value is large (the hostile report's file, and the worst shape in a series or a
# param). bench/bench_memory.py measures them all; tests/test_memory.py checks them under a worker.
NESTED = '{"":{"":{"":{"":{"":{}}}}}},'
DENSE_SHAPES = {
    "ints": ("[", "1,", "]"),
    "floats": ("[", "0.5,", "]"),
    "objects": ("[", "{},", "]"),
    "nested": ("[", NESTED, "]"),
    "report": ('{"epochs":[0],"loss":{"l":[1]},"zz":[', '{"":0},', "]}"),
    "invalid-series": ('{"epochs":[0],"loss":{"l":[', NESTED, "]}}"),
    "invalid-params": ('{"epochs":[0],"params":{"a":[', NESTED, "]}}"),
}
