"""The document in memory: every per-epoch series aligned to ``epochs``, changed only through checked operations.

The rule this module keeps: ``series[i]`` belongs to ``epochs[i]`` for every series
of every section, at every moment a reader (a save) can see the document. A new
epoch inserts its row in every series at once; an epoch run again after a restore
has its earlier row cleared whole. SIGTERM never interrupts these operations half
way (see ``_preemption``: a signal that arrives while a frame of this module runs is
acted on when the operation has finished).

Example::

    doc = AlignedDocument()
    doc.put_series("loss", "loss", 0, 0.5)
    doc.put_series("metrics", "auc", 2, 0.7)
    doc.data["loss"]["loss"]    # [0.5, None]
"""

from __future__ import annotations

import bisect
import logging
import uuid
from typing import Any

from trainer_callbacks import document, limits

logger = logging.getLogger("trainer_callbacks")

SERIES_SECTIONS = document.TOP_LEVEL_SERIES
_ERRORS_SCHEMA = limits.resolve(limits.section_schema("callback_errors").get("items", {}))
MAX_CALLBACK_ERRORS: int = limits.section_schema("callback_errors").get("maxItems", 1000)
CALLBACK_ERROR_CHARS: int = limits.resolve(_ERRORS_SCHEMA["properties"]["error"]).get("maxLength", 4096)
MAX_FITS: int = limits.section_schema("fits").get("maxItems", 100000)


def new_run_id(explicit: str | None, job_id: str | None) -> str:
    """The identity of a run starting now: the one given, Vertex AI's job id, else a random one."""
    return explicit or job_id or uuid.uuid4().hex


class AlignedDocument:
    """One training_metrics.json in memory, kept aligned by construction."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = data if data is not None else document.empty_document()
        # Epochs that came from a continued file and were not logged again: the
        # first write to one of them clears its row (a re-run replaces it whole).
        self.stale: set[int] = set()
        # final_*/test_* values logged with a step, by name: {step: value}, until
        # a second step turns them into a series in `metrics`.
        self._final_steps: dict[str, dict[int, Any]] = {}
        self.changes = 0  # bumped by every operation: a save knows whether anything is new

    # -- rows --------------------------------------------------------------
    @property
    def epochs(self) -> list[int]:
        return self.data["epochs"]

    def _all_series(self) -> list[list[Any]]:
        found = [series for section in SERIES_SECTIONS for series in self.data.get(section, {}).values()]
        for section in document.STATS_SECTIONS:
            for stats in self.data[section].values():
                for name, series in stats.items():
                    found.append(series["counts"] if name == "histogram" else series)
        return found

    def row(self, step: int) -> int:
        """Index of ``step`` in ``epochs``, inserting it (and a None in every series) if new."""
        epochs = self.epochs
        index = bisect.bisect_left(epochs, step)
        if index < len(epochs) and epochs[index] == step:
            if step in self.stale:
                # An epoch run again after a restore: the earlier attempt's row is
                # replaced whole, not patched value by value.
                self.stale.discard(step)
                for series in self._all_series():
                    series[index] = None
            return index
        every = self._all_series()  # gathered first: the insertions below cannot fail half way
        epochs.insert(index, step)
        for series in every:
            series.insert(index, None)
        return index

    def drop_from(self, first: int) -> list[int]:
        """Remove every epoch >= ``first`` (an earlier attempt's epochs that run again); returns them."""
        cut = bisect.bisect_left(self.epochs, first)
        dropped = self.epochs[cut:]
        if dropped:
            for series in self._all_series():
                del series[cut:]
            del self.epochs[cut:]
            self.stale.difference_update(dropped)
            self.changes += 1
        return dropped

    def _series(self, mapping: dict[str, list[Any]], name: str) -> list[Any]:
        if name not in mapping:
            mapping[name] = [None] * len(self.epochs)
        return mapping[name]

    def last_epoch(self) -> int | None:
        return self.epochs[-1] if self.epochs else None

    # -- operations (values already checked) ----------------------------------
    def put_series(self, section: str, name: str, step: int, number: Any) -> None:
        index = self.row(step)
        self._series(self.data.setdefault(section, {}), name)[index] = number
        self.changes += 1

    def put_final(self, name: str, number: Any, step: int | None = None) -> None:
        """An end-of-run value; with a step, logged at two epochs or more it also keeps its series in ``metrics``."""
        self.changes += 1
        final = self.data["final_metrics"]
        if step is None:
            final[name] = number
            return
        if name not in self.data["metrics"]:
            seen = self._final_steps.setdefault(name, {})
            seen[step] = number
            if len(seen) < 2:
                final[name] = number
                return
            for earlier, value in sorted(seen.items()):
                self.put_series("metrics", name, earlier, value)
            del self._final_steps[name]
        else:
            self.put_series("metrics", name, step, number)
        series = self.data["metrics"][name]
        last = next((value for value in reversed(series) if value is not None), None)  # the last epoch's value
        final[name] = last if last is not None else number

    def put_param(self, name: str, value: Any) -> None:
        self.data["params"][name] = value
        self.changes += 1

    def put_norms(self, norms: dict[str, Any], step: int) -> None:
        index = self.row(step)
        for name, number in norms.items():
            self._series(self.data["gradient"], name)[index] = number
        self.changes += 1

    def put_timing(self, values: dict[str, Any], step: int) -> None:
        index = self.row(step)
        timing = self.data.setdefault("timing", {})
        for name, number in values.items():
            self._series(timing, name)[index] = number
        self.changes += 1

    def put_stats(self, section: str, tower: str, stats: dict[str, Any], histogram: tuple[list[Any], list[int]] | None, step: int) -> None:
        stored = self.data[section].get(tower, {}).get("histogram")
        if histogram is not None and stored is not None and stored["bin_edges"] != histogram[0]:
            raise ValueError(f"{section}.{tower}: histogram bin edges are fixed for the run and cannot change")
        index = self.row(step)
        tower_stats = self.data[section].setdefault(tower, {})
        for name, number in stats.items():
            self._series(tower_stats, name)[index] = number
        if histogram is not None:
            edges, counts = histogram
            if stored is None:
                stored = tower_stats["histogram"] = {"bin_edges": list(edges), "counts": [None] * len(self.epochs)}
            stored["counts"][index] = list(counts)
        self.changes += 1

    def put_callback_error(self, callback: str, epoch: int | None, error: str) -> None:
        errors = self.data.setdefault("callback_errors", [])
        if len(errors) >= MAX_CALLBACK_ERRORS:
            logger.warning("callback_errors already holds %d entries; %s's error is not recorded: %s", len(errors), callback, error)
            return
        errors.append({"callback": callback, "epoch": epoch, "error": limits.printable_text(error, CALLBACK_ERROR_CHARS)})
        self.changes += 1

    def begin_fit(self, start_epoch: int, initial_epoch: int) -> None:
        fits = self.data.setdefault("fits", [])
        if len(fits) >= MAX_FITS:
            del fits[0]
        fits.append({"start_epoch": start_epoch, "end_epoch": start_epoch, "initial_epoch": initial_epoch})
        self.changes += 1

    def note_fit_epoch(self, epoch: int) -> None:
        """The open fit reached document epoch ``epoch``."""
        fits = self.data.get("fits")
        if fits and epoch > fits[-1]["end_epoch"]:
            fits[-1]["end_epoch"] = epoch
            self.changes += 1

    def set_run_id(self, run_id: str) -> None:
        self.data["run_id"] = run_id
        self.changes += 1


def repair_ragged_last_row(data: dict[str, Any], where: str) -> None:
    """Pad with null the series one entry short of ``epochs`` (a writer stopped inside its last row); logged.

    Anything else misaligned is left for :func:`document.normalize` to refuse.
    """
    n = len(data.get("epochs") or [])
    padded: list[str] = []

    def pad(series: Any, name: str) -> None:
        if isinstance(series, list) and len(series) == n - 1:
            series.append(None)
            padded.append(name)

    for section in SERIES_SECTIONS:
        for name, series in (data.get(section) or {}).items():
            pad(series, f"{section}.{name}")
    for section in document.STATS_SECTIONS:
        for tower, stats in (data.get(section) or {}).items():
            for name, series in (stats or {}).items():
                pad(series.get("counts") if name == "histogram" and isinstance(series, dict) else series, f"{section}.{tower}.{name}")
    if padded:
        logger.warning("%s: %d series lacked their last epoch's entry (%s%s); padded with null",
                       where, len(padded), ", ".join(padded[:5]), "..." if len(padded) > 5 else "")
