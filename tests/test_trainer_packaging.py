"""The trainer package stands alone: a copy of its folder builds a wheel that carries the schema and py.typed, installs, imports and writes a valid file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.format_checks import SCHEMA_PATH, check_document

REPO = Path(__file__).resolve().parents[1]


def test_a_wheel_built_from_a_copy_of_the_folder_alone_works(tmp_path: Path) -> None:
    """cp -r trainer_callbacks elsewhere && pip wheel it: the wheel holds the schema (byte-identical) and py.typed; installed alone it imports and saves a valid document."""
    copy = tmp_path / "elsewhere"
    shutil.copytree(REPO / "trainer_callbacks", copy, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(copy)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("trainer_callbacks-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "trainer_callbacks/py.typed" in names
        assert archive.read("trainer_callbacks/schema/training_metrics.v1.schema.json") == SCHEMA_PATH.read_bytes()
        archive.extractall(tmp_path / "site")
    script = (
        "import json, sys, trainer_callbacks\n"
        "from trainer_callbacks import MetricsCollector\n"
        "assert trainer_callbacks.__file__.startswith(sys.argv[1]), trainer_callbacks.__file__\n"
        "c = MetricsCollector(sys.argv[2]); c.log_metric('loss', 0.5, step=0); c.log_param('layers', [64, 32]); c.save()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "site"), str(tmp_path / "run")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    check_document(json.loads((tmp_path / "run" / "training_metrics.json").read_bytes()))
