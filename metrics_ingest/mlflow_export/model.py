"""What the exporter reads from MLflow, whichever way it reads it.

Both sources (``sql.SqlSource``, ``rest.RestSource``) turn one MLflow run into
an :class:`MlflowRun`; the mapping and the verification only ever see this.

Example::

    run = MlflowRun(run_id="ab12", experiment_id="1", run_name="qt-42", status="FINISHED",
                    lifecycle_stage="active", start_time=1700000000000, end_time=1700000360000,
                    tags={}, params={"batch_size": "2048"},
                    metrics={"loss": [Point(step=0, timestamp=1700000010000, value=0.5)]})
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import NamedTuple, Protocol

# MLflow's SQL store cannot hold infinities: it writes +-sys.float_info.max instead,
# and a SQL-backed REST server sends those back. Both mean "infinite" here.
MLFLOW_INFINITY = 1.7976931348623157e308


class SourceError(RuntimeError):
    """MLflow could not be read for a run or a group of runs (the rows are reported ``failed``)."""


class Point(NamedTuple):
    """One logged metric value (one row of MLflow's ``metrics`` table).

    ``value`` is a float; NaN stands for a row stored with ``is_nan``. The
    readers of points index them (``p[0]`` step, ``p[1]`` timestamp, ``p[2]``
    value), so a source may hand in plain 3-tuples: the SQL source builds
    millions of them in C, where a named tuple each would cost as much as the query.
    """

    step: int
    timestamp: int
    value: float


@dataclasses.dataclass
class MlflowRun:
    """One MLflow run: its facts, params, tags and every logged metric point.

    Example::

        run.metrics["loss"]          # [(step, timestamp, value), ...]: Points or plain 3-tuples
        run.points                   # every row of the metrics table for this run
    """

    run_id: str
    experiment_id: str
    run_name: str | None
    status: str | None
    lifecycle_stage: str | None
    start_time: int | None
    end_time: int | None
    tags: dict[str, str | None]
    params: dict[str, str]
    metrics: dict[str, list[tuple[int, int, float]]]  # Points or plain (step, timestamp, value) tuples

    @property
    def points(self) -> int:
        return sum(len(points) for points in self.metrics.values())


class Source(Protocol):
    """A way to read MLflow runs: ``check()`` once, then ``fetch`` groups of run ids."""

    description: str
    batch_size: int

    def check(self) -> None:
        """Raise ``metrics_ingest.batch.SetupError`` when MLflow cannot be read at all."""

    def fetch(self, run_ids: list[str]) -> dict[str, MlflowRun]:
        """The runs MLflow knows among ``run_ids`` (unknown ids are absent); raises SourceError."""


def clean_value(value: float) -> float | None:
    """A logged value as the document holds it: NaN and +-infinity (MLflow's +-max float) become None."""
    if not math.isfinite(value) or abs(value) == MLFLOW_INFINITY:
        return None
    return value


def order_value(value: float) -> float:
    """The value's part in "newest wins" ties (same step, same timestamp): MLflow keeps
    the larger value; a NaN counts as the 0 its SQL store writes."""
    return 0.0 if math.isnan(value) else value


def iso_ms(millis: int | None) -> str | None:
    """MLflow's milliseconds since the epoch as ISO-8601 UTC (``...Z``)."""
    if millis is None:
        return None
    try:
        moment = _EPOCH + dt.timedelta(milliseconds=millis)  # exact: no float seconds
    except OverflowError:  # a value no clock ever wrote: keep it, as a number in a string
        return str(millis)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
