"""The batch core under ``replay`` and ``export-mlflow``: one module per job.

- ``errors``: UsageError, SetupError and the one-line form of a message;
- ``storage``: the shared storage client (credentials checked once);
- ``database``: the platform database pre-check;
- ``workers``: the bounded worker loop;
- ``retry``: the one retry policy for transient faults;
- ``interrupt``: Ctrl-C as a flag;
- ``progress``: the bar or the plain lines;
- ``report``: outcome counts and the exit status.

Example::

    from metrics_ingest.batch import InterruptFlag, bounded, check_database, make_storage_client
"""

from metrics_ingest.batch.database import check_database
from metrics_ingest.batch.errors import LINE_REASON_CHARS, SetupError, UsageError, clip, first_line, one_line
from metrics_ingest.batch.interrupt import InterruptFlag
from metrics_ingest.batch.progress import Progress
from metrics_ingest.batch.report import BatchReport
from metrics_ingest.batch.retry import DEFAULT_ATTEMPTS, with_retries
from metrics_ingest.batch.storage import CREDENTIALS_HELP, make_storage_client
from metrics_ingest.batch.workers import MAX_WORKERS, bounded, check_workers

__all__ = [
    "BatchReport",
    "CREDENTIALS_HELP",
    "DEFAULT_ATTEMPTS",
    "InterruptFlag",
    "LINE_REASON_CHARS",
    "MAX_WORKERS",
    "Progress",
    "SetupError",
    "UsageError",
    "bounded",
    "check_database",
    "check_workers",
    "clip",
    "first_line",
    "make_storage_client",
    "one_line",
    "with_retries",
]
