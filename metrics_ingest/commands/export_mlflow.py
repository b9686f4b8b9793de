"""``metrics-ingest export-mlflow``: move every old run's history out of MLflow, verified.

For each selected QuickTest row (default: an mlflow_run_id and no history),
the MLflow run becomes a schema-v1 training_metrics.json in the row's folder
(never overwriting a file there), is ingested at once through the function's
own pipeline, and the row is compared with MLflow point by point.

Example::

    $ export DATABASE_URL=postgresql://...          # the platform's database (rows, ingestion records)
    $ metrics-ingest export-mlflow --mlflow-database-url postgresql://reader@/mlflow?host=/cloudsql/P:R:mlflow-db --dry-run
    $ metrics-ingest export-mlflow --mlflow-database-url ... --workers 8
    $ metrics-ingest export-mlflow --mlflow-database-url ... --verify-only
    $ metrics-ingest export-mlflow --tracking-uri https://mlflow-server-xyz.a.run.app --quicktest 42 --output-dir review/

Outcomes per row: exported (+verified or +mismatch), exists (the folder
already has a file: left as it is, ingested if the row still lacks a
history), missing_run (MLflow does not know the run id), failed. With
--verify-only: verified, mismatch, missing_run, failed.

Exit status: 0 when every selected row ends exported+verified or exists
(with --verify-only: verified; with --dry-run: no missing_run or failed),
1 otherwise (MLflow, GCS or the database unreachable included), 2 for a
usage error (no source or two, a bad option or mapping file, a database that
is not an MLflow store, DATABASE_URL unset or malformed, migrations not
applied), 130 when interrupted (Ctrl-C: rows in flight finish; every row is
complete or untouched; run again to finish).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from metrics_ingest.commands import add_batch_options, describe, pipeline_logs, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-mlflow",
        help="export old runs' histories from MLflow into their rows and folders, verified point by point",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("where MLflow is read (one of)")
    source.add_argument(
        "--mlflow-database-url",
        metavar="URL",
        help="MLflow's backend database (PostgreSQL), read-only SQL: the fast path "
        "(postgresql://USER@/DB?host=/cloudsql/PROJECT:REGION:INSTANCE, or through the Cloud SQL Auth Proxy)",
    )
    source.add_argument(
        "--tracking-uri",
        metavar="URL",
        help="an MLflow tracking server's REST API (auth: MLFLOW_TRACKING_TOKEN, else a Google identity token "
        "for *.run.app URLs)",
    )
    rows = parser.add_argument_group("which rows")
    rows.add_argument(
        "--all", action="store_true", help="also rows that have a history but no metrics file in their folder"
    )
    rows.add_argument(
        "--quicktest", type=positive_int, action="append", metavar="ID", default=[],
        help="only this QuickTest row (repeatable)",
    )
    parser.add_argument("--mapping", type=Path, metavar="FILE", help="extra name rules (JSON; see the README)")
    parser.add_argument(
        "--output-dir", type=Path, metavar="DIR",
        help="write DIR/BUCKET/FOLDER/training_metrics.json for review instead; touches neither GCS nor rows",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="show, per run, where each MLflow key would land; write nothing"
    )
    parser.add_argument("--verify-only", action="store_true", help="compare the rows with MLflow; write nothing")
    add_batch_options(parser, items="rows", report="every row's outcome")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `metrics-ingest --help` stays instant.
    from ingest.config import Settings

    from metrics_ingest.mlflow_export import ExportOptions, ExportProgress, MappingFileError, NameRules, RestSource, SqlSource
    from metrics_ingest.mlflow_export.engine import format_summary, run_export
    from metrics_ingest.replay import SetupError, UsageError, check_database, make_storage_client

    def fail(message: str, status: int) -> int:
        print(f"metrics-ingest export-mlflow: error: {message}", file=sys.stderr)
        return status

    try:
        if bool(args.mlflow_database_url) == bool(args.tracking_uri):
            raise UsageError("give exactly one of --mlflow-database-url (read-only SQL, fast) or --tracking-uri (REST)")
        settings = Settings.from_env()
        if args.database_url:
            settings = dataclasses.replace(settings, database_url=args.database_url)
        source = SqlSource(args.mlflow_database_url) if args.mlflow_database_url else RestSource(args.tracking_uri)
        rules = NameRules.load(args.mapping) if args.mapping else NameRules.default()
        options = ExportOptions(
            source=source,
            rules=rules,
            select_all=args.all,
            quicktest_ids=tuple(args.quicktest),
            output_dir=args.output_dir,
            dry_run=args.dry_run,
            verify_only=args.verify_only,
            workers=args.workers,
            settings=settings,
        )
        # Everything checked once before the first row: one clear line, not one failure per row.
        client = make_storage_client(options.workers) if options.needs_gcs else None
        check_database(settings)
        source.check()
    except (UsageError, MappingFileError, ValueError) as exc:
        return fail(str(exc), 2)
    except SetupError as exc:
        return fail(str(exc), exc.exit_status)

    import psycopg2

    progress = ExportProgress(sys.stderr, dry_run=args.dry_run)
    print(f"reading {source.description} ...", file=sys.stderr, flush=True)
    try:
        with pipeline_logs(args.verbose):
            report = run_export(options, client=client, on_selected=progress.selected, on_outcome=progress.update)
    except SetupError as exc:
        return fail(str(exc), exc.exit_status)
    except psycopg2.Error as exc:  # the platform database went away after the set-up check
        return fail(f"cannot read the QuickTest rows: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}", 1)
    finally:
        progress.close()
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_summary(report))
    return report.exit_status
