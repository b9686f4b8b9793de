"""``metrics-ingest export-mlflow``: move old runs' histories out of MLflow, verified.

Modules: ``model`` (what a run is, whichever way it is read), ``sql`` (read-only
SQL on MLflow's backend database, the fast path), ``rest`` (a tracking
server's REST API), ``mapping`` (a run -> a schema-v1 document, with the
trainer's routing and the name rules), ``verify`` (point-by-point comparison)
``rows`` (which rows), ``engine`` (upload, ingestion through the function's
pipeline, verification), ``report`` (outcomes, summary, progress), ``records``
and ``settle`` (accepted losses, verifications, kept histories), ``access``
(the read pre-check). The worker loop, retries, Ctrl-C, progress and exit
statuses are the batch core's (``metrics_ingest.batch``), shared with replay.

Example::

    from metrics_ingest.mlflow_export import ExportOptions, SqlSource, run_export, format_summary
    report = run_export(ExportOptions(SqlSource("postgresql://reader@/mlflow?host=/cloudsql/p:r:i")))
    print(format_summary(report))
"""

from metrics_ingest.mlflow_export.engine import run_export
from metrics_ingest.mlflow_export.options import ExportOptions
from metrics_ingest.mlflow_export.report import ExportProgress, ExportReport, RowOutcome, format_summary
from metrics_ingest.mlflow_export.mapping import MappingFileError, NameRules, build_document
from metrics_ingest.mlflow_export.model import MlflowRun, Point, SourceError
from metrics_ingest.mlflow_export.rest import RestSource
from metrics_ingest.mlflow_export.sql import SqlSource
from metrics_ingest.mlflow_export.verify import verify_document

__all__ = [
    "ExportOptions",
    "ExportProgress",
    "ExportReport",
    "MappingFileError",
    "MlflowRun",
    "NameRules",
    "Point",
    "RestSource",
    "RowOutcome",
    "SourceError",
    "SqlSource",
    "build_document",
    "format_summary",
    "run_export",
    "verify_document",
]
