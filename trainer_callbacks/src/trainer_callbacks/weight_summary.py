"""The weight statistics of a model's towers, computed once per epoch and shared.

WeightStatsCallback needs each tower's count, sum, sum of squares, min, max and
histogram; WeightNormCallback needs sums of squares. Both read every weight, and
on a model with large embedding tables each pass over the weights is the cost, so
WeightStatsCallback publishes its summary on the collector (``collector.shared``)
and WeightNormCallback, when its towers are the same, takes the norms from it
instead of reading the weights again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from trainer_callbacks.collector import MetricsCollector
from trainer_callbacks._xla_stats import on_cpu
from trainer_callbacks.stats import TowerStatsProgram
from trainer_callbacks.towers import TowerSpec, resolve_towers


def shared_key(model: Any) -> tuple[str, int]:
    return ("weight_summary", id(model))


def variables_key(model: Any, towers: Mapping[str, TowerSpec] | None) -> tuple[tuple[str, tuple[int, ...]], ...] | None:
    """Which variables each tower has now (None if it cannot be told yet): a compiled program
    is reused for another ``fit`` only while this stays the same (unfreezing a layer changes it)."""
    try:
        return tuple((name, tuple(id(v) for v in group)) for name, group in resolve_towers(model, towers).items())
    except ValueError:
        return None


def fixed_ranges(collector: MetricsCollector, section: str, towers: list[str], bins: int) -> tuple[dict[str, tuple[float, float]], int]:
    """Ranges (and bin count) a resumed file already fixed, so its histograms stay comparable."""
    ranges = {}
    for tower in towers:
        edges = collector.histogram_edges(section, tower)
        if edges:
            ranges[tower] = (edges[0], edges[-1])
            bins = len(edges) - 1
    return ranges, bins


class WeightSummary:
    """Per-tower weight statistics for one epoch, computed at most once per epoch.

    Args:
        model: the Keras model (built by the time :meth:`for_epoch` is first called).
        towers: the tower specification (see ``resolve_towers``); None for the default.
        bins: histogram bins.
        margin: histogram range as a multiple of the first epoch's largest magnitude.
        collector: where a resumed run's fixed histogram edges are read from.

    Example::

        summary = WeightSummary(model, None, 50, 2.0, collector)
        results = summary.for_epoch(0)   # {"query": (stats, histogram), ...}
        summary.program.sum_of_squares   # {"query": ..., "candidate": ...}
    """

    def __init__(self, model: Any, towers: Mapping[str, TowerSpec] | None, bins: int, margin: float, collector: MetricsCollector) -> None:
        self.model = model
        self.towers_spec = towers
        self.bins = bins
        self.margin = margin
        self.collector = collector
        self.towers: dict[str, list[Any]] | None = None
        self.program: TowerStatsProgram | None = None
        self._epoch: int | None = None
        self._results: dict[str, Any] | None = None

    def resolve(self) -> dict[str, list[Any]]:
        """The towers' variables (compiles nothing, computes nothing)."""
        if self.program is None:
            self._build()
        return self.towers

    def _build(self) -> None:
        self.towers = resolve_towers(self.model, self.towers_spec)
        names, groups = list(self.towers), list(self.towers.values())
        ranges, bins = fixed_ranges(self.collector, "weight_stats", names, self.bins)

        def produce() -> list[list[tf.Tensor]]:
            return [[tf.convert_to_tensor(v) for v in group] for group in groups]

        variables = [v for group in groups for v in group]
        self.program = TowerStatsProgram(produce, names, bins=bins, margin=self.margin, ranges=ranges, jit=on_cpu(variables))

    def reusable(self, model: Any) -> bool:
        """Whether another ``fit`` of ``model`` can keep this summary's compiled program."""
        return model is self.model and self.program is not None and self.towers is not None and (
            variables_key(model, self.towers_spec) == tuple((n, tuple(id(v) for v in g)) for n, g in self.towers.items())
        )

    def new_fit(self) -> None:
        """Forget the last epoch's results (a second ``fit`` may number its epochs anew); keep the compiled program."""
        self._epoch = None
        self._results = None

    def for_epoch(self, epoch: int) -> dict[str, Any]:
        """``{tower: (stats, histogram)}`` for ``epoch``; the second call in an epoch is free."""
        if self.program is None:
            self._build()
        if self._epoch != epoch or self._results is None:
            self._results = self.program()
            self._epoch = epoch
        return self._results
