"""``metrics-ingest report``: its sources (files, folders, gs://, QuickTest rows), its errors, the page's shape."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ingest.objects import ObjectRef
from ingest.pipeline import ingest_object
from metrics_ingest.cli import main
from metrics_ingest.report import run_from_bytes
from tests.support.documents import v1_document
from tests.support.platform_db import Artifacts, PlatformDb
from tests.support.report_corpus import write_export_folder


def _page(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("metrics-ingest report: error: ")
    return err


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: _write(d / "a.json", '{"epochs": [0], "loss": {"loss": ["x"]}}'),
         r"a\.json is not a metrics document: at \$\.loss\.loss\[0\]: expected number or null, got a string"),
        (lambda d: _write(d / "b.json", '{"epochs": [0, 1], "loss": {"loss": [1]}}'),
         r"is not a metrics document: loss\.loss has 1 values for 2 epochs"),
        (lambda d: _write(d / "c.json", "<html>not json</html>"), r"is not a metrics document: the file is not JSON"),
        (lambda d: d / "missing.json", r"missing\.json: no such file or folder"),
        (lambda d: (d / "empty").mkdir() or d / "empty", r"empty: no training_metrics\.json in this folder or below it"),
    ],
    ids=["wrong-type", "misaligned", "not-json", "missing-file", "empty-folder"],
)
def test_bad_local_source_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], make, message: str) -> None:
    """A file that is not a metrics document (naming the field), a missing file or an empty folder: one line, exit 2."""
    source = make(tmp_path)
    assert main(["report", str(source), "-o", str(tmp_path / "r.html")]) == 2
    assert re.search(message, _one_line_error(capsys))
    assert not (tmp_path / "r.html").exists()


def test_no_source_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """Neither SOURCE nor --quicktest: exit 2 saying what to give."""
    assert main(["report"]) == 2
    assert "give at least one SOURCE or --quicktest ID" in _one_line_error(capsys)


def test_page_is_self_contained_and_within_budget(tmp_path: Path) -> None:
    """The page refers to nothing outside itself (no src, no external href, no url()), and the
    benchmark's run (50 epochs x 140 metrics, 4 histograms x 50 bins) makes a page under 1.5 MB."""
    doc = v1_document(50, metrics=70, bins=50)
    doc["metrics"].update({f"val_{k}": v for k, v in doc["metrics"].items()})
    out = tmp_path / "r.html"
    assert main(["report", str(_write(tmp_path / "run" / "training_metrics.json", json.dumps(doc))), "-o", str(out)]) == 0
    text = _page(out)
    assert out.stat().st_size <= 1.5e6
    assert not re.search(r"""<(?:script|img|link|iframe)[^>]*\s(?:src|href)\s*=""", text, re.I)
    assert not re.search(r"""\shref\s*=\s*(?!["']?#)""", text, re.I)
    assert not re.search(r"url\(|@import|@font-face", text, re.I)
    assert "The MIT License" in text  # uPlot's licence travels with it


def test_non_finite_tokens_are_kept_apart_from_nulls() -> None:
    """NaN, Infinity, -Infinity and an overflowing literal become null in the document and are
    listed as non-finite by position; a plain null is not."""
    text = b'{"epochs": [0, 1, 2, 3, 4], "loss": {"loss": [NaN, null, Infinity, -Infinity, 1e999]}, "final_metrics": {"f": NaN}}'
    run = run_from_bytes(text, label="r")
    assert run.document["loss"]["loss"] == [None] * 5
    assert run.non_finite == {("loss", "loss"): [(0, "NaN"), (2, "Infinity"), (3, "-Infinity"), (4, "Infinity")]}
    assert run.final_non_finite == {"f": "NaN"}


def test_export_folder_is_one_section_per_run_with_its_mlflow_facts(tmp_path: Path) -> None:
    """An export-mlflow --output-dir folder: every metrics file under it is a run, shown with its MLflow facts."""
    folder = write_export_folder(tmp_path / "review")
    second = folder / "ml-artifacts" / "quick_tests" / "8" / "training_metrics.json"
    _write(second, json.dumps(v1_document(3)))
    out = tmp_path / "r.html"
    assert main(["report", str(folder), "-o", str(out)]) == 0
    text = _page(out)
    assert text.count('<article class="run"') == 2
    assert "qt-7-retrieval (quick_tests/7)" in text and "quick_tests/8" in text
    assert "0123456789abcdef0123456789abcdef" in text and "mlflow.user=ds" in text


def test_gcs_object_or_folder_shows_its_generation(artifacts: Artifacts, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """gs://BUCKET/OBJECT and gs://BUCKET/FOLDER read the object through the emulator and show its
    generation; a missing object is one line, exit 2."""
    resource = artifacts.upload("quick_tests/report-gcs", json.dumps(v1_document(4)).encode())
    out = tmp_path / "r.html"
    for uri in ("gs://ml-artifacts/quick_tests/report-gcs", f"gs://ml-artifacts/{resource['name']}"):
        assert main(["report", uri, "-o", str(out)]) == 0
        text = _page(out)
        assert f"gs://ml-artifacts/{resource['name']}" in text and resource["generation"] in text
    capsys.readouterr()
    assert main(["report", "gs://ml-artifacts/quick_tests/nothing-here", "-o", str(out)]) == 2
    assert "no such object (gs://ml-artifacts/quick_tests/nothing-here/training_metrics.json)" in _one_line_error(capsys)


def test_quicktest_row_shows_source_generation_and_latest_ingestion(
    platform_db: PlatformDb, artifacts: Artifacts, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--quicktest ID reads the row the function filled, with its source object, generation and the
    latest ingestion outcome; a missing row or an empty history is one line, exit 2."""
    quicktest_id, folder = platform_db.new_quicktest()
    resource = artifacts.upload(folder, json.dumps(v1_document(3, status="failed") | {"error": "boom"}).encode())
    result = ingest_object(ObjectRef.from_resource(resource), settings=platform_db.settings(), event_id="evt-report")
    assert result.outcome == "ingested"
    monkeypatch.setenv("DATABASE_URL", platform_db.url)
    out = tmp_path / "r.html"
    assert main(["report", "--quicktest", str(quicktest_id), "-o", str(out)]) == 0
    text = _page(out)
    assert f"QuickTest {quicktest_id}" in text
    assert f"gs://ml-artifacts/{resource['name']}" in text
    assert f"ingested (generation {resource['generation']}" in text
    assert '<pre class="error">boom</pre>' in text
    empty_id, _ = platform_db.new_quicktest()
    capsys.readouterr()
    assert main(["report", "--quicktest", str(empty_id), "-o", str(out)]) == 2
    assert "the row has no training history yet" in _one_line_error(capsys)
    assert main(["report", "--quicktest", "999999999", "-o", str(out)]) == 2
    assert "--quicktest 999999999: no such row in ml_platform_quicktest" in _one_line_error(capsys)
