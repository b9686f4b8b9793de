"""``metrics-ingest demo``: the whole product on your laptop, in one command.

Starts the local stack (PostgreSQL from pip, the GCS emulator, the function
under functions-framework, the Eventarc bridge), creates a QuickTest row,
trains a small two-tower model with the four trainer callbacks writing to the
emulator bucket, then - with no further call - waits for the function to fill
the row and prints what the row holds. No cloud account, Docker or system
PostgreSQL; about 15 seconds on two cores (TensorFlow import and training included).

Example::

    $ metrics-ingest demo
    $ metrics-ingest demo --epochs 4 --state-dir /tmp/mi-demo
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from metrics_ingest.commands import bucket_name, describe, positive_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train a small model on the local stack and show the row the function filled",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--state-dir", default=".metrics-ingest", help="the stack's folder (default .metrics-ingest)")
    parser.add_argument("--bucket", type=bucket_name, default="ml-artifacts", help="emulator bucket (default ml-artifacts)")
    parser.add_argument("--epochs", type=positive_int, default=8, help="training epochs (default 8)")
    parser.add_argument(
        "--timeout", type=positive_float, default=60.0, help="seconds to wait for the function to fill the row (default 60)"
    )
    parser.add_argument(
        "--database-url", default=None, help="use this PostgreSQL database instead of starting one with pgserver"
    )
    parser.set_defaults(func=run)


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send file descriptor 2 to ``path`` for a while: TensorFlow's C++ start-up
    banner (absl, oneDNN, CUDA probing) is written there before any Python
    logging setting applies."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def run(args: argparse.Namespace) -> int:
    from metrics_ingest.localstack.stack import StackError

    try:
        return _run(args)
    except (StackError, TimeoutError) as exc:
        print(f"\nmetrics-ingest demo: error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from metrics_ingest.localstack.stack import LocalStack, Steps, fetch_ingestions
    from metrics_ingest.localstack.render import render_history

    out = sys.stdout
    steps = Steps(out)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    print("metrics-ingest demo: the trainer writes one file, the function fills the QuickTest row.\n", file=out)
    with LocalStack(
        args.state_dir, bucket=args.bucket, database_url=args.database_url, persist_objects=False, steps=steps
    ) as stack:
        timings["stack start"] = time.perf_counter() - started
        # The trainer's collector reaches the emulator through the standard switch.
        os.environ.update(stack.env())
        quicktest_id, folder = stack.add_quicktest(name="demo two-tower")
        print(f"created QuickTest {quicktest_id} with gcs_artifacts_path {folder}", file=out)

        mark = time.perf_counter()
        with steps("importing TensorFlow"), _stderr_to(stack.state_dir / "tensorflow.log"):
            import keras

            from metrics_ingest.localstack import demo_model
            from trainer_callbacks import (
                GradientStatsCallback,
                MetricsCallback,
                MetricsCollector,
                WeightNormCallback,
                WeightStatsCallback,
            )

            data = demo_model.make_data()  # the first TF op also logs from C++
        timings["TensorFlow import"] = time.perf_counter() - mark

        class EpochProgress(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                logs = logs or {}
                shown = ", ".join(f"{k} {v:.3f}" for k, v in logs.items() if "loss" in k or "recall" in k)
                print(f"  training epoch {epoch + 1}/{args.epochs}: {shown}", file=out, flush=True)

        mark = time.perf_counter()
        print(f"training a two-tower model ({args.epochs} epochs, validation every 2), metrics to {folder}", file=out)
        model = demo_model.TwoTowerModel(data.num_users, data.num_items)
        demo_model.compile_model(model)
        with MetricsCollector(folder) as collector:
            model.fit(
                data.train,
                validation_data=data.validation,
                epochs=args.epochs,
                validation_freq=2,
                shuffle=False,
                verbose=0,
                callbacks=[
                    EpochProgress(),
                    MetricsCallback(collector),
                    WeightNormCallback(collector),
                    WeightStatsCallback(collector),
                    GradientStatsCallback(collector, data.probe_batch),
                ],
            )
            collector.log_metric("test_recall_at_10", demo_model.recall_at_k(model, data, k=10))
        uploaded = time.perf_counter()
        timings["training (incl. upload)"] = uploaded - mark
        print(f"uploaded {folder}/training_metrics.json; the emulator's finalize event goes to the function", file=out)

        with steps("waiting for the function to fill the row"):
            history = stack.wait_for_history(quicktest_id, timeout=args.timeout)
            if history is None:
                raise TimeoutError(
                    f"QuickTest {quicktest_id} still empty after {args.timeout:.0f} s; see {stack.function_log}"
                )
        timings["upload to row"] = time.perf_counter() - uploaded
        source = history.get("source") or {}
        records = fetch_ingestions(stack.database_url, stack.bucket, source.get("object") or source.get("name") or "")
        print("", file=out)
        ascii_only = (getattr(out, "encoding", None) or "").lower().replace("-", "") != "utf8"
        print(
            render_history(
                history, quicktest_id=quicktest_id, folder=folder, ingestion=records[-1] if records else None,
                ascii_only=ascii_only,
            ),
            file=out,
        )
        from metrics_ingest.report import quicktest_run, write_report

        report = write_report([quicktest_run(quicktest_id, history, records[-1] if records else None,
                                             os.environ.get("QUICKTEST_TABLE") or "ml_platform_quicktest")],
                              stack.state_dir / "report.html")
        print(f"\nreport of this run: {report.resolve()} (open it in a browser; `metrics-ingest report --help`)", file=out)
        timings["total"] = time.perf_counter() - started
        print("", file=out)
        print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()), file=out)
        print(
            f"""
Where to look next:
  - keep the stack running and use it yourself:  metrics-ingest dev --state-dir {args.state_dir}
    (it prints the exports; then `metrics-ingest dev --add-row` makes a row to upload to)
  - the row:  SELECT training_history_json FROM ml_platform_quicktest WHERE id = {quicktest_id};
  - every event the function saw:  SELECT * FROM training_metrics_ingestions ORDER BY id DESC;
  - the function's JSON log lines:  {stack.function_log}
  - backfill or repair a bucket:  metrics-ingest replay gs://{stack.bucket}/quick_tests --dry-run
  - the trainer side:  trainer_callbacks/ (MetricsCollector + the four callbacks used here)""",
            file=out,
        )
    return 0
