"""How a failed GCS read is classified, and the memory budget, on their own."""

from __future__ import annotations

import threading

import pytest
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.cloud.storage.exceptions import DataCorruption

from ingest.errors import Gone, Rejected, TransientError
from ingest.gcs import classify_gcs_error
from ingest.memory import MemoryBudget
from ingest.objects import ObjectRef

REF = ObjectRef("ml-artifacts", "quick_tests/1/training_metrics.json", 17)


@pytest.mark.parametrize(
    ("exc", "expected", "fragment"),
    [
        (gexc.NotFound("gone"), Gone, "no longer exists"),
        (gexc.ServiceUnavailable("down"), TransientError, "ServiceUnavailable"),
        (gexc.TooManyRequests("slow down"), TransientError, "TooManyRequests"),
        (gexc.from_http_status(408, "late"), TransientError, "408"),
        (gexc.Forbidden("no"), TransientError, "storage.objects.get"),
        (gexc.Unauthorized("who"), TransientError, "storage.objects.get"),
        (gexc.BadRequest("bad"), Rejected, "HTTP 400"),
        (gexc.PreconditionFailed("x"), Rejected, "HTTP 412"),
        (gexc.RequestRangeNotSatisfiable("empty"), Rejected, "the file is empty"),
        (gexc.RetryError("deadline", None), TransientError, "RetryError"),
        (auth_exc.TransportError("metadata server"), TransientError, "TransportError"),
        (auth_exc.RefreshError("refused"), TransientError, "RefreshError"),
        (DataCorruption(None, "checksum mismatch"), TransientError, "DataCorruption"),
        (ConnectionResetError("reset"), TransientError, "ConnectionResetError"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_gcs_errors_are_classified_by_what_a_retry_can_change(exc: BaseException, expected: type, fragment: str) -> None:
    """404 is Gone; 5xx/408/429/401/403, transport, credentials and checksum failures are transient; other 4xx reject."""
    error = classify_gcs_error(exc, REF)
    assert type(error) is expected
    assert fragment in str(error), str(error)


def test_non_gcs_errors_are_not_classified() -> None:
    """An exception that is not a GCS or transport failure is left to the caller (None)."""
    assert classify_gcs_error(AttributeError("bug"), REF) is None
    assert classify_gcs_error(ValueError("bug"), REF) is None


def test_memory_budget_waits_until_enough_is_released() -> None:
    """A hold that would pass the capacity waits until earlier holds end; an oversize hold takes the whole budget."""
    budget = MemoryBudget(100)
    entered = threading.Event()

    def second() -> None:
        with budget.hold(60):
            entered.set()

    with budget.hold(60):
        worker = threading.Thread(target=second)
        worker.start()
        assert not entered.wait(0.3)  # 60 + 60 > 100: waits
    assert entered.wait(5)
    worker.join(5)
    with budget.hold(10**9):
        assert budget.in_use == 100
    with budget.hold(0):
        assert budget.in_use == 0


def test_memory_budget_grants_holds_in_arrival_order() -> None:
    """A small hold that would fit does not overtake a large one already waiting (no starvation)."""
    budget = MemoryBudget(100)
    order: list[str] = []

    def hold(name: str, weight: int) -> None:
        with budget.hold(weight):
            order.append(name)

    with budget.hold(50):
        large = threading.Thread(target=hold, args=("large", 100))
        large.start()
        large.join(0.2)
        assert large.is_alive()  # 50 + 100 > 100: the large hold waits
        small = threading.Thread(target=hold, args=("small", 10))
        small.start()
        small.join(0.3)
        assert small.is_alive() and order == []  # 50 + 10 fits, but the large one is first in line
    large.join(5)
    small.join(5)
    assert order == ["large", "small"] and budget.in_use == 0
