"""An export's outcomes: one per row, the counts, the summary and the progress lines.

Outcomes per row: ``exported``, ``exists``, ``skipped`` (``--all`` never
replaces a history the function ingested from a file), ``missing_run``,
``failed``; plus ``verified`` / ``mismatch``. A ``missing_run`` or ``failed``
row with an accepted loss (``--accept-loss``) is done: listed apart.

Example::

    report.counts["exported"], report.exit_status, json.dumps(report.to_dict())
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, ClassVar

from metrics_ingest import batch
from metrics_ingest.mlflow_export.rows import QuickTestRow

OUTCOMES = ("exported", "exists", "skipped", "missing_run", "failed")
VERIFICATIONS = ("verified", "mismatch")
DRY_RUN_LABELS = {"exported": "would export", "exists": "exists", "skipped": "would skip",
                  "missing_run": "missing_run", "failed": "failed"}


@dataclasses.dataclass
class RowOutcome:
    """One row's fate.

    Example::

        outcome.outcome, outcome.verification, outcome.reason   # 'exported', 'verified', None
    """

    row: QuickTestRow
    outcome: str
    reason: str | None = None
    verification: str | None = None
    destination: str | None = None
    ingest_outcome: str | None = None
    epochs: int | None = None
    points: int | None = None
    duplicates: int | None = None
    non_finite: int | None = None
    lifecycle_stage: str | None = None
    placements: list[str] | None = None
    duration_ms: float | None = None
    kept_copy: int | None = None  # mlflow_export_replaced_histories.id of the history this export replaced
    row_history: str | None = None  # what the row holds after an `exists` (e.g. "empty", "the folder's file")

    @property
    def accepted(self) -> bool:
        """A row MLflow cannot give back whose loss an operator accepted."""
        return self.row.accepted is not None and self.outcome in ("missing_run", "failed")

    @property
    def ok(self) -> bool:
        """Done: exported and verified, already there (and not contradicting MLflow), skipped, verified,
        or an accepted loss."""
        if self.accepted:
            return True
        if self.outcome == "exported":
            return self.verification == "verified"
        if self.outcome == "exists":
            return self.verification != "mismatch" and self.row_history != "empty"
        return self.outcome in ("verified", "skipped")

    def to_dict(self) -> dict[str, Any]:
        data = {
            "quicktest_id": self.row.id,
            "mlflow_run_id": self.row.run_id,
            "gcs_artifacts_path": self.row.path,
        }
        data.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "row"})
        if data["duration_ms"] is not None:
            data["duration_ms"] = round(data["duration_ms"], 3)
        data["accepted_loss"] = self.row.accepted.to_dict() if self.row.accepted is not None else None
        return data


@dataclasses.dataclass(kw_only=True)
class ExportReport(batch.BatchReport):
    """What an export did (or would do).

    Example::

        report.counts["exported"], report.exit_status, json.dumps(report.to_dict())
    """

    OUTCOMES: ClassVar[tuple[str, ...]] = OUTCOMES

    source: str
    mode: str
    selected: int = 0
    outcomes: list[RowOutcome] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=lambda: {"read": 0.0, "build": 0.0, "write": 0.0, "verify": 0.0})
    unrepaired: list[int] = dataclasses.field(default_factory=list)  # rows left with a mismatch (run --repair)

    @property
    def total(self) -> int:
        return self.selected

    def is_bad(self, outcome: RowOutcome) -> bool:
        if self.mode == "dry-run":
            return outcome.outcome in ("missing_run", "failed") and not outcome.accepted
        return not outcome.ok

    @property
    def exit_status(self) -> int:
        status = super().exit_status
        return 1 if status == 0 and self.unrepaired else status

    @property
    def counts(self) -> dict[str, int]:
        outcomes = Counter(o.outcome for o in self.outcomes)
        verifications = Counter(o.verification for o in self.outcomes if o.verification)
        counts = {name: outcomes.get(name, 0) for name in OUTCOMES}
        counts.update({name: outcomes.get(name, 0) + verifications.get(name, 0) for name in VERIFICATIONS})
        counts["accepted_loss"] = sum(1 for o in self.outcomes if o.accepted)
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "mode": self.mode,
            "run_id": self.run_id,
            "workers": self.workers,
            "selected": self.selected,
            "processed": len(self.outcomes),
            "not_started": self.not_started,
            "interrupted": self.interrupted,
            "duration_s": round(self.duration_s, 3),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "counts": self.counts,
            "unrepaired_mismatches": self.unrepaired,
            "exit_status": self.exit_status,
            "rows": [o.to_dict() for o in sorted(self.outcomes, key=lambda o: o.row.id)],
        }


def format_line(outcome: RowOutcome, dry_run: bool = False) -> str:
    """One plain line per row (the non-terminal progress)."""
    label = DRY_RUN_LABELS[outcome.outcome] if dry_run and outcome.outcome in DRY_RUN_LABELS else outcome.outcome
    if outcome.verification:
        label += f"+{outcome.verification}"
    line = f"{label:<18} quicktest {outcome.row.id} (run {outcome.row.run_id or '-'})"
    if outcome.lifecycle_stage == "deleted":
        line += " [deleted in MLflow]"
    if outcome.epochs is not None:
        line += f": {outcome.epochs} epochs, {outcome.points} points"
        if outcome.duplicates:
            line += f", {outcome.duplicates} duplicates collapsed"
        if outcome.non_finite:
            line += f", {outcome.non_finite} NaN/inf -> null"
    if outcome.destination:
        line += f" -> {outcome.destination}"
    if outcome.reason:
        line += f" ({batch.one_line(outcome.reason, 500)})"
    if outcome.accepted:
        line += f" [loss accepted: {format_decision(outcome)}]"
    return line


def format_decision(outcome: RowOutcome) -> str:
    d = outcome.row.accepted
    assert d is not None
    return f"by {d.decided_by} at {d.decided_at:%Y-%m-%d %H:%M} UTC: {batch.one_line(d.reason, 200)}"


def format_summary(report: ExportReport) -> str:
    """The summary by outcome, then every row that is not done, with its reason (and, in a dry run, every placement)."""
    dry = report.mode == "dry-run"
    verb = {"export": "export", "dry-run": "dry run of the export", "output-dir": "export to local files",
            "verify-only": "verification", "repair": "repair"}[report.mode]
    lines: list[str] = []
    if dry:
        for o in sorted(report.outcomes, key=lambda o: o.row.id):
            lines.append(format_line(o, dry_run=True))
            lines += [f"    {p}" for p in o.placements or []]
        lines.append("")
    lines += [
        f"{verb} from {report.source}: {report.selected} rows selected, {len(report.outcomes)} processed "
        f"in {report.duration_s:.1f} s with {report.workers} worker(s)"
        + ("" if report.mode not in ("export", "repair") else f"; run id {report.run_id} (event_id 'export-mlflow:{report.run_id}:...')"),
        "",
        f"  {'outcome':<18}{'count':>7}",
    ]
    if report.mode == "verify-only":
        names: tuple[str, ...] = ("verified", "mismatch", "missing_run", "failed")
    else:
        names = OUTCOMES + (() if dry else VERIFICATIONS)
    for name in names + ("accepted_loss",):
        label = DRY_RUN_LABELS.get(name, name) if dry else name
        lines.append(f"  {label:<18}{report.counts[name]:>7}")
    if report.not_started:
        lines.append(f"  {'not started':<18}{report.not_started:>7}")
    accepted = [o for o in report.outcomes if o.accepted]
    if accepted:
        lines += ["", "Accepted losses (not exported; recorded with --accept-loss):"]
        lines += [f"  quicktest {o.row.id} (run {o.row.run_id}): {format_decision(o)}" for o in accepted]
    bad = [o for o in report.outcomes if report.is_bad(o)]
    if bad and not dry:
        lines += ["", "Not done (fix and run again; nothing was overwritten):"]
        lines += [f"  {format_line(o)}" for o in sorted(bad, key=lambda o: o.row.id)]
    if report.unrepaired:
        shown = ", ".join(str(i) for i in report.unrepaired[:20]) + (" ..." if len(report.unrepaired) > 20 else "")
        lines += ["", f"{len(report.unrepaired)} row(s) whose last verification was a mismatch: {shown}; "
                      "run `metrics-ingest export-mlflow ... --repair` to re-export and verify them."]
    if report.interrupted:
        lines += [
            "",
            f"Interrupted: {report.not_started} rows were not started; every row processed is complete or untouched. "
            "Run the same command again to finish.",
        ]
    return "\n".join(lines)


class ExportProgress(batch.Progress):
    """A tqdm bar on a terminal (rows not done printed above it), plain lines otherwise.

    Example::

        progress = ExportProgress(sys.stderr, dry_run=False)
        run_export(options, on_selected=progress.selected, on_outcome=progress.update)
        progress.close()
    """

    def __init__(self, stream: Any, dry_run: bool, tty: bool | None = None) -> None:
        super().__init__(
            stream,
            format_line=lambda outcome: format_line(outcome, dry_run),
            notable=lambda o: not o.ok and not (dry_run and o.outcome in ("exported", "exists")),
            tty=tty,
        )
        self.dry_run = dry_run

    def selected(self, count: int) -> None:
        if not self.tty:
            print(f"selected {count} QuickTest rows", file=self.stream, flush=True)
        self.start(count, unit="row")
