"""The summary the function adds: every loss/metrics series' final, best, best_epoch and nulls,
recomputed here from the series the row holds, for a corpus of documents."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from ingest.objects import ObjectRef
from ingest.pipeline import ingest_object
from ingest.summary import summarize
from tests.support.documents import appendix_document, dumps, v1_document
from tests.support.format_checks import check_schema
from tests.support.platform_db import Artifacts, PlatformDb


def recomputed(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The summary by its definition, written independently of ingest.summary."""
    out: dict[str, dict[str, Any]] = {}
    for section in ("loss", "metrics"):
        for name, series in doc[section].items():
            if name in out:
                continue
            logged = [(epoch, v) for epoch, v in zip(doc["epochs"], series) if v is not None]
            smaller = "loss" in name or "error" in name
            best_epoch, best = None, None
            for epoch, v in logged:  # strictly better only: the first epoch wins a tie
                if best is None or (v < best if smaller else v > best):
                    best_epoch, best = epoch, v
            out[name] = {
                "final": series[-1] if series else None,
                "best": best,
                "best_epoch": best_epoch,
                "nulls": sum(v is None for v in series),
            }
    return out


def _gappy(epochs: int, seed: int) -> bytes:
    """A run validated every 3rd epoch, a metric appearing late, NaN/Infinity tokens and ties, as an old writer's bytes."""
    rng = random.Random(seed)
    doc = v1_document(epochs, metrics=3, seed=seed)
    doc["epochs"] = [2 * e + 5 for e in range(epochs)]  # a continued run: epochs need not start at 0
    doc["loss"]["val_loss"] = [rng.random() if (e + 1) % 3 == 0 else None for e in range(epochs)]
    doc["metrics"]["val_mean_absolute_error"] = [None] * (epochs // 2) + [rng.random() for _ in range(epochs - epochs // 2)]
    doc["metrics"]["learning_rate"] = [0.01] * epochs  # a tie everywhere: the first epoch is the best
    doc["metrics"]["never_logged"] = [None] * epochs
    doc["metrics"]["steps"] = list(range(epochs))  # integers
    doc["loss"]["loss"][1] = float("nan")
    doc["loss"]["regularization_loss"][-1] = float("inf")
    return json.dumps(doc).encode()  # allow_nan: NaN and Infinity tokens, which the function reads as null


CORPUS = {
    "v1": lambda: dumps(v1_document(5, metrics=4, seed=1)),
    "one-epoch": lambda: dumps(v1_document(1, seed=2)),
    "no-epochs": lambda: dumps({"epochs": [], "loss": {"loss": []}, "metrics": {"auc": []}}),
    "gaps-nan-ties": lambda: _gappy(12, seed=3),
    "gaps-nan-ties-long": lambda: _gappy(50, seed=4),
    "appendix": lambda: json.dumps(appendix_document(4), indent=2).encode(),
    "file-with-its-own-summary": lambda: dumps(
        {**v1_document(3, seed=5), "summary": {"loss": {"final": 9.0, "best": 9.0, "best_epoch": 0, "nulls": 0}}}
    ),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_stored_summary_is_recomputed_from_the_stored_series(
    platform_db: PlatformDb, artifacts: Artifacts, name: str
) -> None:
    """Ingested, every document's row holds a summary equal to the definition applied to its own series."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, CORPUS[name]())
    assert ingest_object(ObjectRef.from_resource(resource), settings=platform_db.settings()).outcome == "ingested"
    history = platform_db.history(row_id)
    assert history["summary"] == recomputed(history)
    assert set(history["summary"]) == set(history["loss"]) | set(history["metrics"])
    check_schema(history)


def test_gaps_nan_and_ties_in_detail(platform_db: PlatformDb, artifacts: Artifacts) -> None:
    """Validation gaps and NaN count as nulls and are never best; a tie picks the first epoch; loss/error names are minimised."""
    row_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, _gappy(12, seed=3))
    ingest_object(ObjectRef.from_resource(resource), settings=platform_db.settings())
    history = platform_db.history(row_id)
    summary, epochs = history["summary"], history["epochs"]
    val = history["loss"]["val_loss"]
    assert summary["val_loss"]["nulls"] == 8 and summary["val_loss"]["final"] == val[-1] is not None
    assert summary["val_loss"]["best"] == min(v for v in val if v is not None)
    assert summary["loss"]["nulls"] == 1 and history["loss"]["loss"][1] is None  # NaN stored as null
    assert summary["regularization_loss"]["final"] is None  # Infinity at the last epoch
    assert summary["learning_rate"] == {"final": 0.01, "best": 0.01, "best_epoch": epochs[0], "nulls": 0}
    assert summary["never_logged"] == {"final": None, "best": None, "best_epoch": None, "nulls": 12}
    mae = history["metrics"]["val_mean_absolute_error"]
    assert summary["val_mean_absolute_error"]["best"] == min(v for v in mae if v is not None)
    assert summary["steps"] == {"final": 11, "best": 11, "best_epoch": epochs[-1], "nulls": 0}
    top = history["metrics"]["factorized_top_k/top_0_categorical_accuracy"]
    assert summary["factorized_top_k/top_0_categorical_accuracy"]["best"] == max(top)


def test_summarize_is_pure_and_treats_non_finite_floats_as_null() -> None:
    """summarize() leaves its input alone; a NaN or infinity in an unnormalized document is a null, never best."""
    doc = {"epochs": [0, 1, 2], "loss": {"val_loss": [math.nan, 0.4, -math.inf]}, "metrics": {"auc": [0.5, math.inf, 10**400]}}
    before = json.dumps(doc)
    out = summarize(doc)
    assert json.dumps(doc) == before
    assert out["val_loss"] == {"final": None, "best": 0.4, "best_epoch": 1, "nulls": 2}
    assert out["auc"] == {"final": 10**400, "best": 10**400, "best_epoch": 2, "nulls": 1}
    assert summarize({"epochs": []}) == {}
