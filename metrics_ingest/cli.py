"""The ``metrics-ingest`` command line.

Each subcommand lives in ``metrics_ingest/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called
with the parsed arguments, returning the exit status).

Example::

    $ metrics-ingest --version
    $ metrics-ingest migrate
    $ metrics-ingest replay gs://ml-artifacts/quick_tests --workers 8
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
from collections.abc import Sequence

COMMANDS = ("migrate", "replay", "export-mlflow", "dev", "demo", "report")


class Parser(argparse.ArgumentParser):
    """argparse, plus what Python 3.11's lacks: a mistyped flag gets the nearest real one suggested."""

    def error(self, message: str) -> None:  # type: ignore[override]
        match = re.match(r"unrecognized arguments: (\S+)", message)
        if match:
            hint = suggest(self, match.group(1))
            if hint:
                message += f" (did you mean {hint}?)"
        super().error(message)


def suggest(parser: argparse.ArgumentParser, word: str) -> str | None:
    """The option of ``parser`` (or of the subcommand named in argv) nearest to ``word``, or None."""
    flag = word.split("=", 1)[0]
    options = [o for action in parser._actions for o in action.option_strings]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if name in sys.argv[1:] or name in _ARGV:
                    options += [o for a in sub._actions for o in a.option_strings]
    close = difflib.get_close_matches(flag, options, n=1, cutoff=0.6)
    return close[0] if close else None


_ARGV: list[str] = []


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("metrics-ingest")
    except PackageNotFoundError:  # run from a checkout without installing
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="metrics-ingest",
        description="Ingest training_metrics.json files into the platform's QuickTest rows.",
    )
    parser.add_argument("--version", action="version", version=f"metrics-ingest {version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"metrics_ingest.commands.{name.replace('-', '_')}").register(subparsers)
    return parser


def attach_negative_values(argv: list[str]) -> list[str]:
    """``--shard -1/3`` as ``--shard=-1/3``: argparse takes a value starting with '-' for a flag and says
    "expected one argument"; attached, the option's own check names the flag and the value."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word.startswith("--") and "=" not in word and i + 1 < len(argv) and re.match(r"^-[0-9.]", argv[i + 1]):
            out.append(f"{word}={argv[i + 1]}")
            i += 2
            continue
        out.append(word)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    words = attach_negative_values(list(sys.argv[1:] if argv is None else argv))
    _ARGV[:] = words
    parser = build_parser()
    args = parser.parse_args(words)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
