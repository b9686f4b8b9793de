"""The statistics' fast CPU formulation is exact, is the one used, and never makes TensorFlow warn about retracing."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.support import trainer_models as tm
from trainer_callbacks import GradientStatsCallback, MetricsCallback, MetricsCollector, WeightNormCallback, WeightStatsCallback
from trainer_callbacks import _xla_stats, stats

pytestmark = pytest.mark.slow
BINS = 50


def awkward_tensors() -> list[tf.Tensor]:
    """Values on every bin edge and next to it, beyond the range, NaN and infinities; sizes not a multiple of 1024."""
    rng = np.random.default_rng(0)
    edges = np.linspace(-0.5, 0.5, BINS + 1).astype(np.float32)
    near = np.concatenate([edges, np.nextafter(edges, np.float32(-1)), np.nextafter(edges, np.float32(1))])
    wide = rng.normal(0, 0.3, size=(3001, 7)).astype(np.float32)
    odd = np.concatenate([near, [np.nan, np.inf, -np.inf, 3.0, -3.0, np.nan]]).astype(np.float32)
    return [tf.constant(wide), tf.constant(odd), tf.constant(rng.normal(0, 0.1, size=(64, 32)).astype(np.float32))]


def test_the_xla_partials_equal_tensorflows_histogram_and_numpys_sums() -> None:
    """Counts equal histogram_fixed_width's bin for bin (NaN left out), sums and extremes equal NumPy's."""
    tensors = awkward_tensors()
    value_range = tf.constant([-0.5, 0.5])
    fused = tf.function(lambda *ts: _xla_stats.tower_partials(ts, value_range, BINS), jit_compile=True)(*tensors).numpy()
    plain = tf.function(lambda *ts: stats.tower_partials(ts, value_range, BINS))(*tensors).numpy()
    finite = [t.numpy()[~np.isnan(t.numpy())] for t in tensors]
    expected = sum(tf.histogram_fixed_width(f, value_range, nbins=BINS).numpy() for f in finite)
    np.testing.assert_array_equal(fused[5:], expected)
    np.testing.assert_array_equal(plain[5:], expected)
    assert fused[0] == sum(t.numpy().size for t in tensors)
    assert np.isnan(fused[1]) and np.isnan(plain[1])  # a NaN sum: the document stores null
    clean = awkward_tensors()[0::2]
    fused = tf.function(lambda *ts: _xla_stats.tower_partials(ts, value_range, BINS), jit_compile=True)(*clean).numpy()
    values = np.concatenate([t.numpy().ravel().astype(np.float64) for t in clean])
    np.testing.assert_allclose(fused[1:3], [values.sum(), np.square(values).sum()], rtol=1e-6)
    assert (fused[3], fused[4]) == (values.min(), values.max())


def test_training_uses_the_xla_program_and_never_warns_about_retracing(tmp_path: Path) -> None:
    """Two fits reusing the callbacks, then two new models: no 'triggered tf.function retracing' in TensorFlow's log."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.addHandler(handler)
    try:
        model = tm.two_tower_keras()
        probe = next(iter(tm.keras_dataset()))
        with MetricsCollector(tmp_path / "a") as collector:
            callbacks = [MetricsCallback(collector), WeightNormCallback(collector), WeightStatsCallback(collector),
                         GradientStatsCallback(collector, probe)]
            for _ in range(2):
                model.fit(tm.keras_dataset(), epochs=5, verbose=0, callbacks=callbacks)
        summary = collector.shared[("weight_summary", id(model))]
        for index in range(2):  # a small sweep: each new model's functions trace once
            with MetricsCollector(tmp_path / f"sweep{index}") as other:
                tm.two_tower_keras().fit(tm.keras_dataset(), epochs=3, verbose=0, callbacks=[
                    WeightNormCallback(other), WeightStatsCallback(other), GradientStatsCallback(other, probe)])
    finally:
        tf_logger.removeHandler(handler)
    retracing = [r.getMessage()[:200] for r in records if "retracing" in r.getMessage()]
    assert retracing == []
    assert summary.program._fused is not None and summary.program.calls == 10  # the XLA program, kept for the second fit
    assert callbacks[3]._program.calls == 10  # the gradient program too
