"""Which process of a training cluster writes the file: the chief, and only it.

Read from the environment, as TensorFlow and Vertex AI set it:

- ``TF_CONFIG`` (``{"cluster": {...}, "task": {"type", "index"}}``): a cluster with a
  ``chief`` task has it as the writer (worker 0 is then an ordinary worker); without
  one, ``worker`` 0 is (MultiWorkerMirroredStrategy's rule). ``ps`` and
  ``evaluator`` tasks never write.
- ``CLUSTER_SPEC`` (Vertex AI's own form, ``{"cluster": {"workerpool0": [...], ...},
  "task": {"type": "workerpool0", "index": 0}}``): the primary pool,
  ``workerpool0``, index 0.
- Neither set, or a one-task cluster: this process writes.

The distribution strategy in scope, when there is one, has the last word
(``strategy.extended.should_checkpoint``, see ``keras_compat``).

Example::

    role_from_env({"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}'})
    # Role(chief=False, task='worker:1', source='TF_CONFIG')
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("trainer_callbacks")


@dataclasses.dataclass(frozen=True)
class Role:
    """This process's part: ``chief`` (it writes) or not, the task it is, where that was read."""

    chief: bool
    task: str = "single process"
    source: str = "no cluster configuration"


def _parse(env: Mapping[str, str], name: str) -> dict[str, Any] | None:
    text = env.get(name)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ValueError(f"the environment variable {name} is not JSON ({error}); cannot tell which worker is the chief") from None
    if not isinstance(value, dict):
        raise ValueError(f"the environment variable {name} must hold a JSON object; cannot tell which worker is the chief")
    return value


def _task(config: dict[str, Any], name: str) -> tuple[str, int]:
    task = config.get("task") or {}
    kind = task.get("type")
    try:
        index = int(task.get("index", 0))
    except (TypeError, ValueError):
        raise ValueError(f"{name}: task.index {task.get('index')!r} is not an integer") from None
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"{name}: the cluster is set but task.type is missing; cannot tell which worker is the chief")
    return kind, index


def role_from_env(env: Mapping[str, str]) -> Role:
    """This process's role, read from ``TF_CONFIG`` or Vertex AI's ``CLUSTER_SPEC`` in ``env``."""
    tf_config = _parse(env, "TF_CONFIG")
    if tf_config and tf_config.get("cluster"):
        cluster = tf_config["cluster"]
        kind, index = _task(tf_config, "TF_CONFIG")
        if "chief" in cluster or "master" in cluster:
            chief = kind in ("chief", "master") and index == 0
        else:
            chief = kind == "worker" and index == 0
        return Role(chief, f"{kind}:{index}", "TF_CONFIG")
    spec = _parse(env, "CLUSTER_SPEC")
    if spec and spec.get("cluster"):
        kind, index = _task(spec, "CLUSTER_SPEC")
        return Role(kind == "workerpool0" and index == 0, f"{kind}:{index}", "CLUSTER_SPEC")
    return Role(True)
