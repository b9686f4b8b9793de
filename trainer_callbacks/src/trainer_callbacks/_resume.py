"""The resume rules: when a run continues the existing file, and what it keeps of it.

- ``resume=None`` (default): training that starts past epoch 0 (a ``BackupAndRestore``
  restore, ``fit(initial_epoch=N)``) continues the file; training from epoch 0 is a
  new run, whose first save replaces the file. Until training starts, changes are
  journaled, to be applied again on top of a file that is continued.
- ``resume=True`` always continues; ``resume=False`` never reads.
- A file is continued only if it is this run's: its ``run_id`` is kept; a file whose
  ``run_id`` differs from this run's known identity (``run_id=`` or Vertex AI's
  ``CLOUD_ML_JOB_ID``) is another run's: never merged, a new document replaces it.
- Epochs of the file at or past the restart point are an earlier attempt's, not kept by
  the checkpoint: they are dropped (said in a warning) and written again as they re-run.
- A file of a newer ``schema_version`` is refused, never rewritten as version 1; a last
  row a writer left ragged is padded with null.

Example::

    resume = Resume(store, mode=None, run_id=None, job_id=None)
    doc, generation = resume.continue_file(doc, "training starts at epoch 3", first_epoch=3)
"""

from __future__ import annotations

import logging
from typing import Any

from trainer_callbacks import document
from trainer_callbacks._aligned_document import AlignedDocument, new_run_id, repair_ragged_last_row

logger = logging.getLogger("trainer_callbacks")

UNDECIDED = "undecided"  # resume=None, training not started: calls are journaled
TO_READ = "to-read"  # the existing file must be read (and continued) before anything else
READY = "ready"  # continuing a file read, or a new document


class Resume:
    """Where the document stands with respect to the existing file; see the module docstring."""

    def __init__(self, store: Any, *, mode: bool | None, run_id: str | None, job_id: str | None) -> None:
        self.store = store
        self.mode = mode
        self.own_run_id = run_id or job_id  # None: not known until a new run starts (then generated)
        self._explicit, self._job_id = run_id, job_id
        self.state = UNDECIDED if mode is None else TO_READ if mode else READY
        self.journal: list[tuple[str, tuple[Any, ...]]] = []
        self.start_seen = False

    def record(self, operation: str, args: tuple[Any, ...]) -> None:
        if self.state == UNDECIDED:
            self.journal.append((operation, args))

    def start_new(self, doc: AlignedDocument, why: str) -> None:
        """A new document: what was logged so far stands, and the first save replaces any file."""
        self.journal = []
        self.state = READY
        if "run_id" not in doc.data:
            doc.set_run_id(new_run_id(self._explicit, self._job_id))
        logger.info("%s: a new document (run_id %s); its first save replaces any earlier %s", why, doc.data["run_id"], self.store.uri)

    def continue_file(self, doc: AlignedDocument, why: str, first_epoch: int | None = None) -> tuple[AlignedDocument, int | None]:
        """Read the existing file and continue it: returns the document to use and the file's generation.

        On failure the state stays ``TO_READ``: the next use tries again, and no save
        replaces a file that could not be read.
        """
        existing = self.store.read()
        if existing is None:
            logger.info("%s: no %s to continue; starting a new one", why, self.store.uri)
            self.start_new(doc, why)
            return doc, 0
        data, generation = existing
        # The plan's sketch wrote json.dumps' NaN/Infinity tokens: read them as null, as the function does.
        raw = document.loads(data, non_finite="null")
        repair_ragged_last_row(raw, f"{why}: {self.store.uri}")
        loaded = document.normalize(raw)
        theirs = loaded.get("run_id")
        if self.own_run_id is not None and theirs is not None and theirs != self.own_run_id:
            logger.warning(
                "%s: %s belongs to another run (run_id %r; this run is %r): it is not continued, "
                "a new document replaces it at the first save", why, self.store.uri, theirs, self.own_run_id,
            )
            self.start_new(doc, why)
            return doc, generation
        journal, self.journal = self.journal, []  # only now: a file refused above keeps it for the next try
        loaded.pop("error", None)
        loaded["status"] = "running"
        continued = AlignedDocument(loaded)
        if theirs is None:
            continued.set_run_id(self.own_run_id or new_run_id(None, None))
        continued.stale = set(loaded["epochs"])
        if first_epoch is not None:
            dropped = continued.drop_from(first_epoch)
            if dropped:
                logger.warning(
                    "%s: %s holds %d epoch(s) from an earlier attempt at or past the restart point (%s%s); "
                    "the checkpoint did not keep them, so they are dropped and written again as they re-run",
                    why, self.store.uri, len(dropped), ", ".join(map(str, dropped[:5])), "..." if len(dropped) > 5 else "",
                )
        for operation, args in journal:  # what this process logged before the decision
            try:
                getattr(continued, operation)(*args)
            except ValueError as error:  # e.g. histogram edges other than the file's
                logger.warning("%s: a value logged before training started does not fit the file and is dropped: %s", why, error)
        logger.info("%s: continuing %s (run_id %s, %d epochs kept)", why, self.store.uri, continued.data["run_id"], len(continued.epochs))
        self.state = READY
        return continued, generation

    def warn_missing(self, doc: AlignedDocument, why: str, first_epoch: int) -> None:
        """Warn about epochs before ``first_epoch`` that the continued file does not have.

        They were trained by an earlier attempt that ended without saving them (a
        process killed outright, without BackupAndRestore among the callbacks or
        ``flush_every``).
        """
        present = {e for e in doc.epochs if e < first_epoch}
        if len(present) == first_epoch:
            return
        missing, epoch = [], 0
        while len(missing) < 5 and epoch < first_epoch:  # bounded: at most len(present) + 5 steps
            if epoch not in present:
                missing.append(epoch)
            epoch += 1
        lacking = first_epoch - len(present)
        logger.warning(
            "%s, but %s has no record of %d earlier epoch(s) (%s%s): the attempt that trained them ended "
            "without saving them. Keep BackupAndRestore among the callbacks (the collector saves with each backup), "
            "or use flush_every=SECONDS, to keep epochs through a preemption.",
            why, self.store.uri, lacking, ", ".join(map(str, missing)), "..." if lacking > len(missing) else "",
        )
