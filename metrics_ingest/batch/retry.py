"""The one retry policy of the batch commands: a transient fault (``ingest.errors.TransientError``)
is tried again with exponential backoff, anything else is not.

Example::

    result = with_retries(ingest_object, ref, attempts=3, settings=settings, event_id="replay:ab12:0")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ingest.errors import TransientError

T = TypeVar("T")

DEFAULT_ATTEMPTS = 3


def with_retries(func: Callable[..., T], *args: Any, attempts: int = DEFAULT_ATTEMPTS, **kwargs: Any) -> T:
    """``func(*args, **kwargs)``, tried up to ``attempts`` times while it raises TransientError
    (0.5 s, 1 s, 2 s ... at most 8 s apart); the last error is raised as it is."""
    retrying = Retrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.5, max=8),
        reraise=True,
    )
    return retrying(func, *args, **kwargs)


__all__ = ["DEFAULT_ATTEMPTS", "TransientError", "with_retries"]
