"""One writer: chief detection from TF_CONFIG, Vertex AI's CLUSTER_SPEC and the strategy; a non-chief writes nothing anywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trainer_callbacks import MetricsCollector
from trainer_callbacks._cluster import role_from_env


def tf_config(cluster: dict, kind: str, index: int) -> dict[str, str]:
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})}


WORKERS = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
WITH_CHIEF = {"chief": ["127.0.0.1:0"], "worker": ["127.0.0.1:1", "127.0.0.1:2"], "ps": ["127.0.0.1:3"]}


@pytest.mark.parametrize(("env", "chief"), [
    ({}, True),
    (tf_config(WORKERS, "worker", 0), True),
    (tf_config(WORKERS, "worker", 1), False),
    (tf_config(WITH_CHIEF, "chief", 0), True),
    (tf_config(WITH_CHIEF, "worker", 0), False),  # a chief in the cluster makes worker 0 an ordinary worker
    (tf_config(WITH_CHIEF, "ps", 0), False),
    (tf_config({**WORKERS, "evaluator": ["127.0.0.1:9"]}, "evaluator", 0), False),
    ({"TF_CONFIG": json.dumps({"task": {"type": "worker", "index": 1}})}, True),  # no cluster: one process
    ({"CLUSTER_SPEC": json.dumps({"cluster": {"workerpool0": ["a:1"], "workerpool1": ["b:1", "c:1"]},
                                  "task": {"type": "workerpool0", "index": 0}})}, True),
    ({"CLUSTER_SPEC": json.dumps({"cluster": {"workerpool0": ["a:1"], "workerpool1": ["b:1", "c:1"]},
                                  "task": {"type": "workerpool1", "index": 0}})}, False),
    ({**tf_config(WITH_CHIEF, "worker", 1),
      "CLUSTER_SPEC": json.dumps({"cluster": {"workerpool0": ["a:1"]}, "task": {"type": "workerpool0", "index": 0}})}, False),
])
def test_the_chief_is_found_in_each_environment_form(env: dict[str, str], chief: bool) -> None:
    """TF_CONFIG (chief, else worker 0; ps and evaluator never), then Vertex AI's CLUSTER_SPEC (workerpool0), else the one process."""
    assert role_from_env(env).chief is chief


@pytest.mark.parametrize("env", [{"TF_CONFIG": "{not json"}, {"TF_CONFIG": json.dumps({"cluster": WORKERS, "task": {}})}])
def test_a_broken_cluster_configuration_is_refused_with_the_variable(env: dict[str, str]) -> None:
    """A TF_CONFIG that is not JSON, or has a cluster but no task type, raises naming the variable."""
    with pytest.raises(ValueError, match="TF_CONFIG"):
        role_from_env(env)


def test_a_non_chief_writes_nothing_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker 1 of a cluster: saves, flushes, the resume read and the exit save touch no file, no fallback or temp folder."""
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": WORKERS, "task": {"type": "worker", "index": 1}}))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "training_metrics.json").write_text('{"epochs": [0, 1], "loss": {"loss": [1.0]}}')  # unreadable
    c = MetricsCollector(tmp_path / "run", flush_every=1e-9, fallback_dir=tmp_path / "fallback")
    assert not c.is_chief
    with c:
        c.training_started(3)  # a chief would read (and refuse) the file: a non-chief reads nothing
        c.log_metric("loss", 0.5, step=3)
        assert c.maybe_flush() is False
    c._save_at_exit(None)
    assert os.listdir(tmp_path / "run") == ["training_metrics.json"]
    assert not (tmp_path / "fallback").exists() and not (tmp_path / "tmp").exists()
    assert c.to_dict()["epochs"] == [3]  # it still collected, like every worker
