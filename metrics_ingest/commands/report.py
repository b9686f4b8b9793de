"""``metrics-ingest report``: a picture of one run, or of several side by side, in one HTML file.

SOURCE is a training_metrics.json (a local path, or gs://BUCKET/OBJECT; a
gs:// folder means its metrics file), or a folder: every metrics file under
it is a run (an ``export-mlflow --output-dir`` folder, say). ``--quicktest ID``
reads the row's history through DATABASE_URL, with its source, generation and
latest ingestion outcome. Several runs: one page comparing them, every series
overlaid by run. The page needs no network: scripts and styles are inlined.

Example::

    $ metrics-ingest report quick_tests/42/training_metrics.json
    $ metrics-ingest report review/ -o review.html                  # every exported run
    $ metrics-ingest report --quicktest 41 --quicktest 42 -o compare.html
    $ metrics-ingest report gs://ml-artifacts/quick_tests/42
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metrics_ingest.commands import describe, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="draw one run or several side by side as one self-contained HTML file",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sources", nargs="*", metavar="SOURCE",
                        help="a training_metrics.json (path or gs://) or a folder of them")
    parser.add_argument("--quicktest", type=positive_int, action="append", default=[], metavar="ID",
                        help="a QuickTest row's history (repeatable; through --database-url / DATABASE_URL)")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="FILE.html",
                        help="where to write the page (default metrics_report.html here)")
    parser.add_argument("--title", default=None, help="the page's title (default: the run's name)")
    parser.add_argument("--database-url", default=None,
                        help="the platform's PostgreSQL for --quicktest (default: $DATABASE_URL, else libpq PG* variables)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ingest.config import Settings
    from metrics_ingest.report import ReportError, SourceUnavailable, load_sources, write_report
    from metrics_ingest.report._sources import default_output

    def fail(message: str, status: int) -> int:
        print(f"metrics-ingest report: error: {message}", file=sys.stderr)
        return status

    if not args.sources and not args.quicktest:
        return fail("give at least one SOURCE or --quicktest ID", 2)
    try:
        settings = Settings.from_env()
        if args.database_url:
            settings = dataclasses.replace(settings, database_url=args.database_url)
    except ValueError as exc:
        return fail(str(exc), 2)
    try:
        runs = load_sources(args.sources, quicktests=args.quicktest, settings=settings)
        output = args.output or default_output()
        path = write_report(runs, output, title=args.title)
    except ReportError as exc:
        return fail(str(exc), 2)
    except SourceUnavailable as exc:
        return fail(str(exc), 1)
    except OSError as exc:
        return fail(f"cannot write {output}: {exc.strerror or exc}", 1)
    size = path.stat().st_size
    print(f"wrote {path} ({len(runs)} run{'s' * (len(runs) != 1)}, {size / 1024:.0f} KiB): open it in a browser")
    return 0
