"""tests/support/format_checks: the trainer's documents go through the ingestion function's own reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.format_checks import check_document
from trainer_callbacks import MetricsCollector


def valid_document(tmp_path: Path) -> dict:
    c = MetricsCollector(tmp_path)
    for epoch in range(2):
        c.log_metric("loss", 0.5 - epoch / 10, step=epoch)
        c.log_weight_stats("query", {"mean": 0.0, "std": 1.0}, {"bin_edges": [-1, 0, 1], "counts": [3, 4]}, step=epoch)
    c.log_metric("test_recall_at_100", 0.075)
    return c.to_dict()


def test_a_collector_document_passes(tmp_path: Path) -> None:
    """A document the collector built passes the schema and the function's reader."""
    check_document(valid_document(tmp_path))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        # Numbers JSON cannot spell: the old checks looked only at loss/metrics/gradient.
        (("weight_stats", "query", "mean"), [0.0, float("nan")], r"\$\.weight_stats\.query\.mean\[1\] = nan"),
        (("final_metrics",), {"test_recall_at_100": float("inf")}, r"final_metrics\.test_recall_at_100 = inf"),
        # The function's reader names these (what JSON Schema cannot say).
        (("epochs",), [1, 1], r"reader rejects.*epochs must strictly increase"),
        (("loss", "loss"), [0.5], r"reader rejects.*loss\.loss has 1 values for 2 epochs"),
        (("weight_stats", "query", "histogram", "counts"), [[3, 4], [1, 2, 3]], r"reader rejects.*counts\[1\] has 3 bins"),
        (("weight_stats", "query", "histogram", "bin_edges"), [-1, 1, 0], r"reader rejects.*bin_edges must strictly increase"),
    ],
)
def test_each_broken_rule_is_named(tmp_path: Path, field: tuple[str, ...], value: object, message: str) -> None:
    """A document breaking a rule fails with an AssertionError that names the rule and the place."""
    doc = valid_document(tmp_path)
    target = doc
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    with pytest.raises(AssertionError, match=message):
        check_document(doc)
