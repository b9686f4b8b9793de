"""The ``metrics-ingest`` command line.

Each subcommand lives in ``metrics_ingest/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called
with the parsed arguments, returning the exit status).

Example::

    $ metrics-ingest migrate
    $ metrics-ingest replay gs://ml-artifacts/quick_tests --workers 8
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS = ("migrate", "replay", "export-mlflow", "dev", "demo", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metrics-ingest",
        description="Ingest training_metrics.json files into the platform's QuickTest rows.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"metrics_ingest.commands.{name.replace('-', '_')}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
