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
    $ metrics-ingest export-mlflow --mlflow-database-url ... --repair                 # rows whose last check was a mismatch
    $ metrics-ingest export-mlflow --accept-loss --quicktest 42 --reason "run deleted from MLflow in 2024"
    $ metrics-ingest export-mlflow --restore --quicktest 42      # put back the history --all replaced

Outcomes per row: exported (+verified or +mismatch), exists (the folder
already has a file: left as it is, ingested if the row still lacks a
history), skipped (a history the function ingested from a file is never
replaced), missing_run (MLflow does not know the run id), failed. With
--verify-only: verified, mismatch, missing_run, failed. A missing_run or
failed row whose loss was accepted (--accept-loss) is listed apart and done.
A history --all replaces is kept first (--restore puts it back).

Exit status: 0 when every selected row ends exported+verified, exists,
skipped or an accepted loss, and (default selection) no row's last
verification is a mismatch (with --verify-only: verified; with --dry-run: no
missing_run or failed),
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


def output_folder(text: str) -> Path:
    """argparse ``type=`` for --output-dir: a folder (or one to create); "" or a file is a usage error."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty name is not a folder")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    return path


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
        "--output-dir", type=output_folder, metavar="DIR",
        help="write DIR/BUCKET/FOLDER/training_metrics.json for review instead; touches neither GCS nor rows",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="show, per run, where each MLflow key would land; write nothing"
    )
    parser.add_argument("--verify-only", action="store_true", help="compare the rows with MLflow; write nothing")
    parser.add_argument(
        "--repair", action="store_true",
        help="re-export the --quicktest rows, else every row whose last verification was a mismatch: replace its "
        "file (only the mismatched generation), ingest, verify again",
    )
    parser.add_argument(
        "--oversize-cap", type=positive_int, metavar="BYTES",
        help="export a document over MAX_METRICS_BYTES up to BYTES as <name>.oversize.json (which the function "
        "ignores) and ingest it here; default: such a row fails with the size",
    )
    settle = parser.add_argument_group("settling rows by hand (no MLflow source needed)")
    settle.add_argument(
        "--accept-loss", action="store_true",
        help="record that the --quicktest rows' MLflow history may be lost (who, when, --reason); the teardown "
        "check then lists them apart",
    )
    settle.add_argument("--reason", metavar="TEXT", default="", help="why (with --accept-loss)")
    settle.add_argument(
        "--restore", action="store_true",
        help="put back the history an export replaced in the --quicktest rows (from the kept copy)",
    )
    add_batch_options(parser, items="rows", report="every row's outcome")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `metrics-ingest --help` stays instant.
    from ingest.config import Settings

    from metrics_ingest.batch import SetupError, UsageError, check_database, make_storage_client, one_line
    from metrics_ingest.mlflow_export import ExportOptions, ExportProgress, MappingFileError, NameRules, RestSource, SqlSource
    from metrics_ingest.mlflow_export.access import check_reads
    from metrics_ingest.mlflow_export.engine import format_summary, run_export
    from metrics_ingest.mlflow_export.records import TABLES

    def fail(message: str, status: int) -> int:
        print(f"metrics-ingest export-mlflow: error: {one_line(message, 600)}", file=sys.stderr)
        return status

    try:
        settings = Settings.from_env()
        if args.database_url:
            settings = dataclasses.replace(settings, database_url=args.database_url)
        if args.accept_loss or args.restore:
            return _settle(args, settings)
        if bool(args.mlflow_database_url) == bool(args.tracking_uri):
            raise UsageError("give exactly one of --mlflow-database-url (read-only SQL, fast) or --tracking-uri (REST)")
        if args.reason:
            raise UsageError("--reason goes with --accept-loss")
        try:
            source = SqlSource(args.mlflow_database_url) if args.mlflow_database_url else RestSource(args.tracking_uri)
        except UsageError:
            raise
        except ValueError as exc:  # urllib's "Invalid IPv6 URL" and the like: name the flag, not the value
            flag = "--mlflow-database-url" if args.mlflow_database_url else "--tracking-uri"
            raise UsageError(f"{flag}: not a valid URL ({type(exc).__name__}: {str(exc)[:80]})") from None
        rules = NameRules.load(args.mapping) if args.mapping else NameRules.default()
        options = ExportOptions(
            source=source,
            rules=rules,
            select_all=args.all,
            quicktest_ids=tuple(args.quicktest),
            output_dir=args.output_dir,
            dry_run=args.dry_run,
            verify_only=args.verify_only,
            repair=args.repair,
            oversize_cap=args.oversize_cap,
            workers=args.workers,
            settings=settings,
        )
        # Everything checked once before the first row: one clear line, not one failure per row.
        client = make_storage_client(options.workers) if options.needs_gcs else None
        check_database(settings, tables=TABLES)
        source.check()
        check_reads(source)
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


def _settle(args: argparse.Namespace, settings: object) -> int:
    """--accept-loss or --restore: our own records only, no MLflow read (UsageError for a bad request)."""
    from metrics_ingest.batch import UsageError, check_database
    from metrics_ingest.mlflow_export.records import TABLES
    from metrics_ingest.mlflow_export.settle import accept_loss, restore

    if args.accept_loss and args.restore:
        raise UsageError("--accept-loss and --restore are two different requests: give one")
    check_database(settings, tables=TABLES)  # type: ignore[arg-type]
    if args.accept_loss:
        done = accept_loss(settings, list(args.quicktest), args.reason)  # type: ignore[arg-type]
        lines = [f"accepted loss for quicktest {d['quicktest_id']} (run {d['mlflow_run_id']}) by {d['decided_by']} "
                 f"at {d['decided_at']}: {d['reason']}" for d in done]
        report = {"mode": "accept-loss", "decisions": done, "exit_status": 0}
    else:
        done = restore(settings, list(args.quicktest))  # type: ignore[arg-type]
        lines = [f"quicktest {d['quicktest_id']}: " + (f"restored the history replaced at {d['replaced_at']} "
                 f"(copy {d['copy_id']})" if d["restored"] else "no replaced history kept; nothing changed") for d in done]
        report = {"mode": "restore", "rows": done, "exit_status": 0 if all(d["restored"] for d in done) else 1}
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print("\n".join(lines))
    return int(report["exit_status"])  # type: ignore[call-overload]
