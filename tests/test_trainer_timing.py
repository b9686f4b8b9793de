"""MetricsCallback's `timing` section agrees with the wall clock and with the steps Keras ran."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import pytest
import tensorflow as tf

from tests.support import trainer_models as tm
from tests.support.format_checks import check_document, check_strict_json
from trainer_callbacks import MetricsCallback, MetricsCollector

pytestmark = pytest.mark.slow
STEPS = 8  # 256 examples in batches of 32


class SlowSteps(tf.keras.callbacks.Callback):
    """Makes each step take a known minimum time, so the epochs dominate the fit's wall time."""

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        time.sleep(0.05)


def test_epoch_seconds_add_up_to_the_fit_and_rates_follow_from_them(tmp_path: Path) -> None:
    """4 epochs: the epoch seconds sum to the fit's wall time within 5%; steps and examples per second follow; memory known."""
    model = tm.two_tower_keras()
    model.fit(tm.keras_dataset(), epochs=1, verbose=0)  # trace the train step outside the timed fit
    with MetricsCollector(tmp_path) as collector:
        start = time.perf_counter()
        model.fit(tm.keras_dataset(), epochs=4, verbose=0,
                  callbacks=[MetricsCallback(collector, params={"batch_size": 32}), SlowSteps()])
        wall = time.perf_counter() - start
    doc = check_strict_json((tmp_path / "training_metrics.json").read_bytes())
    check_document(doc)
    timing = doc["timing"]
    assert sorted(timing) == ["device_peak_bytes", "epoch_seconds", "examples_per_second", "host_peak_bytes", "steps_per_second"]
    assert 0.95 <= sum(timing["epoch_seconds"]) / wall <= 1.0
    assert all(s >= STEPS * 0.05 for s in timing["epoch_seconds"])
    for seconds, rate, examples in zip(timing["epoch_seconds"], timing["steps_per_second"], timing["examples_per_second"]):
        assert rate == pytest.approx(STEPS / seconds, rel=1e-6) and examples == pytest.approx(32 * rate, rel=1e-6)
    peak_now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert all(0 < b <= peak_now for b in timing["host_peak_bytes"])
    assert timing["device_peak_bytes"] == [None] * 4  # no GPU on the test machines


def test_without_a_batch_size_examples_per_second_is_null(tmp_path: Path) -> None:
    """No batch_size in Keras's or the callback's params: examples_per_second is null, the rest is recorded."""
    with MetricsCollector(tmp_path) as collector:
        tm.two_tower_keras().fit(tm.keras_dataset(), epochs=2, verbose=0, callbacks=[MetricsCallback(collector)])
    timing = collector.to_dict()["timing"]
    assert timing["examples_per_second"] == [None, None]
    assert all(r is not None and r > 0 for r in timing["steps_per_second"]) and len(timing["epoch_seconds"]) == 2
