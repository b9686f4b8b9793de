"""What a replay prints: one line per object, the summary by outcome, the progress, and the note
naming the files that matched no row.

Example::

    progress = Progress(sys.stderr, dry_run=False)
    print(format_summary(report))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

from metrics_ingest import batch
from metrics_ingest._replay_scope import format_duration
from metrics_ingest.batch import clip as _clip, one_line

if TYPE_CHECKING:
    from metrics_ingest.replay import ObjectOutcome, ReplayReport

# The five outcomes of the function, plus ours for an object that could not
# be processed at all (a transient fault that outlived the retries).
OUTCOMES = ("ingested", "duplicate", "superseded", "no_matching_row", "rejected", "unchanged", "expired", "failed")
# What a dry run reports: what *would* happen.
DRY_RUN_LABELS = {
    "ingested": "would ingest",
    "duplicate": "duplicate",
    "superseded": "superseded",
    "no_matching_row": "no row",
    "rejected": "would reject",
    "unchanged": "unchanged",
    "expired": "expired",
    "failed": "failed",
}
BAD_OUTCOMES = ("rejected", "failed")


def format_line(outcome: ObjectOutcome, dry_run: bool) -> str:
    """One plain line per object (the non-terminal progress)."""
    label = DRY_RUN_LABELS[outcome.outcome] if dry_run else outcome.outcome
    line = f"{label:<15} {outcome.uri}"
    result = outcome.result
    if result is not None and result.quicktest_id is not None:
        line += f" -> quicktest {result.quicktest_id}"
        if result.epochs is not None:
            line += f" ({result.epochs} epochs)"
    if outcome.reason:
        line += f": {one_line(outcome.reason)}"
    return line


def format_summary(report: ReplayReport) -> str:
    """The summary table by outcome, then every rejection and failure with its reason."""
    mode = "dry run of" if report.dry_run else "replay of"
    scope = f" ({report.scope})" if report.scope else ""
    skipped = []
    if report.shard is not None:
        skipped.append(f"{report.other_shards} in other shards")
    if report.since is not None:
        skipped.append(f"{report.outside_since} not updated within {format_duration(report.since)}, skipped")
    lines = [
        f"{mode} {_clip(report.target.uri, 200)}{scope}: {report.matched} metrics files "
        f"(of {report.listed} objects listed{''.join('; ' + s for s in skipped)}), {len(report.outcomes)} processed "
        f"in {report.duration_s:.1f} s with {report.workers} worker(s)"
        + (", --force" if report.force else "")
        + ("" if report.dry_run else f"; run id {report.run_id} (event_id 'replay:{report.run_id}:N' in the records)"),
        "",
        f"  {'outcome':<18}{'count':>7}",
    ]
    for name, count in report.counts.items():
        label = DRY_RUN_LABELS[name] if report.dry_run else name
        lines.append(f"  {label:<18}{count:>7}")
    if report.not_started:
        lines.append(f"  {'not started':<18}{report.not_started:>7}")
    bad = [o for o in report.outcomes if o.outcome in BAD_OUTCOMES]
    if bad:
        lines += ["", "Rejected or failed (fix the file and upload it again, or rerun):"]
        for o in sorted(bad, key=lambda o: o.ref.name):
            lines.append(f"  {o.outcome:<9}{o.uri}: {one_line(o.reason)}")
    if report.interrupted:
        lines += [
            "",
            f"Interrupted: {report.not_started} metrics files were not started; every file processed "
            "was fully ingested or left untouched. Run the same command again to finish.",
        ]
    return "\n".join(lines)


# The no_matching_row files a terminal names after the bar: the first few, then a count.
NO_ROW_SHOWN = 5


def format_no_row(report: ReplayReport, shown: int = NO_ROW_SHOWN) -> str | None:
    """A note naming the files that matched no row (the first ``shown`` and a count), or None."""
    files = report.no_row
    if not files:
        return None
    names = ", ".join(clip_uri(o) for o in files[:shown])
    more = f" and {len(files) - shown} more" if len(files) > shown else ""
    return (
        f"note: {len(files)} metrics file(s) matched no QuickTest row: {names}{more}. No row's gcs_artifacts_path "
        "is their folder (usually a wrong gcs_artifacts_path; --json lists every one)"
    )


def clip_uri(outcome: ObjectOutcome) -> str:
    return _clip(f"gs://{outcome.ref.bucket}/{outcome.ref.name}", 160)


class Progress(batch.Progress):
    """A tqdm bar on a terminal, plain lines otherwise (both on ``stream``), plus the listing's progress.

    Rejections and failures are printed above the bar as they happen; at the
    end, on a terminal, :meth:`finish` names the files that matched no row.

    Example::

        progress = Progress(sys.stderr, dry_run=False)
        report = run_replay(options, on_listed=progress.listed, on_outcome=progress.update)
        progress.close()
        progress.finish(report)
    """

    def __init__(self, stream: TextIO, dry_run: bool, tty: bool | None = None) -> None:
        super().__init__(
            stream,
            format_line=lambda outcome: format_line(outcome, dry_run),
            notable=lambda outcome: outcome.outcome in BAD_OUTCOMES,
            tty=tty,
        )
        self.dry_run = dry_run

    def listing(self, listed: int, matched: int) -> None:
        """While listing: one line rewritten in place on a terminal, a line per 10,000 otherwise."""
        if self.tty:
            print(f"\rlisting: {listed} objects, {matched} metrics files so far", end="", file=self.stream, flush=True)
        elif listed % 10_000 == 0:
            print(f"listing: {listed} objects, {matched} metrics files so far", file=self.stream, flush=True)

    def listed(self, listed: int, matched: int) -> None:
        if self.tty:
            print("\r\033[K", end="", file=self.stream, flush=True)  # clear the listing line
        else:
            print(f"listed {listed} objects, {matched} metrics files", file=self.stream, flush=True)
        self.start(matched, unit="file")

    def finish(self, report: ReplayReport) -> None:
        """On a terminal: name the no_matching_row files (plain-line output already named each)."""
        note = format_no_row(report) if self.tty else None
        if note:
            print(note, file=self.stream, flush=True)
