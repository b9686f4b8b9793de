"""What a run with BackupAndRestore costs in uploads: how many, how large, how long, and the function's part.

Trains the tiny two-tower model with all four callbacks and BackupAndRestore
(``save_freq="epoch"``) against the local GCS emulator, counts every finalized
metrics object (each is one upload and one function event), and times each save
the collector makes with a backup, and the function's parse-and-validate of each
version (``ingest.document.prepare``; the database write comes on top).

    .venv/bin/python bench/bench_backup_saves.py --epochs 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "functions"), str(ROOT / "trainer_callbacks" / "src")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from ingest.document import prepare

    from metrics_ingest.localstack.emulator import GcsEmulator

    finalized: list[dict] = []
    gcs = GcsEmulator(on_finalize=finalized.append).start()
    gcs.create_bucket("bench")
    os.environ["STORAGE_EMULATOR_HOST"], os.environ["GOOGLE_CLOUD_PROJECT"] = gcs.url, "bench"

    import tensorflow as tf

    from tests.support import trainer_models as tm
    from trainer_callbacks import (GradientStatsCallback, MetricsCallback, MetricsCollector, WeightNormCallback,
                                   WeightStatsCallback, _flusher)

    writes: list[tuple[bytes, float]] = []
    original = _flusher.Writer.write

    def timed(self, data, *rest, **kwargs):  # noqa: ANN001, ANN202 - instrumentation only
        started = time.perf_counter()
        result = original(self, data, *rest, **kwargs)
        writes.append((data, time.perf_counter() - started))
        return result

    _flusher.Writer.write = timed  # type: ignore[method-assign]
    data = tm.keras_dataset(256)
    probe = next(iter(data))
    with tempfile.TemporaryDirectory() as backup, MetricsCollector("gs://bench/quick_tests/1") as collector:
        tm.two_tower_keras().fit(data, epochs=args.epochs, verbose=0, callbacks=[
            tf.keras.callbacks.BackupAndRestore(backup), MetricsCallback(collector), WeightNormCallback(collector),
            WeightStatsCallback(collector), GradientStatsCallback(collector, probe)])
    gcs.stop()

    sizes = [int(o["size"]) for o in finalized if o["name"].endswith("training_metrics.json")]
    seconds = [s for _, s in writes]
    parse = []
    for body, _ in (writes[0], writes[len(writes) // 2], writes[-1]):
        started = time.perf_counter()
        prepare(body)
        parse.append((len(body), (time.perf_counter() - started) * 1000))
    print(f"epochs {args.epochs}: {len(sizes)} uploads = {len(sizes)} finalize events (function invocations)")
    print(f"  bytes per upload: first {sizes[0]:,}, last {sizes[-1]:,}, total {sum(sizes):,}")
    print(f"  upload of each save (the emulator, on this machine): median {statistics.median(seconds) * 1000:.1f} ms, "
          f"max {max(seconds) * 1000:.1f} ms")
    print("  the function's parse + validate + normalize per event: " + ", ".join(f"{n:,} B in {ms:.1f} ms" for n, ms in parse))


if __name__ == "__main__":
    main()
