"""The errors a batch command stops on before its first item, and the one-line form of any message.

``UsageError`` is a bad command-line value (exit status 2); ``SetupError`` is a
set-up that cannot work (no credentials, a database that is unreachable or not
migrated) with its own exit status.

Example::

    try:
        check_database(settings)
    except SetupError as exc:
        print(one_line(str(exc)), file=sys.stderr)
        raise SystemExit(exc.exit_status)
"""

from __future__ import annotations

# A reason or an error shown on one line of output is clipped to this.
LINE_REASON_CHARS = 300


class UsageError(ValueError):
    """A bad command line value (exit status 2)."""


class SetupError(RuntimeError):
    """A batch cannot start: no credentials, database unreachable or not migrated.

    ``exit_status`` is 2 when the command line or environment must change
    (nothing configured, a malformed value, migrations not applied) and 1 when
    what is configured is unreachable (rerunning later may work).

    Example::

        raise SetupError("this database has no training_metrics_ingestions table: run `metrics-ingest migrate`", 2)
    """

    def __init__(self, message: str, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a driver's error has a LINE excerpt below it), clipped."""
    return clip((str(exc).strip().splitlines() or [type(exc).__name__])[0], LINE_REASON_CHARS)


def one_line(text: str | None, limit: int = LINE_REASON_CHARS) -> str:
    r"""``text`` as one line for people: every run of white space (newlines
    included: PostgreSQL's ``LINE 1:`` excerpt and its caret) becomes one
    space, and more than ``limit`` characters are clipped with an ellipsis.

    >>> one_line('syntax error at "x"\nLINE 1: SELECT x\n               ^')
    'syntax error at "x" LINE 1: SELECT x ^'
    """
    return clip(" ".join((text or "").split()), limit)
