"""The product's errors, split by what the caller should do about them.

* :class:`TransientError`: try again later (database unreachable, GCS 5xx or
  timeout). The Cloud Function lets it propagate, so the event is redelivered.
* :class:`BadEvent`: the event itself is malformed; retrying cannot help.
* :class:`Rejected`: the file is bad; recorded as outcome ``rejected`` and
  acknowledged, so a bad file never causes a retry storm.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base class of the product's errors."""


class TransientError(IngestError):
    """A fault that a later attempt may not hit: raise it to be retried."""


class BadEvent(IngestError, ValueError):
    """The CloudEvent / object resource is malformed (permanent)."""


class Rejected(IngestError):
    """The file is not a valid training_metrics.json; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Gone(IngestError):
    """The event's generation no longer exists (replaced or deleted)."""
