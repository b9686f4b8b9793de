"""A restart continues only its own run; newer files are refused; nothing logged is dropped or silently lost."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from tests.support.format_checks import check_document, check_strict_json
from trainer_callbacks import MetricsCollector, MetricsSaveError, limits

FILE = "training_metrics.json"


def read(folder: Path) -> dict:
    return check_strict_json((folder / FILE).read_bytes())


def first_attempt(folder: Path, epochs: int, **kwargs: object) -> dict:
    c = MetricsCollector(folder, **kwargs)
    c.training_started(0)
    c.log_param("model", "MINE")
    for epoch in range(epochs):
        c.log_metric("loss", float(epoch), step=epoch)
    c.save(status="failed", error="preempted")
    return read(folder)


def test_a_run_id_is_set_at_epoch_0_and_kept_by_a_continuation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Epoch 0 sets run_id (Vertex AI's CLOUD_ML_JOB_ID where set); a restart past epoch 0 keeps it."""
    monkeypatch.setenv("CLOUD_ML_JOB_ID", "1234567890")
    assert first_attempt(tmp_path, 3)["run_id"] == "1234567890"
    with MetricsCollector(tmp_path) as again:
        again.training_started(3)
        again.log_metric("loss", 3.0, step=3)
    doc = read(tmp_path)
    assert doc["run_id"] == "1234567890" and doc["epochs"] == [0, 1, 2, 3]
    check_document(doc)
    monkeypatch.delenv("CLOUD_ML_JOB_ID")
    generated = first_attempt(tmp_path / "other", 1)["run_id"]
    assert len(generated) == 32 and generated != "1234567890"


def test_another_runs_file_is_never_merged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A restart at epoch 3 beside another run's file (its run_id differs): a warning, a new document, none of its epochs or params."""
    first_attempt(tmp_path, 10, run_id="other-run")
    with caplog.at_level(logging.WARNING, logger="trainer_callbacks"), MetricsCollector(tmp_path, run_id="this-run") as c:
        c.log_param("batch_size", 32)
        c.training_started(3)
        c.log_metric("loss", 30.0, step=3)
    doc = read(tmp_path)
    assert doc["epochs"] == [3] and doc["params"] == {"batch_size": 32} and doc["run_id"] == "this-run"
    assert any("belongs to another run" in r.getMessage() and "other-run" in r.getMessage() for r in caplog.records)


def test_epochs_past_the_restart_point_are_replaced_not_merged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The file holds epochs 0-5 but training restarts at 3 (the checkpoint kept 0-2): 3-5 are dropped with a warning and written again."""
    run_id = first_attempt(tmp_path, 6)["run_id"]
    with caplog.at_level(logging.WARNING, logger="trainer_callbacks"), MetricsCollector(tmp_path) as c:
        c.training_started(3)
        c.log_metric("loss", 30.0, step=3)
    doc = read(tmp_path)
    assert doc["epochs"] == [0, 1, 2, 3] and doc["loss"]["loss"] == [0.0, 1.0, 2.0, 30.0] and doc["run_id"] == run_id
    assert any("at or past the restart point (3, 4, 5)" in r.getMessage() for r in caplog.records)


def test_a_newer_schema_version_is_refused_and_never_rewritten(tmp_path: Path) -> None:
    """A schema_version 2 file is not continued: the read raises with the reason, and the failed save leaves it as it was."""
    newer = json.dumps({"schema_version": 2, "epochs": [0, 1], "loss": {"loss": [1.0, 0.9]}, "new_key": {"x": 1}})
    (tmp_path / FILE).write_text(newer)
    c = MetricsCollector(tmp_path, fallback_dir=tmp_path / "fallback")
    with pytest.raises(ValueError, match="schema_version 2, newer than the 1"):
        c.training_started(2)
    with pytest.raises(MetricsSaveError):
        c.save(status="failed", error="refused")
    assert (tmp_path / FILE).read_text() == newer


def test_a_ragged_last_row_is_padded_on_resume(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file whose last epoch lacks some series' entry (a writer stopped inside the row) is padded with null, logged, and continued."""
    (tmp_path / FILE).write_text(json.dumps({
        "epochs": [0, 1], "loss": {"loss": [1.0, 0.9], "val_loss": [1.1]},
        "weight_stats": {"query": {"mean": [0.1], "histogram": {"bin_edges": [0, 1], "counts": [[3]]}}}}))
    with caplog.at_level(logging.WARNING, logger="trainer_callbacks"), MetricsCollector(tmp_path) as c:
        c.training_started(2)
        c.log_metric("loss", 0.8, step=2)
    doc = read(tmp_path)
    assert doc["loss"]["val_loss"] == [1.1, None, None] and doc["weight_stats"]["query"]["histogram"]["counts"] == [[3], None, None]
    assert any("padded with null" in r.getMessage() for r in caplog.records)
    check_document(doc)


def test_final_and_test_values_logged_per_epoch_keep_their_series(tmp_path: Path) -> None:
    """test_*/final_* logged with a step at several epochs: the series in metrics, the last value in final_metrics; at one step, final_metrics only."""
    c = MetricsCollector(tmp_path)
    for epoch in range(3):
        c.log_metric("loss", 1.0, step=epoch)
        c.log_metric("test_recall_at_10", 0.1 * (epoch + 1), step=epoch)
    c.log_metric("final_loss", 0.5, step=2)
    doc = c.to_dict()
    assert doc["metrics"]["test_recall_at_10"] == [0.1, 0.2, 0.30000000000000004]
    assert doc["final_metrics"] == {"test_recall_at_10": 0.30000000000000004, "final_loss": 0.5}
    assert "final_loss" not in doc["metrics"]
    check_document(doc)


def test_timing_and_callback_errors_are_recorded_aligned(tmp_path: Path) -> None:
    """log_timing writes the timing section aligned to epochs; record_callback_error appends entries, the error clipped to the schema's bound."""
    c = MetricsCollector(tmp_path)
    c.log_metric("loss", 1.0, step=0)
    c.log_timing({"epoch_seconds": 1.5, "device_peak_bytes": None}, step=1)
    c.record_callback_error("GradientStatsCallback", 1, "ValueError: " + "x" * 10000)
    c.record_callback_error("WeightStatsCallback", None, "at train begin")
    doc = c.to_dict()
    assert doc["timing"] == {"epoch_seconds": [None, 1.5], "device_peak_bytes": [None, None]}
    assert [(e["callback"], e["epoch"]) for e in doc["callback_errors"]] == [("GradientStatsCallback", 1), ("WeightStatsCallback", None)]
    assert len(doc["callback_errors"][0]["error"]) == 4096
    check_document(doc)


def test_params_are_json_and_bounded(tmp_path: Path) -> None:
    """A dict or list param is stored as JSON text; a string longer than the schema's bound raises, naming the length."""
    c = MetricsCollector(tmp_path)
    c.log_params({"layers": [64, 32], "optimizer": {"name": "adam", "beta_1": 0.9}})
    assert c.to_dict()["params"] == {"layers": "[64, 32]", "optimizer": '{"name": "adam", "beta_1": 0.9}'}
    longest = limits.MAX_PARAM_LENGTH
    c.log_param("ok", "x" * longest)
    with pytest.raises(ValueError, match=f"{longest + 1} characters.*at most {longest}"):
        c.log_param("vocabulary", "x" * (longest + 1))
    assert "vocabulary" not in c.to_dict()["params"]


def test_a_file_over_the_functions_cap_is_written_with_one_loud_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save over the function's default byte cap is written, warning once with the figures and MAX_METRICS_BYTES."""
    monkeypatch.setattr(limits, "FUNCTION_DEFAULT_MAX_BYTES", 50_000)  # the same rule at a size a test can afford
    c = MetricsCollector(tmp_path)
    c.log_params({f"p{i}": "x" * 6000 for i in range(10)})
    with caplog.at_level(logging.WARNING, logger="trainer_callbacks"):
        c.save()
        c.save()
    warnings = [r.getMessage() for r in caplog.records if "LARGE METRICS FILE" in r.getMessage()]
    assert len(warnings) == 1 and "50,000" in warnings[0] and "MAX_METRICS_BYTES=" in warnings[0]
    assert len((tmp_path / FILE).read_bytes()) > 50_000


def test_too_many_values_warn_too(tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past x-maxValues (lowered here), the save is written and the warning names the value count."""
    monkeypatch.setattr(limits, "MAX_VALUES", 1000)
    c = MetricsCollector(tmp_path)
    for epoch in range(50):
        c.log_metrics({f"m{i}": 0.5 for i in range(40)}, step=epoch)
    with caplog.at_level(logging.WARNING, logger="trainer_callbacks"):
        c.save()
    assert any("values, over the format's limit of 1,000" in r.getMessage() for r in caplog.records)
    assert read(tmp_path)["epochs"] == list(range(50))


def test_a_local_file_mode_follows_the_umask(tmp_path: Path) -> None:
    """A saved file is 0666 less the umask (0644 under 022), not mkstemp's 0600."""
    old = os.umask(0o022)
    try:
        MetricsCollector(tmp_path).save()
        assert stat.S_IMODE((tmp_path / FILE).stat().st_mode) == 0o644
        os.umask(0o002)
        MetricsCollector(tmp_path / "b").save()
        assert stat.S_IMODE((tmp_path / "b" / FILE).stat().st_mode) == 0o664
    finally:
        os.umask(old)


def test_logging_after_the_with_block_raises(tmp_path: Path) -> None:
    """Once the block has ended (and saved), log_* raise instead of accepting values that would never be saved."""
    with MetricsCollector(tmp_path) as c:
        c.log_metric("loss", 0.5, step=0)
    with pytest.raises(RuntimeError, match="with block has ended"):
        c.log_metric("test_recall", 0.1)
    with pytest.raises(RuntimeError, match="with block has ended"):
        c.log_param("late", 1)
    assert read(tmp_path)["final_metrics"] == {}
