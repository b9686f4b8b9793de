"""WeightStatsCallback: per-tower weight mean/std/min/max and a fixed-edge histogram."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainer_callbacks.collector import MetricsCollector
from trainer_callbacks.keras_compat import CollectorCallback, guarded
from trainer_callbacks.stats import check_strategy
from trainer_callbacks.towers import TowerSpec
from trainer_callbacks.weight_summary import WeightSummary, shared_key


def validate_histogram_args(bins: int, margin: float) -> None:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"Invalid value for argument `bins`. Received: bins={bins!r}. Expected an integer >= 1.")
    if not margin >= 1.0:
        raise ValueError(f"Invalid value for argument `margin`. Received: margin={margin!r}. Expected a number >= 1.")


class WeightStatsCallback(CollectorCallback):
    """Records each tower's weight mean, std, min, max and histogram at every epoch end.

    The statistics run as TensorFlow ops where the weights live (one compiled
    function for all towers; the weights are never copied to the host). The
    histogram has ``bins`` bins whose edges are fixed at the first epoch to a
    symmetric range ``margin`` times the largest weight magnitude; values outside
    it are counted in the end bins, so each epoch's counts sum to the number of
    weights.

    Args:
        collector: the MetricsCollector to write into.
        towers: tower name -> layer, model attribute name or variables (default:
            ``query_model``/``candidate_model`` when present, else ``model``).
        bins: histogram bins (int, default 50).
        margin: histogram range as a multiple of the first epoch's largest
            magnitude (float >= 1, default 2.0).

    Example:

    ```python
    model.fit(ds, epochs=3, callbacks=[WeightStatsCallback(collector, bins=50)])
    collector.to_dict()["weight_stats"]["query"]["histogram"]["bin_edges"]
    ```
    """

    section = "weight_stats"

    def __init__(
        self,
        collector: MetricsCollector,
        towers: Mapping[str, TowerSpec] | None = None,
        bins: int = 50,
        margin: float = 2.0,
    ) -> None:
        super().__init__(collector)
        validate_histogram_args(bins, margin)
        self.towers = towers
        self.bins = bins
        self.margin = margin
        self._summary: WeightSummary | None = None

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        # Not guarded: an unsupported strategy stops the run here, with the reason.
        # Published on the collector so a WeightNormCallback with the same towers
        # takes its norms from this summary instead of reading every weight again.
        check_strategy(self.model, type(self).__name__)
        if self._summary is not None and self._summary.reusable(self.model):
            self._summary.new_fit()  # the same model in another fit: no new trace
        else:
            self._summary = WeightSummary(self.model, self.towers, self.bins, self.margin, self.collector)
        self.collector.shared[shared_key(self.model)] = self._summary

    @guarded
    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self._summary is None:  # on_epoch_end without on_train_begin (a bench, a manual loop)
            self.on_train_begin()
        for tower, (stats, histogram) in self._summary.for_epoch(epoch).items():
            self.collector.log_weight_stats(tower, stats, histogram, step=epoch)
