"""Documents the report tests draw, and what their pages must show, worked out
from the documents themselves (not from the report's code).

Example::

    path = write_corpus(tmp_path)["failed"]
    expected = expected_charts(json.loads(path.read_text(), parse_constant=float))
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from metrics_ingest.mlflow_export.mapping import NameRules, build_document, dumps
from metrics_ingest.mlflow_export.model import MlflowRun, Point
from tests.support.documents import v1_document

STATS = {"weight_stats": "weights", "gradient_stats": "gradients"}


def failed_run() -> str:
    """A run that died at epoch 5: an error, NaN / Infinity tokens (an older writer), validation every 2 epochs."""
    doc = v1_document(6, status="failed", seed=1)
    doc["error"] = "ResourceExhaustedError: OOM when allocating tensor with shape [2048, 64]"
    doc["loss"]["loss"][3] = math.nan
    doc["loss"]["val_loss"] = [v if i % 2 == 1 else None for i, v in enumerate(doc["loss"]["val_loss"])]
    doc["metrics"]["factorized_top_k/top_0_categorical_accuracy"][5] = -math.inf
    doc["gradient"]["total"][2] = math.inf
    doc["weight_stats"]["query"]["histogram"]["counts"][4] = None  # no histogram at that epoch
    doc["final_metrics"]["final_loss"] = math.nan
    doc["metrics"]["</script><!--<b>odd name"] = [0.5] * 6  # drawn as text, never as markup
    return json.dumps(doc)  # allow_nan: NaN, Infinity and -Infinity tokens, as json.dumps writes them


def one_epoch_run() -> str:
    """A run of a single epoch."""
    return json.dumps(v1_document(1, seed=2))


def no_histogram_run() -> str:
    """Statistics without histograms, and per-epoch timing."""
    doc = v1_document(5, seed=3)
    for key in STATS:
        for stats in doc[key].values():
            del stats["histogram"]
    doc["timing"] = {"epoch_seconds": [1.5, 1.2, 1.25, None, 1.3], "device_peak_bytes": [None] * 5}
    return json.dumps(doc)


def mlflow_run() -> MlflowRun:
    """An MLflow run as the exporter reads it: validation every 2 steps, a NaN point, one histogram."""
    metrics: dict[str, list[tuple[int, int, float]]] = {
        "loss": [Point(s, 1_700_000_000_000 + s, 1.0 / (s + 1)) for s in range(6)],
        "val_loss": [Point(s, 1_700_000_000_000 + s, 1.2 / (s + 1)) for s in range(0, 6, 2)],
        "factorized_top_k/top_10_categorical_accuracy": [Point(s, 1, 0.1 * s if s != 3 else math.nan) for s in range(6)],
        "query_weight_mean": [Point(s, 1, 0.01 * s) for s in range(6)],
        "test_recall_at_10": [Point(5, 1, 0.075)],
    }
    for b in range(4):
        metrics[f"query_weight_hist_{b}"] = [Point(s, 1, float(10 * b + s)) for s in range(6)]
    return MlflowRun(
        run_id="0123456789abcdef0123456789abcdef", experiment_id="3", run_name="qt-7-retrieval", status="FINISHED",
        lifecycle_stage="active", start_time=1_700_000_000_000, end_time=1_700_000_360_000,
        tags={"mlflow.user": "ds"}, params={"batch_size": "2048", "query_weight_hist_edges": "[-1, -0.5, 0, 0.5, 1]"},
        metrics=metrics,
    )


def write_export_folder(folder: Path) -> Path:
    """An ``export-mlflow --output-dir`` folder holding one run, laid out as the exporter writes it."""
    export = build_document(mlflow_run(), NameRules.default())
    target = folder / "ml-artifacts" / "quick_tests" / "7" / "training_metrics.json"
    target.parent.mkdir(parents=True)
    target.write_bytes(dumps(export.document))
    return folder


def write_corpus(folder: Path) -> dict[str, Path]:
    """Each corpus source under ``folder``: name -> a file, or the export folder."""
    paths = {}
    for name, text in (("failed", failed_run()), ("one_epoch", one_epoch_run()), ("no_histograms", no_histogram_run())):
        path = folder / name / "training_metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(text)
        paths[name] = path
    paths["mlflow_export"] = write_export_folder(folder / "export")
    return paths


def _finite(values: list[Any]) -> list[Any]:
    return [v if v is None or math.isfinite(v) else None for v in values]


def _spelled(values: list[Any]) -> list[tuple[int, str]]:
    return [(i, "NaN" if math.isnan(v) else "Infinity" if v > 0 else "-Infinity")
            for i, v in enumerate(values) if isinstance(v, float) and not math.isfinite(v)]


def expected_charts(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Chart title -> what a one-run page must plot for ``doc`` (parsed with NaN/Infinity as floats).

    Line charts: ``{"series": {name: values with null for every non-finite}, "marks": {name: [(i, kind)]}}``;
    heat maps: ``{"edges": [...], "counts": [...]}``.
    """
    charts: dict[str, dict[str, Any]] = {}
    for key in ("loss", "metrics", "gradient", "timing"):
        series_map = doc.get(key) or {}
        for name, values in series_map.items():
            title = name[4:] if name.startswith("val_") and name[4:] in series_map else name
            chart = charts.setdefault(title, {"series": {}, "marks": {}})
            chart["series"][name] = _finite(values)
            if _spelled(values):
                chart["marks"][name] = _spelled(values)
    for key, what in STATS.items():
        for tower, stats in (doc.get(key) or {}).items():
            for stat in ("mean", "std", "min", "max", "norm"):
                if stat in stats:
                    charts[f"{tower} {what} {stat}"] = {"series": {stat: _finite(stats[stat])}, "marks": {}}
            if "histogram" in stats:
                charts[f"{tower} {what} histogram"] = dict(stats["histogram"])
    return charts
