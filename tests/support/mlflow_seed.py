"""Seed runs into a real MLflow tracking server through the real MLflow client.

Run by the MLflow virtual environment's Python (``.venv-mlflow``), not the
test process: ``python mlflow_seed.py TRACKING_URI < spec.json`` prints the
run ids as a JSON list. The spec is a list of runs::

    {"experiment": "quicktests", "name": "qt-1", "start_time": 1700000000000,
     "end_time": 1700000600000, "status": "FINISHED", "delete": false,
     "params": {"batch_size": "2048"}, "tags": {"platform.quicktest": "1"},
     "metrics": [["loss", 0.5, 0, 1700000010000], ["loss", "NaN", 1, ...], ...]}

Metrics are logged one epoch (step) at a time, as the old Keras callbacks
did at each epoch end (one ``log_batch`` per step, at most 1,000 per call);
"NaN", "Infinity" and "-Infinity" stand for the non-finite floats.
"""

from __future__ import annotations

import json
import sys
from itertools import groupby

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

SPECIAL = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def main() -> None:
    client = MlflowClient(sys.argv[1])
    experiments: dict[str, str] = {}
    run_ids = []
    for spec in json.load(sys.stdin):
        name = spec.get("experiment", "quicktests")
        if name not in experiments:
            found = client.get_experiment_by_name(name)
            experiments[name] = found.experiment_id if found else client.create_experiment(name)
        run = client.create_run(experiments[name], start_time=spec.get("start_time"), run_name=spec.get("name"),
                                tags=spec.get("tags") or {})
        run_id = run.info.run_id
        params = [Param(k, str(v)) for k, v in (spec.get("params") or {}).items()]
        for start in range(0, len(params), 100):
            client.log_batch(run_id, params=params[start : start + 100])
        rows = sorted(spec.get("metrics") or [], key=lambda m: m[2])
        for _, group in groupby(rows, key=lambda m: m[2]):
            metrics = [Metric(k, SPECIAL.get(v, v) if isinstance(v, str) else float(v), int(ts), int(step))
                       for k, v, step, ts in group]
            for start in range(0, len(metrics), 1000):
                client.log_batch(run_id, metrics=metrics[start : start + 1000])
        client.set_terminated(run_id, status=spec.get("status", "FINISHED"), end_time=spec.get("end_time"))
        if spec.get("delete"):
            client.delete_run(run_id)
        run_ids.append(run_id)
    print()  # after MLflow's own "View run" lines: the ids are the last line
    json.dump(run_ids, sys.stdout)


if __name__ == "__main__":
    main()
