"""``--output-dir``: the document as a local file, never outside the folder.

A row's ``gcs_artifacts_path`` is platform data: ``..``, an empty part
(``gs://b//tmp/x``) or a symlink could point anywhere. The target must
resolve inside the folder, or the row fails with the reason.

Example::

    path = local_target(Path("review"), "ml-artifacts", "quick_tests/42", "training_metrics.json")
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


class OutsideFolder(ValueError):
    """The row's folder would resolve outside ``--output-dir``."""


def local_target(output_dir: Path, bucket: str, folder: str, filename: str) -> Path:
    """``output_dir/bucket/folder/filename``; raises OutsideFolder unless it resolves inside ``output_dir``."""
    parts = [bucket, *folder.split("/")]
    if any(part in ("", ".", "..") for part in parts) or "\\" in folder or "\x00" in folder:
        raise OutsideFolder(
            f"gs://{bucket}/{folder} has an empty, '.' or '..' part: it would not stay inside --output-dir; nothing written"
        )
    root = output_dir.resolve()
    target = (root.joinpath(*parts) / filename).resolve()
    if not target.is_relative_to(root):
        raise OutsideFolder(f"gs://{bucket}/{folder} resolves outside --output-dir (a link?); nothing written")
    return target


def write_atomically(target: Path, data: bytes) -> None:
    """Write through a temporary file and a rename: a reviewer never sees half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, target)
