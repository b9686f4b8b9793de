"""What an export is asked to do (``ExportOptions``), checked when it is made.

Example::

    ExportOptions(SqlSource(url), quicktest_ids=(42,), dry_run=True)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ingest.config import Settings
from metrics_ingest import batch
from metrics_ingest.batch import UsageError
from metrics_ingest.mlflow_export.mapping import NameRules
from metrics_ingest.mlflow_export.model import Source

# The metrics file's name for a document over MAX_METRICS_BYTES that --oversize-cap
# writes: the function ingests only METRICS_FILENAME, so it never sees (or rejects) it.
OVERSIZE_SUFFIX = ".oversize.json"


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What to export and how.

    Args:
        source: where MLflow is read (``SqlSource`` or ``RestSource``).
        rules: the name rules (default ``NameRules.default()``).
        select_all: also rows that have a history but no file in their folder (default False).
        quicktest_ids: only these rows (default: the selection rule).
        output_dir: write files under this folder instead of GCS and rows (default None).
        dry_run: decide and describe, write nothing (default False).
        verify_only: compare rows with MLflow, write nothing (default False).
        repair: re-export the rows whose last verification was a mismatch (or ``quicktest_ids``),
            replacing their file under a generation precondition (default False).
        oversize_cap: ingest a document over MAX_METRICS_BYTES up to this many bytes, written as
            ``<stem>.oversize.json`` (a name the function ignores); None (default): refuse it.
        workers: rows processed in parallel (default 4).
        settings: the function's settings; None reads the environment.
        attempts: tries of the pipeline on a transient fault (default 3).

    Example::

        ExportOptions(SqlSource(url), quicktest_ids=(42,), dry_run=True)
    """

    source: Source
    rules: NameRules = dataclasses.field(default_factory=NameRules.default)
    select_all: bool = False
    quicktest_ids: tuple[int, ...] = ()
    output_dir: Path | None = None
    dry_run: bool = False
    verify_only: bool = False
    repair: bool = False
    oversize_cap: int | None = None
    workers: int = 4
    settings: Settings | None = None
    attempts: int = batch.DEFAULT_ATTEMPTS

    def __post_init__(self) -> None:
        batch.check_workers(self.workers)
        if self.verify_only and (self.dry_run or self.output_dir is not None):
            raise UsageError("--verify-only checks the rows against MLflow; it cannot be combined with --dry-run or --output-dir")
        if self.verify_only and self.select_all:
            raise UsageError("--verify-only selects the rows whose history came from MLflow; --all does not apply")
        if self.repair and (self.verify_only or self.dry_run or self.output_dir is not None or self.select_all):
            raise UsageError("--repair re-exports mismatched rows; it cannot be combined with --verify-only, "
                             "--dry-run, --output-dir or --all")

    @property
    def needs_gcs(self) -> bool:
        """Whether GCS is read or written: an export, or a dry run of one (it looks for existing files)."""
        return not self.verify_only and self.output_dir is None

    @property
    def mode(self) -> str:
        if self.verify_only:
            return "verify-only"
        if self.repair:
            return "repair"
        if self.dry_run:
            return "dry-run"
        return "output-dir" if self.output_dir is not None else "export"
