"""One MLflow run -> one schema-v1 ``training_metrics.json`` document.

Steps are epochs. Per (metric, step) the newest value wins (the larger
timestamp; on a tie the larger value, as MLflow's own ``latest_metrics``
decides) and the collapsed duplicates are counted. NaN and +-infinity (MLflow's
SQL store writes +-1.7976931348623157e308 for them) become null and are counted.

Names are routed as ``trainer_callbacks.MetricsCollector.log_metric`` routes
them: ``final_*`` / ``test_*`` -> ``final_metrics``; a name containing ``loss``
-> ``loss``; anything else -> ``metrics``. Before the last two, name rules
recognise what the old MLflow callbacks logged as plain metrics: weight norms
(-> ``gradient``, the platform's historical name), per-tower weight and
gradient statistics (-> ``weight_stats`` / ``gradient_stats``) and histograms
(one metric per bin, the bin edges in a param). ``--mapping FILE`` adds rules,
tried before everything else. Nothing logged is ever dropped: a name no rule
takes, a histogram that cannot be assembled, or a second name for a place
already taken lands in ``loss`` / ``metrics`` under its own name. A value
placed in ``final_metrics`` (``final_*``, ``test_*``, or a ``--mapping`` rule to
it) also keeps its steps: its series sits in ``loss`` / ``metrics`` too.

Names and values (:mod:`.values`; docs/mlflow-export.md says the same):

- An empty metric, param or tag name (older MLflow stores allow it; the format
  needs at least one character) becomes ``(empty name)``, or ``(empty name 2)``,
  ... when that name is taken too: the values are kept, never the run lost.
- A param becomes a JSON number or boolean only where that value's own JSON
  spelling gives MLflow's string back exactly (``"2048"`` -> 2048, ``"0.01"`` ->
  0.01, ``"true"`` -> true); anything else stays the string (``"True"``,
  ``"1e+20"``, ``"007"``, ``"[128, 64]"``). See :func:`param_value`.
- ``-0.0`` is written as ``0.0``: PostgreSQL's jsonb has no negative zero, so
  the row could not hold it anyway (:func:`stored_value`).

Example::

    export = build_document(run, NameRules.default())
    export.document["loss"]["val_loss"]          # [None, None, 0.41, ...]
    for placement in export.plan.placements.values():
        print(placement.key, "->", ", ".join(map(str, placement.locations)))
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from metrics_ingest.mlflow_export.model import MlflowRun, Point, iso_ms, order_value
from metrics_ingest.mlflow_export.values import (  # noqa: F401  (re-exported: the mapping's rules)
    EMPTY_NAME,
    document_names,
    document_problem,
    param_text,
    param_value,
    stored_value,
    with_document_names,
)

# As the trainer's collector: these prefixes are end-of-run values.
FINAL_PREFIXES = ("final_", "test_")
SERIES_SECTIONS = ("loss", "metrics", "gradient")
STATS_SECTIONS = ("weight_stats", "gradient_stats")
STATS = {"weight_stats": ("mean", "std", "min", "max"), "gradient_stats": ("mean", "std", "min", "max", "norm")}
HISTOGRAM_TARGETS = {"weight_histogram": "weight_stats", "gradient_histogram": "gradient_stats"}
EDGES_TARGETS = {"weight_histogram_edges": "weight_stats", "gradient_histogram_edges": "gradient_stats"}
METRIC_TARGETS = ("loss", "metrics", "final_metrics", "gradient", *STATS_SECTIONS, *HISTOGRAM_TARGETS)
PARAM_TARGETS = tuple(EDGES_TARGETS)

# MLflow statuses -> the document's.
STATUSES = {"FINISHED": "completed", "FAILED": "failed", "KILLED": "failed", "RUNNING": "running", "SCHEDULED": "running"}

_STAT = r"(?P<stat>mean|std|min|max)"
_GSTAT = r"(?P<stat>mean|std|min|max|norm)"
_TOWER_ = r"(?P<tower>[A-Za-z0-9]+)"  # in underscore spellings a tower has no '_'
_TOWER_SLASH = r"(?P<tower>[^/]+)"
_BIN = r"(?:bin_?)?(?P<bin>\d+)"
_HIST = r"hist(?:ogram)?"

# The old callbacks' usual spellings (the migration plan's collector mapped
# `<tower>_weight_norm` to gradient[<tower>]). Tried after the mapping file's
# rules and after the final_/test_ prefixes.
DEFAULT_METRIC_RULES: tuple[tuple[str, str], ...] = (
    (r"weight_norm", "gradient:total"),
    (rf"{_TOWER_}_weights?_norm", "gradient"),
    (rf"weight_norms?[/.]{_TOWER_SLASH}", "gradient"),
    (rf"{_TOWER_}_weights?_{_STAT}", "weight_stats"),
    (rf"weights?(?:_stats)?[/.]{_TOWER_SLASH}[/.]{_STAT}", "weight_stats"),
    (rf"{_TOWER_}_grad(?:ient)?s?_{_GSTAT}", "gradient_stats"),
    (rf"grad(?:ient)?s?(?:_stats)?[/.]{_TOWER_SLASH}[/.]{_GSTAT}", "gradient_stats"),
    (rf"{_TOWER_}_weights?_{_HIST}_{_BIN}", "weight_histogram"),
    (rf"weights?(?:_stats)?[/.]{_TOWER_SLASH}[/.]{_HIST}[/._]{_BIN}", "weight_histogram"),
    (rf"{_TOWER_}_grad(?:ient)?s?_{_HIST}_{_BIN}", "gradient_histogram"),
    (rf"grad(?:ient)?s?(?:_stats)?[/.]{_TOWER_SLASH}[/.]{_HIST}[/._]{_BIN}", "gradient_histogram"),
)
DEFAULT_PARAM_RULES: tuple[tuple[str, str], ...] = (
    (rf"{_TOWER_}_weights?_{_HIST}_(?:bin_)?edges", "weight_histogram_edges"),
    (rf"weights?(?:_stats)?[/.]{_TOWER_SLASH}[/.]{_HIST}[/._](?:bin_)?edges", "weight_histogram_edges"),
    (rf"{_TOWER_}_grad(?:ient)?s?_{_HIST}_(?:bin_)?edges", "gradient_histogram_edges"),
    (rf"grad(?:ient)?s?(?:_stats)?[/.]{_TOWER_SLASH}[/.]{_HIST}[/._](?:bin_)?edges", "gradient_histogram_edges"),
)


class MappingError(ValueError):
    """A run that cannot become a schema-v1 document (e.g. a negative step); the row is reported ``failed``."""


class MappingFileError(ValueError):
    """A ``--mapping FILE`` that cannot be used; the message names the rule and the problem."""


@dataclasses.dataclass(frozen=True)
class Location:
    """Where one MLflow key's values land in the document.

    Example::

        str(Location("weight_stats", "query", "mean"))           # 'weight_stats.query.mean'
        str(Location("gradient_stats", "query", "histogram", 3))  # 'gradient_stats.query.histogram.counts[][3]'
    """

    section: str
    name: str
    stat: str | None = None
    bin: int | None = None

    def __str__(self) -> str:
        if self.bin is not None:
            return f"{self.section}.{self.name}.histogram.counts[][{self.bin}]"
        if self.stat is not None:
            return f"{self.section}.{self.name}.{self.stat}"
        return f"{self.section}.{self.name}"

    @property
    def is_series(self) -> bool:
        return self.section != "final_metrics"


@dataclasses.dataclass(frozen=True)
class Rule:
    """One name rule: a regular expression that must match the whole name, and a target.

    ``to`` is one of METRIC_TARGETS (or PARAM_TARGETS for param rules). The
    pattern's named groups ``tower``, ``stat`` and ``bin`` fill the place; a
    literal ``tower`` / ``stat`` may be given instead.
    """

    pattern: re.Pattern[str]
    to: str
    tower: str | None = None
    stat: str | None = None
    origin: str = "default"

    def target(self, name: str) -> dict[str, Any] | None:
        match = self.pattern.fullmatch(name)
        if match is None:
            return None
        groups = match.groupdict()
        return {
            "to": self.to,
            "tower": groups.get("tower") or self.tower,
            "stat": groups.get("stat") or self.stat,
            "bin": int(groups["bin"]) if groups.get("bin") is not None else None,
            "origin": self.origin,
        }


def _rule(pattern: str, to: str, origin: str, tower: str | None = None, stat: str | None = None, *, params: bool) -> Rule:
    allowed = PARAM_TARGETS if params else METRIC_TARGETS
    if ":" in to and not params:  # the defaults' shorthand "gradient:total"
        to, tower = to.split(":", 1)
    if to not in allowed:
        raise MappingFileError(f"{origin}: unknown target {to!r}; expected one of {', '.join(allowed)}")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise MappingFileError(f"{origin}: the pattern {pattern!r} is not a valid regular expression: {exc}") from None
    groups = set(compiled.groupindex)
    needs_tower = to in ("gradient", *STATS_SECTIONS, *HISTOGRAM_TARGETS, *EDGES_TARGETS)
    if needs_tower and "tower" not in groups and not tower:
        raise MappingFileError(f"{origin}: a rule to {to!r} needs a (?P<tower>...) group or a \"tower\"")
    if to in STATS_SECTIONS:
        if "stat" not in groups and not stat:
            raise MappingFileError(f"{origin}: a rule to {to!r} needs a (?P<stat>...) group or a \"stat\"")
        if stat and stat not in STATS[to]:
            raise MappingFileError(f"{origin}: {to!r} has no statistic {stat!r}; expected one of {', '.join(STATS[to])}")
    if to in HISTOGRAM_TARGETS and "bin" not in groups:
        raise MappingFileError(f"{origin}: a rule to {to!r} needs a (?P<bin>\\d+) group (the bin's index)")
    return Rule(compiled, to, tower, stat, origin)


class NameRules:
    """The name rules: those of a mapping file first, then the trainer's
    ``final_``/``test_`` prefixes, then the defaults.

    A mapping file is JSON::

        {"metrics": [{"pattern": "l2/(?P<tower>\\\\w+)", "to": "gradient"},
                     {"pattern": "w_(?P<tower>\\\\w+)_avg", "to": "weight_stats", "stat": "mean"},
                     {"pattern": "lr", "to": "metrics"}],
         "params":  [{"pattern": "edges_(?P<tower>\\\\w+)", "to": "weight_histogram_edges"}]}

    Example::

        rules = NameRules.load(Path("mapping.json"))   # or NameRules.default()
        rules.target("query_weight_mean")["to"]       # 'weight_stats'
    """

    def __init__(self, metric_rules: Iterable[Rule] = (), param_rules: Iterable[Rule] = (), source: str | None = None) -> None:
        self.file_metric_rules = list(metric_rules)
        self.file_param_rules = list(param_rules)
        self.source = source
        self.metric_rules = [_rule(p, to, "default rule", params=False) for p, to in DEFAULT_METRIC_RULES]
        self.param_rules = [_rule(p, to, "default rule", params=True) for p, to in DEFAULT_PARAM_RULES]

    @classmethod
    def default(cls) -> NameRules:
        return cls()

    @classmethod
    def load(cls, path: Path) -> NameRules:
        """Read a mapping file; raises MappingFileError naming the problem."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise MappingFileError(f"cannot read the mapping file {path}: {exc.strerror or exc}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise MappingFileError(f"the mapping file {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or set(data) - {"metrics", "params"}:
            raise MappingFileError(f"the mapping file {path} must be a JSON object with \"metrics\" and/or \"params\" lists")
        rules: dict[str, list[Rule]] = {"metrics": [], "params": []}
        for kind in ("metrics", "params"):
            entries = data.get(kind, [])
            if not isinstance(entries, list):
                raise MappingFileError(f"{path}: \"{kind}\" must be a list of rules")
            for index, entry in enumerate(entries):
                origin = f"{path}: {kind}[{index}]"
                if not isinstance(entry, dict) or not isinstance(entry.get("pattern"), str) or not isinstance(entry.get("to"), str):
                    raise MappingFileError(f"{origin}: a rule is an object with a \"pattern\" and a \"to\"")
                unknown = set(entry) - {"pattern", "to", "tower", "stat"}
                if unknown:
                    raise MappingFileError(f"{origin}: unknown key(s) {sorted(unknown)}")
                rules[kind].append(
                    _rule(entry["pattern"], entry["to"], origin, entry.get("tower"), entry.get("stat"), params=kind == "params")
                )
        return cls(rules["metrics"], rules["params"], source=str(path))

    def target(self, name: str) -> dict[str, Any]:
        """Where a metric name goes: ``{"to", "tower", "stat", "bin", "origin"}``."""
        for rule in self.file_metric_rules:
            found = rule.target(name)
            if found is not None:
                return found
        if name.startswith(FINAL_PREFIXES):
            return {"to": "final_metrics", "tower": None, "stat": None, "bin": None, "origin": "trainer"}
        for rule in self.metric_rules:
            found = rule.target(name)
            if found is not None:
                return found
        return trainer_target(name)

    def param_target(self, name: str) -> dict[str, Any] | None:
        """Histogram bin edges among the params: ``{"to", "tower", ...}`` or None."""
        for rule in (*self.file_param_rules, *self.param_rules):
            found = rule.target(name)
            if found is not None:
                return found
        return None


def trainer_target(name: str) -> dict[str, Any]:
    """The trainer's routing of a per-epoch value: ``loss`` when the name contains it, else ``metrics``."""
    return {"to": "loss" if "loss" in name else "metrics", "tower": None, "stat": None, "bin": None, "origin": "trainer"}


@dataclasses.dataclass
class Placement:
    """Where one MLflow metric key lands, and why (for ``--dry-run`` and the verification)."""

    key: str
    locations: tuple[Location, ...]
    steps: int
    note: str | None = None


_EMPTY_NOTE = "the format needs a name of at least one character"


@dataclasses.dataclass
class Plan:
    """Every metric key's place, the epochs, and the histograms assembled."""

    placements: dict[str, Placement]
    epochs: list[int]
    histogram_edges: dict[tuple[str, str], list[float]]
    edge_params: dict[str, str]  # param key -> 'weight_stats.query.histogram.bin_edges'
    names: dict[str, str] = dataclasses.field(default_factory=dict)  # MLflow metric name -> the document's

    def describe(self, params: Mapping[str, str]) -> list[str]:
        """One line per MLflow key: ``metric loss -> loss.loss (50 steps)``."""
        lines = []
        original = {name: key for key, name in self.names.items()}
        for key in sorted(self.placements):
            p = self.placements[key]
            where = ", ".join(map(str, p.locations))
            note = [p.note] if p.note else []
            if original.get(key, key) != key:
                note.insert(0, f"renamed: {_EMPTY_NOTE}")
            lines.append(
                f"metric {original.get(key, key)!r} -> {where} ({p.steps} step{'s' if p.steps != 1 else ''})"
                + (f"; {'; '.join(note)}" if note else "")
            )
        param_names = document_names(params)
        for key in sorted(params):
            name = param_names[key]
            also = f" and {self.edge_params[name]}" if name in self.edge_params else ""
            renamed = f" (renamed: {_EMPTY_NOTE})" if name != key else ""
            lines.append(f"param {key!r} -> params.{name}{also}{renamed}")
        return lines


@dataclasses.dataclass
class Export:
    """A built document with its plan and counts.

    ``points`` rows were read; ``duplicates`` of them were collapsed (an older
    value at a step that has a newer one); ``non_finite`` values are null.
    """

    document: dict[str, Any]
    plan: Plan
    points: int
    duplicates: int
    non_finite: int


def newest_per_step(points: list[Point]) -> dict[int, Point]:
    """The newest point per step (larger timestamp, then larger value, as MLflow's latest_metrics)."""
    best = {point[0]: point for point in points}
    if len(best) == len(points):  # the usual case: one value per step, nothing to choose
        return best
    best = {}
    for point in points:  # (step, timestamp, value): indexed, as sources may hand in plain tuples
        seen = best.get(point[0])
        if seen is None or (point[1], order_value(point[2])) > (seen[1], order_value(seen[2])):
            best[point[0]] = point
    return best


def plan_run(run: MlflowRun, rules: NameRules, values: Mapping[str, Mapping[int, float | None]] | None = None) -> Plan:
    """Decide where each metric key of ``run`` lands (no document built)."""
    original_names = list(run.metrics)
    run = with_document_names(run)
    if values is None:
        values = {key: {s: stored_value(p[2]) for s, p in newest_per_step(pts).items()} for key, pts in run.metrics.items()}
    targets = {key: rules.target(key) for key in sorted(values)}
    placements: dict[str, Placement] = {}
    taken: dict[Location, str] = {}

    def fallback(key: str, note: str) -> None:
        found = trainer_target(key)
        place(key, found, note)

    def place(key: str, found: dict[str, Any], note: str | None = None) -> None:
        steps = values[key]
        to = found["to"]
        if to == "final_metrics":
            final = Location("final_metrics", key)
            if not steps or (len(steps) == 1 and min(steps) < 0):
                # A single value at a step no epoch can be: the final value holds all of it.
                placements[key] = Placement(key, (final,), len(steps), note)
                return
            # The last step is the end-of-run value, and the series keeps every
            # step (one or several: nothing logged is dropped, no step lost).
            series = Location(trainer_target(key)["to"], key)
            placements[key] = Placement(
                key, (final, series), len(steps), note or ("several steps: the last one is the final value" if len(steps) > 1 else None)
            )
            return
        if to in ("loss", "metrics"):
            placements[key] = Placement(key, (Location(to, key),), len(steps), note)
            return
        if to == "gradient":
            location = Location("gradient", found["tower"])
        elif to in STATS_SECTIONS:
            if found["stat"] not in STATS[to]:
                fallback(key, f"{to} has no statistic {found['stat']!r}")
                return
            location = Location(to, found["tower"], found["stat"])
        else:  # histograms are placed below, once all their bins are known
            raise AssertionError(to)
        if location in taken:
            fallback(key, f"{location} is already taken by {taken[location]!r}")
            return
        taken[location] = key
        placements[key] = Placement(key, (location,), len(steps), note)

    # Histograms: bins by (section, tower), edges from the params.
    bins: dict[tuple[str, str], dict[int, str]] = {}
    for key, found in targets.items():
        if found["to"] in HISTOGRAM_TARGETS:
            group = bins.setdefault((HISTOGRAM_TARGETS[found["to"]], found["tower"]), {})
            if found["bin"] in group:  # two spellings of one bin: the second is kept as a plain metric
                fallback(key, f"bin {found['bin']} is already {group[found['bin']]!r}")
            else:
                group[found["bin"]] = key
    edges_by_group: dict[tuple[str, str], tuple[str, list[float] | None]] = {}
    for name in sorted(run.params):
        found = rules.param_target(name)
        if found is not None:
            group = (EDGES_TARGETS[found["to"]], found["tower"])
            edges_by_group.setdefault(group, (name, _parse_edges(run.params[name])))
    histogram_edges: dict[tuple[str, str], list[float]] = {}
    edge_params: dict[str, str] = {}
    for group, by_bin in sorted(bins.items()):
        section, tower = group
        problem = _histogram_problem(by_bin, edges_by_group.get(group), values)
        if problem is not None:
            for key in by_bin.values():
                fallback(key, f"{section}.{tower} histogram not assembled: {problem}")
            continue
        param, edges = edges_by_group[group]
        assert edges is not None
        histogram_edges[group] = edges
        edge_params[param] = f"{section}.{tower}.histogram.bin_edges"
        for index, key in by_bin.items():
            placements[key] = Placement(key, (Location(section, tower, "histogram", index),), len(values[key]))

    for key, found in targets.items():
        if key not in placements and found["to"] not in HISTOGRAM_TARGETS:
            place(key, found)

    epochs: set[int] = set()
    for key, placement in placements.items():
        if any(loc.is_series for loc in placement.locations):
            epochs.update(values[key])
    negative = sorted(e for e in epochs if e < 0)
    if negative:
        key = next(k for k, p in placements.items() if any(s < 0 for s in values[k]) and any(l.is_series for l in p.locations))
        raise MappingError(f"metric {key!r} has step {negative[0]}; epochs are whole numbers >= 0")
    return Plan(placements, sorted(epochs), histogram_edges, edge_params, document_names(original_names))


def _parse_edges(text: str) -> list[float] | None:
    """Bin edges as MLflow held them: a JSON list of numbers (or comma-separated numbers)."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = [float(part) for part in text.strip("[] ").split(",")]
        except ValueError:
            return None
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    floats = [float(v) for v in value]
    return floats if all(math.isfinite(v) for v in floats) else None


def _histogram_problem(
    by_bin: Mapping[int, str],
    edges: tuple[str, list[float] | None] | None,
    values: Mapping[str, Mapping[int, float | None]],
) -> str | None:
    if edges is None:
        return "no bin-edges param"
    param, parsed = edges
    if parsed is None:
        return f"param {param!r} is not a list of finite numbers"
    count = len(by_bin)
    if sorted(by_bin) != list(range(count)):
        return f"bins {sorted(by_bin)} are not 0..{count - 1}"
    if len(parsed) != count + 1:
        return f"{count} bins need {count + 1} edges, param {param!r} has {len(parsed)}"
    if any(b <= a for a, b in zip(parsed, parsed[1:])):
        return f"the edges in param {param!r} do not increase"
    steps = {s for key in by_bin.values() for s in values[key]}
    for step in sorted(steps):
        row = [values[key].get(step, _MISSING) for _, key in sorted(by_bin.items())]
        if all(v is _MISSING for v in row):
            continue
        if any(v is _MISSING for v in row):
            return f"step {step} lacks some bins"
        if any(v is None or v < 0 or not float(v).is_integer() for v in row):  # type: ignore[operator]
            return f"step {step} has a count that is not a whole number >= 0"
    return None


_MISSING = object()


def build_document(run: MlflowRun, rules: NameRules) -> Export:
    """The schema-v1 document for ``run``; raises MappingError when it cannot be one."""
    original = run
    run = with_document_names(run)
    values: dict[str, dict[int, float | None]] = {}
    duplicates = 0
    for key, points in run.metrics.items():
        best = newest_per_step(points)
        duplicates += len(points) - len(best)
        values[key] = {step: stored_value(point[2]) for step, point in best.items()}
    non_finite = sum(1 for steps in values.values() for v in steps.values() if v is None)
    plan = plan_run(original, rules, values)
    index = {epoch: i for i, epoch in enumerate(plan.epochs)}
    n = len(plan.epochs)

    doc: dict[str, Any] = {"schema_version": 1, "status": STATUSES.get(run.status or "", "completed")}
    saved = run.end_time or max((p[1] for pts in run.metrics.values() for p in pts), default=None) or run.start_time
    if saved is not None:
        # Deterministic: the time MLflow last heard from the run, so both read
        # paths (and a rerun) write the same bytes.
        doc["saved_at"] = iso_ms(saved)
    doc.update({"available": True, "epochs": list(plan.epochs)})
    for section in (*SERIES_SECTIONS, *STATS_SECTIONS, "final_metrics"):
        doc[section] = {}
    for (section, tower), edges in sorted(plan.histogram_edges.items()):
        doc[section].setdefault(tower, {})["histogram"] = {"bin_edges": edges, "counts": [None] * n}

    for key in sorted(plan.placements):
        placement = plan.placements[key]
        steps = values[key]
        for location in placement.locations:
            if location.section == "final_metrics":
                doc["final_metrics"][key] = steps[max(steps)] if steps else None
            elif location.bin is not None:
                counts = doc[location.section][location.name]["histogram"]["counts"]
                for step, value in steps.items():
                    row = counts[index[step]]
                    if row is None:
                        row = counts[index[step]] = [0] * (len(plan.histogram_edges[(location.section, location.name)]) - 1)
                    row[location.bin] = int(value)  # type: ignore[arg-type]
            else:
                series = [None] * n
                for step, value in steps.items():
                    series[index[step]] = value
                if location.stat is not None:
                    doc[location.section].setdefault(location.name, {})[location.stat] = series
                else:
                    doc[location.section][location.name] = series
    doc["params"] = {key: param_value(run.params[key]) for key in sorted(run.params)}
    doc["mlflow"] = {
        "run_id": run.run_id,
        "experiment_id": run.experiment_id,
        "run_name": run.run_name,
        "status": run.status,
        "start_time": iso_ms(run.start_time),
        "end_time": iso_ms(run.end_time),
        "tags": {key: run.tags[key] for key in sorted(run.tags)},
    }
    return Export(doc, plan, run.points, duplicates, non_finite)


def dumps(document: Mapping[str, Any]) -> bytes:
    """Strict JSON bytes, as the trainer writes them (no NaN tokens: non-finite values are already null)."""
    return json.dumps(document, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
