"""The docs say what the code does: the format page lists the schema's keys, the code shown
in docs/platform.md is the tested files, and every `metrics-ingest ...` command shown parses."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from metrics_ingest.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "functions" / "ingest" / "schema" / "training_metrics.v1.schema.json"
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "trainer_callbacks" / "README.md"]
INCLUDE = re.compile(r"<!-- include (\S+) [^>]*-->\n```\w*\n(.*?)```\n", re.DOTALL)
# `metrics-ingest SUBCOMMAND ...` up to a shell operator, a comment or the end of the code.
COMMAND = re.compile(r"(?:^|[\s`(])(?:\S*/)?metrics-ingest((?: +[^\s|;&#>`]+)+)")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_format_page_lists_exactly_the_schemas_keys() -> None:
    """docs/format.md's key table and the JSON Schema's top-level properties are the same set, each described."""
    schema = json.loads(SCHEMA.read_text())
    text = (ROOT / "docs" / "format.md").read_text()
    table = text.split("## Keys", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE)
    assert len(documented) == len(set(documented)), "a key is listed twice in docs/format.md"
    assert set(documented) == set(schema["properties"]), (
        f"only in docs/format.md: {sorted(set(documented) - set(schema['properties']))}; "
        f"only in the schema: {sorted(set(schema['properties']) - set(documented))}"
    )
    assert all(spec.get("description") for spec in schema["properties"].values())


def test_the_code_shown_in_the_platform_page_is_the_tested_code() -> None:
    """Each included block of docs/platform.md equals its file in tests/django_platform, byte for byte."""
    text = (ROOT / "docs" / "platform.md").read_text()
    blocks = INCLUDE.findall(text)
    assert {path for path, _ in blocks} >= {
        "tests/django_platform/ml_platform/management/commands/listen_training_metrics.py",
        "tests/django_platform/ml_platform/ranking.sql",
        "tests/django_platform/ml_platform/models.py",
    }
    stale = [path for path, shown in blocks if (ROOT / path).read_text() != shown]
    assert not stale, f"docs/platform.md shows an old copy of {stale}: paste the file's current text into its block"


def _commands() -> list[tuple[str, int, str, bool]]:
    """(page, line, the words after `metrics-ingest`, whether it is a whole command from a code block)."""
    found = []
    for page in PAGES:
        fenced = False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            spans = [line] if fenced else re.findall(r"`([^`]*)`", line)
            for span in spans:
                for match in COMMAND.finditer(" " + span):
                    found.append((_rel(page), number, match.group(1).strip(), fenced))
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_metrics_ingest_command_in_the_docs_parses() -> None:
    """Each `metrics-ingest ...` shown names a subcommand taking its flags; code-block commands parse whole."""
    commands = _commands()
    assert len(commands) >= 20  # the extraction itself works: replay, export-mlflow, migrate, dev, demo are shown
    parser = build_parser()
    subparsers = _subparsers(parser)
    failures = []
    for page, number, words, whole in commands:
        where = f"{page}:{number}: metrics-ingest {words}"
        argv = shlex.split(words)
        name = argv[0]
        if name.startswith("-"):
            argv, sub = argv, parser  # metrics-ingest --version
        elif name not in subparsers:
            failures.append(f"{where}\n    no subcommand {name!r} (known: {', '.join(COMMANDS)})")
            continue
        else:
            sub = subparsers[name]
        flags = [a.split("=", 1)[0] for a in argv if a.startswith("-") and a != "-"]
        unknown = [f for f in flags if f not in sub._option_string_actions]
        if unknown:
            failures.append(f"{where}\n    {name}'s parser has no {', '.join(unknown)}")
            continue
        if whole:
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr), contextlib.suppress(SystemExit):
                parser.parse_args(argv)
                stderr = None
            if stderr is not None:
                failures.append(f"{where}\n    does not parse: {stderr.getvalue().strip().splitlines()[-1]}")
    assert not failures, f"{len(failures)} command(s) shown in the docs do not parse:\n" + "\n".join(failures)


@pytest.mark.parametrize("page", ["docs/format.md", "docs/platform.md", "README.md"])
def test_links_stay_inside_the_repository(page: str) -> None:
    """Every relative link of the page resolves to a file of the repository; none points outside it."""
    path = ROOT / page
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    assert targets
    for target in targets:
        assert "://" not in target or target.startswith("https://"), target
        if "://" in target:
            continue
        resolved = (path.parent / target).resolve()
        assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{page} links to {target}"
