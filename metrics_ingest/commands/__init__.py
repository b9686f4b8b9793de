"""The subcommands of ``metrics-ingest``, one module each (see ``metrics_ingest.cli``)."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Iterator


def describe(docstring: str | None) -> str:
    """A command module's docstring as ``--help`` shows it: reST literals and
    ``Example::`` markers become plain text."""
    text = (docstring or "").replace("``", "")
    return re.sub(r"::$", ":", text, flags=re.M)


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts that must be at least 1 (a bad value exits 2 with the usage)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# Each worker holds a database connection; metrics_ingest.batch.MAX_WORKERS is
# the same number (not imported here, so that --help stays instant).
MAX_WORKERS = 256


def workers_count(text: str) -> int:
    """argparse ``type=`` for --workers: 1 to MAX_WORKERS (a bad value exits 2 with the usage)."""
    value = positive_int(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_WORKERS} (each worker holds a database connection), got {value}"
        )
    return value


def add_batch_options(parser: argparse.ArgumentParser, *, items: str, report: str) -> None:
    """The options every command that ingests many files shares (replay, export-mlflow):
    ``--workers``, ``--json``, ``--database-url`` and ``--verbose``.

    Example::

        add_batch_options(parser, items="objects", report="every object's outcome")
    """
    parser.add_argument(
        "--workers",
        type=workers_count,
        default=4,
        help=f"{items} in parallel, one database connection each (default 4, at most {MAX_WORKERS})",
    )
    parser.add_argument("--json", action="store_true", help=f"print a machine-readable report with {report}")
    parser.add_argument(
        "--database-url",
        default=None,
        help="the platform's PostgreSQL (default: $DATABASE_URL, else libpq PG* variables)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also print the pipeline's JSON log line for each ingestion on stderr"
    )


def port(text: str) -> int:
    """argparse ``type=`` for a TCP port, 0 meaning any free one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535 (0: any free port), got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse ``type=`` for a duration in seconds that must be more than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def bucket_name(text: str) -> str:
    """argparse ``type=`` for a GCS bucket name (lowercase letters, digits, -, _ and .)."""
    from metrics_ingest.replay import BUCKET_NAME

    if not BUCKET_NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid bucket name (3-222 lowercase letters, digits, '-', '_' or '.')"
        )
    return text


@contextlib.contextmanager
def pipeline_logs(verbose: bool) -> Iterator[None]:
    """The pipeline logs one JSON line per object for Cloud Logging; here the
    progress lines and the summary say the same, so those lines are shown only
    with --verbose (on stderr, never mixed into the --json output). The logger
    is put back as it was afterwards."""
    import logging

    from ingest.logs import JsonFormatter, LOGGER

    saved = (list(LOGGER.handlers), LOGGER.propagate, LOGGER.level)
    handler: logging.Handler
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        LOGGER.setLevel(logging.INFO)
    else:
        handler = logging.NullHandler()
    LOGGER.handlers = [handler]
    LOGGER.propagate = False
    try:
        yield
    finally:
        LOGGER.handlers, LOGGER.propagate = saved[0], saved[1]
        LOGGER.setLevel(saved[2])
