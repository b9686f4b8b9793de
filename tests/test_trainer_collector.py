"""MetricsCollector without TensorFlow training: alignment, categories, strict JSON, local saves, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.format_checks import check_document, check_strict_json
from trainer_callbacks import MetricsCollector, MetricsSaveError
from trainer_callbacks.document import dumps, to_number

FILE = "training_metrics.json"


def read(folder: Path) -> dict:
    return check_strict_json((folder / FILE).read_bytes())


def test_series_are_aligned_with_null_holes(tmp_path: Path) -> None:
    """A metric logged only on some epochs, or first seen late, is padded with nulls to the epochs."""
    c = MetricsCollector(tmp_path)
    for epoch in range(4):
        c.log_metric("loss", 1.0 / (epoch + 1), step=epoch)
        if epoch % 2 == 1:
            c.log_metric("val_loss", 2.0, step=epoch)
            c.log_metric("val_top_100_categorical_accuracy", 0.5, step=epoch)
    c.log_metric("late_metric", 3, step=3)
    doc = c.to_dict()
    assert doc["epochs"] == [0, 1, 2, 3]
    assert doc["loss"]["val_loss"] == [None, 2.0, None, 2.0]
    assert doc["metrics"]["val_top_100_categorical_accuracy"] == [None, 0.5, None, 0.5]
    assert doc["metrics"]["late_metric"] == [None, None, None, 3]
    check_document(doc)


def test_an_epoch_logged_out_of_order_is_inserted_in_place(tmp_path: Path) -> None:
    """Epochs stay strictly increasing when a step arrives late; every series gains its hole."""
    c = MetricsCollector(tmp_path)
    c.log_metric("loss", 1.0, step=0)
    c.log_metric("loss", 3.0, step=2)
    c.log_weight_stats("query", {"mean": 0.1}, {"bin_edges": [0, 1, 2], "counts": [1, 2]}, step=2)
    c.log_metric("auc", 0.7, step=1)
    doc = c.to_dict()
    assert doc["epochs"] == [0, 1, 2]
    assert doc["loss"]["loss"] == [1.0, None, 3.0]
    assert doc["metrics"]["auc"] == [None, 0.7, None]
    assert doc["weight_stats"]["query"]["histogram"]["counts"] == [None, None, [1, 2]]
    check_document(doc)


def test_names_are_sorted_into_sections(tmp_path: Path) -> None:
    """'loss' names go to loss, final_/test_ and stepless values to final_metrics, the rest to metrics."""
    c = MetricsCollector(tmp_path)
    c.log_metric("regularization_loss", 0.1, step=0)
    c.log_metric("factorized_top_k/top_100_categorical_accuracy", 0.2, step=0)
    c.log_metric("test_recall_at_100", 0.075)
    c.log_metric("final_loss", 0.3, step=0)
    c.log_metric("best_epoch", 0)
    c.log_params({"optimizer": "adagrad", "epochs": np.int64(50), "lr": np.float32(0.1), "shuffle": True, "towers": ["q", "c"]})
    doc = c.to_dict()
    assert doc["loss"] == {"regularization_loss": [0.1]}
    assert doc["metrics"] == {"factorized_top_k/top_100_categorical_accuracy": [0.2]}
    assert doc["final_metrics"] == {"test_recall_at_100": 0.075, "final_loss": 0.3, "best_epoch": 0}
    assert doc["params"] == {"optimizer": "adagrad", "epochs": 50, "lr": 0.1, "shuffle": True, "towers": '["q", "c"]'}  # JSON text, not a repr


def test_non_finite_and_foreign_scalars_become_strict_json(tmp_path: Path) -> None:
    """NaN and infinities are stored as null; NumPy and TensorFlow scalars as plain numbers."""
    import tensorflow as tf

    c = MetricsCollector(tmp_path)
    c.log_metric("loss", float("nan"), step=0)
    c.log_metric("val_loss", np.float32("inf"), step=0)
    c.log_metric("auc", tf.constant(0.25), step=0)
    c.log_metric("hits", np.array([7], dtype=np.int64), step=0)
    c.log_metric("final_recall", tf.Variable(np.float64("-inf")))
    c.save()
    doc = read(tmp_path)
    assert doc["loss"] == {"loss": [None], "val_loss": [None]}
    assert doc["metrics"] == {"auc": [0.25], "hits": [7]}
    assert doc["final_metrics"] == {"final_recall": None}
    assert to_number(np.float32(0.1)) == 0.1  # shortest float32 spelling, not 0.10000000149011612
    check_document(doc)


def test_bad_values_are_refused_with_the_name(tmp_path: Path) -> None:
    """A non-scalar value, a negative step or a bad status raise ValueError naming the problem."""
    c = MetricsCollector(tmp_path)
    with pytest.raises(ValueError, match="'emb'"):
        c.log_metric("emb", np.zeros(3), step=0)
    with pytest.raises(ValueError, match="step=-1"):
        c.log_metric("loss", 1.0, step=-1)
    with pytest.raises(ValueError, match="status='done'"):
        c.save(status="done")
    with pytest.raises(ValueError, match="flush_every=0"):
        MetricsCollector(tmp_path, flush_every=0)


def test_histogram_edges_are_fixed_for_the_run(tmp_path: Path) -> None:
    """Counts are stored per epoch under one set of edges; different edges later are refused, and the refused call adds nothing."""
    c = MetricsCollector(tmp_path)
    c.log_weight_stats("query", {"mean": 0.0, "std": 1.0, "min": -1.0, "max": 1.0}, {"bin_edges": [-1, 0, 1], "counts": [3, 4]}, step=0)
    c.log_weight_stats("query", {"mean": 0.1}, {"bin_edges": [-1, 0, 1], "counts": [2, 5]}, step=1)
    with pytest.raises(ValueError, match="fixed for the run"):
        c.log_weight_stats("query", {}, {"bin_edges": [-2, 0, 2], "counts": [2, 5]}, step=2)
    c.log_gradient_stats("query", {"norm": 0.5}, step=1)
    doc = c.to_dict()
    assert doc["epochs"] == [0, 1]  # the refused epoch 2 left no row behind
    assert doc["weight_stats"]["query"]["histogram"] == {"bin_edges": [-1, 0, 1], "counts": [[3, 4], [2, 5]]}
    assert doc["weight_stats"]["query"]["std"] == [1.0, None]
    assert doc["gradient_stats"]["query"]["norm"] == [None, 0.5]
    check_document(doc)


def test_local_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    """A save creates the folder, replaces the file whole and leaves nothing else behind."""
    folder = tmp_path / "quick_tests" / "42"
    c = MetricsCollector(folder)
    c.log_metric("loss", 0.5, step=0)
    assert c.save(status="running") == str(folder / FILE)
    c.log_metric("loss", 0.4, step=1)
    c.save()
    assert os.listdir(folder) == [FILE]
    doc = read(folder)
    assert doc["status"] == "completed" and doc["loss"]["loss"] == [0.5, 0.4]
    assert doc["saved_at"].endswith("Z") and doc["schema_version"] == 1 and doc["available"] is True


def test_context_manager_saves_completed_or_failed_and_reraises(tmp_path: Path) -> None:
    """Leaving the block normally saves 'completed'; an exception saves 'failed' with the error and propagates."""
    with MetricsCollector(tmp_path / "ok") as c:
        c.log_metric("loss", 0.5, step=0)
    assert read(tmp_path / "ok")["status"] == "completed"

    with pytest.raises(RuntimeError, match="boom"):
        with MetricsCollector(tmp_path / "bad") as c:
            c.log_metric("loss", 0.5, step=0)
            raise RuntimeError("boom")
    doc = read(tmp_path / "bad")
    assert doc["status"] == "failed" and doc["error"] == "RuntimeError: boom" and doc["epochs"] == [0]


def test_resume_continues_the_existing_file(tmp_path: Path) -> None:
    """resume=True keeps the earlier epochs, params and histogram edges; a re-logged epoch replaces its whole row, never repeated."""
    first = MetricsCollector(tmp_path)
    first.log_params({"epochs": 4})
    for epoch in range(2):
        first.log_metric("loss", float(epoch), step=epoch)
        first.log_weight_stats("query", {"mean": 0.0}, {"bin_edges": [-1, 0, 1], "counts": [1, 1]}, step=epoch)
    first.save(status="failed", error="preempted")

    second = MetricsCollector(tmp_path, resume=True)
    assert second.epochs == [0, 1]
    assert second.histogram_edges("weight_stats", "query") == [-1, 0, 1]
    second.log_metric("loss", 10.0, step=1)  # Keras re-ran epoch 1 from its backup
    second.log_metric("loss", 2.0, step=2)
    second.save()
    doc = read(tmp_path)
    assert doc["epochs"] == [0, 1, 2]
    assert doc["loss"]["loss"] == [0.0, 10.0, 2.0]
    assert doc["params"] == {"epochs": 4} and doc["status"] == "completed" and "error" not in doc
    # Epoch 1 was run again: the earlier attempt's histogram for it is gone with its row.
    assert doc["weight_stats"]["query"]["histogram"]["counts"] == [[1, 1], None, None]
    check_document(doc)


def test_resume_without_a_file_starts_a_new_one(tmp_path: Path) -> None:
    """resume=True on an empty folder is a fresh run, not an error."""
    c = MetricsCollector(tmp_path / "new", resume=True)
    assert c.epochs == []
    c.log_metric("loss", 1.0, step=0)
    c.save()
    assert read(tmp_path / "new")["epochs"] == [0]


def test_resume_refuses_a_misaligned_file(tmp_path: Path) -> None:
    """Appending to a corrupt file would make it worse: entering the block raises ValueError, and so does any later use."""
    original = json.dumps({"epochs": [0, 1, 2], "loss": {"loss": [1.0]}})  # not a ragged last row: refused
    (tmp_path / FILE).write_text(original)
    c = MetricsCollector(tmp_path, resume=True)
    with pytest.raises(ValueError, match="'loss.loss' has 1 entries for 3 epochs"), c:
        pass  # never reached: the file is read (and refused) on entering
    with pytest.raises(ValueError, match="'loss.loss' has 1 entries for 3 epochs"):
        c.log_metric("loss", 0.5, step=2)
    assert (tmp_path / FILE).read_text() == original


def test_resume_reads_the_file_on_entering_not_in_init(tmp_path: Path) -> None:
    """resume=True does no I/O in __init__: the file is read when the with block starts (or at first use)."""
    MetricsCollector(tmp_path / "never-created", resume=True)  # no folder to read, no error: nothing was read
    (tmp_path / FILE).write_text(json.dumps({"epochs": [0], "loss": {"loss": [1.0]}}))
    c = MetricsCollector(tmp_path, resume=True)
    # Replaced after construction and before entering: the collector continues this version.
    (tmp_path / FILE).write_text(json.dumps({"epochs": [0, 1], "loss": {"loss": [1.0, 0.8]}}))
    with c:
        assert c.epochs == [0, 1]
        c.log_metric("loss", 0.6, step=2)
    assert read(tmp_path)["loss"]["loss"] == [1.0, 0.8, 0.6]

    lazy = MetricsCollector(tmp_path, resume=True)  # without a with block, the first use reads it
    assert lazy.histogram_edges("weight_stats", "query") is None and lazy.epochs == [0, 1, 2]


def test_resume_reads_nan_and_infinity_tokens_as_null(tmp_path: Path) -> None:
    """A file from the plan's sketch (json.dumps' NaN/Infinity tokens, 1e999) resumes with those values as null, and is saved as strict JSON."""
    sketch = json.dumps(  # json.dumps' default allow_nan=True, as the plan's sketch wrote
        {"epochs": [0, 1], "loss": {"loss": [0.5, float("nan")], "val_loss": [float("inf"), 0.7]},
         "final_metrics": {"final_loss": float("-inf")}, "params": {"lr": float("nan")}}
    ).replace("0.7", "1e999")
    assert "NaN" in sketch and "-Infinity" in sketch and "1e999" in sketch
    (tmp_path / FILE).write_text(sketch)
    with MetricsCollector(tmp_path, resume=True) as c:
        assert c.epochs == [0, 1]
        c.log_metric("loss", 0.4, step=2)
    doc = read(tmp_path)  # strict: no NaN/Infinity token left
    assert doc["loss"] == {"loss": [0.5, None, 0.4], "val_loss": [None, None, None]}
    assert doc["final_metrics"] == {"final_loss": None} and doc["params"] == {"lr": None}
    check_document(doc)


def test_periodic_flush_saves_running(tmp_path: Path) -> None:
    """maybe_flush saves with status 'running' once flush_every seconds have passed, not before."""
    c = MetricsCollector(tmp_path, flush_every=3600)
    c.log_metric("loss", 1.0, step=0)
    assert c.maybe_flush() is False and not (tmp_path / FILE).exists()
    c.flush_every = 1e-9
    assert c.maybe_flush() is True
    assert c.wait_for_flush(timeout=30)
    assert read(tmp_path)["status"] == "running"


def test_fifty_epochs_of_140_metrics_stay_small(tmp_path: Path) -> None:
    """The largest expected file (50 epochs x 140 metrics, 4 histograms) is well under 500 KB."""
    rng = np.random.default_rng(0)
    c = MetricsCollector(tmp_path)
    edges = list(np.linspace(-1, 1, 51))
    for epoch in range(50):
        c.log_metrics({f"metric_{i}": np.float32(rng.random()) for i in range(140)}, step=epoch)
        for section, tower in (("weight", "query"), ("weight", "candidate"), ("gradient", "query"), ("gradient", "candidate")):
            getattr(c, f"log_{section}_stats")(tower, {"mean": 0.0}, {"bin_edges": edges, "counts": rng.integers(0, 10**6, 50)}, step=epoch)
    data = dumps(c.to_dict())
    assert len(data) < 500_000
    check_document(json.loads(data))


def test_the_package_stays_inside_its_boundaries() -> None:
    """Importing the collector loads no TensorFlow; the callbacks load neither psycopg2, functions_framework nor the function code."""
    root = Path(__file__).resolve().parents[1]
    script = (
        "import sys\n"
        "from trainer_callbacks import MetricsCollector\n"
        "assert 'tensorflow' not in sys.modules, 'the collector imported TensorFlow'\n"
        "from trainer_callbacks import MetricsCallback, WeightNormCallback, WeightStatsCallback, GradientStatsCallback\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg2', 'functions_framework', 'ingest', 'metrics_ingest'))\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(root / "trainer_callbacks" / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd="/", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def earlier_attempt(folder: Path, epochs: int = 3) -> None:
    """What a preempted first attempt left: ``epochs`` epochs, a histogram, params, status failed."""
    first = MetricsCollector(folder)
    first.log_params({"epochs": 10})
    for epoch in range(epochs):
        first.log_metric("loss", float(epoch), step=epoch)
        first.log_weight_stats("query", {"mean": 0.0}, {"bin_edges": [-1, 0, 1], "counts": [1, 1]}, step=epoch)
    first.save(status="failed", error="preempted")


def test_training_past_epoch_0_continues_the_file_by_default(tmp_path: Path) -> None:
    """With the default constructor, training that starts at epoch 2 reads the file once, keeps its epochs, re-applies what was logged before, and replaces the re-run epoch's row."""
    c = MetricsCollector(tmp_path)  # constructed before the file exists: nothing is read until training starts
    earlier_attempt(tmp_path)
    with c:
        c.log_params({"batch_size": 32})  # before fit(): kept on top of the continued file
        c.training_started(2)  # what the callbacks report when BackupAndRestore restored epoch 2
        (tmp_path / FILE).write_text(json.dumps({"epochs": [7], "loss": {"loss": [7.0]}}))
        c.training_started(5)  # a second fit() in the same run: the file is not read again
        c.log_metric("loss", 20.0, step=2)
        c.log_metric("loss", 30.0, step=3)
    doc = read(tmp_path)
    assert doc["epochs"] == [0, 1, 2, 3] and doc["loss"]["loss"] == [0.0, 1.0, 20.0, 30.0]
    assert doc["params"] == {"epochs": 10, "batch_size": 32}
    assert doc["weight_stats"]["query"]["histogram"]["counts"] == [[1, 1], [1, 1], None, None]  # row 2 replaced whole
    assert doc["status"] == "completed" and "error" not in doc
    check_document(doc)


def test_training_from_epoch_0_replaces_the_file_by_default(tmp_path: Path) -> None:
    """With the default constructor, training from epoch 0 is a new run: the earlier attempt's file is replaced, not read."""
    earlier_attempt(tmp_path, epochs=5)
    with MetricsCollector(tmp_path) as c:
        c.training_started(0)
        c.log_metric("loss", 9.0, step=0)
    doc = read(tmp_path)
    assert doc["epochs"] == [0] and doc["loss"]["loss"] == [9.0]
    assert doc["params"] == {} and doc["weight_stats"] == {}


def test_resume_false_and_true_still_force_either_way(tmp_path: Path) -> None:
    """resume=False never reads (even past epoch 0, even a corrupt file); resume=True continues even from epoch 0."""
    (tmp_path / FILE).write_text('{"epochs": [0, 1], "loss": {"loss": [1.0]}}')  # cannot be continued
    with MetricsCollector(tmp_path, resume=False) as c:
        c.training_started(4)
        c.log_metric("loss", 4.0, step=4)
    assert read(tmp_path)["epochs"] == [4]
    with MetricsCollector(tmp_path, resume=True) as c:
        c.training_started(0)
        c.log_metric("loss", 0.5, step=0)
    assert read(tmp_path)["epochs"] == [0, 4]
    with pytest.raises(ValueError, match="resume='auto'"):
        MetricsCollector(tmp_path, resume="auto")


def test_a_failure_before_training_keeps_the_earlier_attempts_epochs(tmp_path: Path) -> None:
    """A restarted job that dies before fit() (data not found) saves 'failed' on top of the earlier attempt's file, not over it."""
    earlier_attempt(tmp_path)
    with pytest.raises(FileNotFoundError), MetricsCollector(tmp_path) as c:
        c.log_param("batch_size", 32)
        raise FileNotFoundError("gs://data/train-*.tfrecord")
    doc = read(tmp_path)
    assert doc["epochs"] == [0, 1, 2] and doc["params"] == {"epochs": 10, "batch_size": 32}
    assert doc["status"] == "failed" and "train-" in doc["error"]
    check_document(doc)


def test_a_file_that_cannot_be_continued_stops_training_and_is_kept(tmp_path: Path) -> None:
    """Past epoch 0 with a file that cannot be continued: training_started raises; the save leaves the file as it was and this run's data in the fallback copy."""
    original = '{"epochs": [0, 1, 2], "loss": {"loss": [1.0]}}'
    (tmp_path / FILE).write_text(original)
    c = MetricsCollector(tmp_path, fallback_dir=tmp_path / "fallback")
    c.log_param("batch_size", 32)
    with pytest.raises(ValueError, match="'loss.loss' has 1 entries for 3 epochs") as caught:
        c.training_started(2)
    assert any("must be read to be continued" in note for note in caught.value.__notes__)
    with pytest.raises(MetricsSaveError, match="could not read .* to continue it") as saved:
        c.save(status="failed", error=caught.value)
    assert (tmp_path / FILE).read_text() == original
    kept = check_strict_json(Path(saved.value.fallback_path).read_bytes())
    assert str(saved.value.fallback_path) in str(saved.value)
    assert kept["params"] == {"batch_size": 32} and kept["status"] == "failed"


def test_epochs_an_earlier_attempt_never_saved_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Training restored at epoch 4 over a file with epochs 0-1 (the attempt was killed before saving 2-3) warns, naming the missing epochs."""
    earlier_attempt(tmp_path, epochs=2)
    with caplog.at_level("WARNING", logger="trainer_callbacks"):
        MetricsCollector(tmp_path).training_started(4)
        MetricsCollector(tmp_path / "none").training_started(2)
        MetricsCollector(tmp_path).training_started(2)  # nothing missing: no warning
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2
    assert "no record of 2 earlier epoch(s) (2, 3)" in warnings[0] and "flush_every" in warnings[0]
    assert "no record of 2 earlier epoch(s) (0, 1)" in warnings[1]


def test_a_failed_read_keeps_what_was_logged_for_the_next_try(tmp_path: Path) -> None:
    """When reading the file to continue fails and a later try succeeds, what was logged before training is still applied on top."""
    (tmp_path / FILE).write_text('{"epochs": [0, 1, 2], "loss": {"loss": [1.0]}}')
    c = MetricsCollector(tmp_path)
    c.log_param("batch_size", 32)
    with pytest.raises(ValueError, match="entries for 3 epochs"):
        c.training_started(2)
    (tmp_path / FILE).write_text('{"epochs": [0, 1, 2], "loss": {"loss": [1.0, 0.9, 0.8]}}')  # repaired
    c.training_started(2)
    assert c.to_dict()["params"] == {"batch_size": 32} and c.epochs == [0, 1]
