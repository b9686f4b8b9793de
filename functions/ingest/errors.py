"""The product's errors, split by what the caller should do about them.

* :class:`TransientError`: try again later (database unreachable, GCS 5xx,
  408, 429 or timeout, GCS 401/403 and credentials failures, which an operator
  fixes: see :func:`ingest.gcs.classify_gcs_error`). The Cloud Function lets it
  propagate, so the event is redelivered.
* :class:`BadEvent`: the event itself is malformed; retrying cannot help.
* :class:`Rejected`: the file is bad; recorded as outcome ``rejected`` and
  acknowledged, so a bad file never causes a retry storm.

A reason often quotes the file (a metric name, a JSON Schema message), so
:class:`Rejected` makes it storable and loggable in one place: see
:func:`printable`.
"""

from __future__ import annotations

MAX_REASON = 300


class IngestError(Exception):
    """Base class of the product's errors."""


class TransientError(IngestError):
    """A fault that a later attempt may not hit: raise it to be retried."""


class BadEvent(IngestError, ValueError):
    """The CloudEvent / object resource is malformed (permanent)."""


class Rejected(IngestError):
    """The file is not a valid training_metrics.json; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        reason = printable(reason)
        super().__init__(reason)
        self.reason = reason


class Gone(IngestError):
    """The event's generation no longer exists (replaced or deleted)."""


def printable(text: str, limit: int = MAX_REASON) -> str:
    r"""``text`` escaped and clipped so that PostgreSQL can store it and a log line can encode it.

    A NUL (PostgreSQL text cannot hold it), a lone surrogate (not UTF-8) and
    any other unprintable character become their backslash escape; more than
    ``limit`` characters are clipped with an ellipsis.

    Example::

        printable("loss.a\x00b has 1 values")   # 'loss.a\\x00b has 1 values'
    """
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
        if len(text) > limit:
            text = text[: limit - 1] + "\u2026"
    return text
