"""``metrics-ingest demo`` end to end, as a newcomer runs it (CI runs it too)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

from metrics_ingest.localstack.render import render_history, sparkline
from tests.support.documents import v1_document
from tests.support.localstack import REPO_ROOT, cli_command, cli_env


@pytest.mark.slow
def test_demo_trains_uploads_and_shows_the_filled_row(tmp_path: Path) -> None:
    """With no database, Docker or cloud settings, the demo starts its own stack, trains, and prints
    the row the function filled (epochs, loss curve, recall, both towers, the ingestion record)."""
    # pgserver's data folder lives outside pytest's basetemp: pytest resets that tree to 0700,
    # which the PostgreSQL server (run as another user when we are root) could not enter.
    state_root = Path(tempfile.mkdtemp(prefix="metrics-ingest-demo-"))
    try:
        _run_demo(tmp_path, state_root / "state")
    finally:
        shutil.rmtree(state_root, ignore_errors=True)


def _run_demo(tmp_path: Path, state: Path) -> None:
    result = subprocess.run(
        cli_command("demo", "--state-dir", str(state), "--epochs", "4"),
        cwd=tmp_path,  # a clean folder: nothing but the installed project
        env=cli_env(PYTHONPATH=":".join(str(REPO_ROOT / p) for p in ("functions", ".", "trainer_callbacks/src"))),
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for step in ("starting PostgreSQL", "starting the GCS emulator", "starting the function", "importing TensorFlow"):
        assert re.search(rf"{step}.*\.\.\. ok", out), step
    assert "training epoch 4/4" in out
    assert re.search(r"QuickTest \d+ +gs://ml-artifacts/quick_tests/\d+", out)
    assert re.search(r"4 epochs \(epochs \d+\.\.\d+\)", out)
    assert re.search(r"^\s+loss\s+[\d.]+ -> [\d.]+", out, re.MULTILINE)
    assert re.search(r"^\s+val_loss .*\(2 of 4 epochs\)", out, re.MULTILINE)  # validation_freq=2 gaps
    assert re.search(r"^\s+test_recall_at_10\s+0\.\d+", out, re.MULTILINE)
    assert re.search(r"^\s+query\s+[-\d.e]+", out, re.MULTILINE)
    assert re.search(r"^\s+candidate\s+[-\d.e]+", out, re.MULTILINE)
    assert re.search(r"record #\d+: ingested", out)
    assert "Where to look next" in out
    assert re.search(r"^report of this run: /\S+/report\.html ", out, re.MULTILINE)
    # Everything it started is gone: no PostgreSQL left on its data folder.
    leftovers = [
        p.info for p in psutil.process_iter(["name", "cmdline"])
        if p.info["cmdline"] and any(str(state) in part for part in p.info["cmdline"])
    ]
    assert leftovers == []


def test_row_printer_shows_curves_gaps_towers_and_the_record() -> None:
    """The printer summarises a history at a glance: first -> last with a sparkline, how many epochs
    a validation series covers, every tower's last-epoch statistics, and the ingestion record."""
    doc = v1_document(4, seed=5)
    doc["loss"]["val_loss"] = [None, 0.5, None, 0.25]
    doc["source"] = {"bucket": "b", "object": "quick_tests/9/training_metrics.json", "generation": "12"}
    record = {"id": 7, "outcome": "ingested", "size_bytes": 2048, "epochs": 4, "duration_ms": 12.5, "event_id": "e1"}
    text = render_history(doc, quicktest_id=9, folder="gs://b/quick_tests/9", ingestion=record)
    assert text.splitlines()[0] == "QuickTest 9  gs://b/quick_tests/9"
    assert "4 epochs (epochs 0..3)" in text
    assert re.search(r"val_loss\s+0\.5 -> 0\.25\s+ █ ▁  \(2 of 4 epochs\)", text)
    for tower in ("query", "candidate"):
        assert re.search(rf"^\s+{tower}\s+[\d.]+", text, re.MULTILINE)
    assert "from gs://b/quick_tests/9/training_metrics.json#12" in text
    assert "record #7: ingested, 2.0 KiB, 4 epochs, 12 ms, event e1" in text
    assert sparkline([3, 2, 1, None, 0], ascii_only=True) == "@*- _"
