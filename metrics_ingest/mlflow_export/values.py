"""Names and values as a schema-v1 document holds them (the mapping's rules for what MLflow allows and the format does not).

- An empty metric, param or tag name (older MLflow stores allow it; the format
  needs at least one character) becomes ``(empty name)``, or ``(empty name 2)``,
  ... when that name is taken too: the values are kept, the run never lost.
- A param becomes a JSON number or boolean only where that value's own JSON
  spelling gives MLflow's string back exactly, even after the row's jsonb
  (``"2048"`` -> 2048, ``"0.01"`` -> 0.01, ``"true"`` -> true); anything else
  stays the string (``"True"``, ``"1e+20"``, ``"007"``, ``"-0"``, ``"[128, 64]"``).
- ``-0.0`` is written as ``0.0``: PostgreSQL's jsonb has no negative zero.

Example::

    param_value("2048"), param_value("[128, 64]")     # 2048, '[128, 64]'
    document_names(["", "loss"])                     # {'': '(empty name)', 'loss': 'loss'}
    document_problem(document)                       # None, or why the function would refuse it
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from metrics_ingest.mlflow_export.model import MlflowRun, clean_value

EMPTY_NAME = "(empty name)"
# Integers beyond 2**53 stay strings: a double (JavaScript's only number) cannot hold them exactly.
_EXACT_INT = 2**53
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")


def stored_value(value: float) -> float | None:
    """A logged value as the document (and the row) holds it: ``clean_value``, and -0.0 as 0.0
    (PostgreSQL's jsonb has no negative zero: the row would hold 0 whatever the file says)."""
    cleaned = clean_value(value)
    return 0.0 if cleaned == 0 else cleaned


def param_value(text: str) -> str | int | float | bool:
    """MLflow's param string as the document holds it: a number or boolean only where
    its JSON spelling gives ``text`` back exactly, even after the row's jsonb.

    Example::

        param_value("2048"), param_value("0.01"), param_value("true")   # 2048, 0.01, True
        param_value("True"), param_value("1e+20"), param_value("[1]")   # unchanged strings
    """
    if text in ("true", "false"):
        return text == "true"
    if _INT.fullmatch(text):
        number = int(text)
        return number if abs(number) < _EXACT_INT and str(number) == text else text  # not "-0"
    # A float whose shortest spelling is the text itself. Not "-0.0" (jsonb has no
    # negative zero) and no positive exponent (jsonb prints 1e+20 as a 21-digit
    # integer, which reads back as another spelling).
    if "e+" in text or text.startswith("-0") and text.strip("-0.") == "":
        return text
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) and repr(number) == text else text


def param_text(value: Any) -> str | None:
    """The string a document's param value stands for (what verification compares with MLflow's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return value if isinstance(value, str) else repr(value)
    return None


def document_names(names: Iterable[str]) -> dict[str, str]:
    """MLflow name -> the document's: the same name, except that an empty one becomes
    ``(empty name)`` (``(empty name 2)``, ... when taken): the format needs one character.

    Example::

        document_names(["", "loss"])          # {"": "(empty name)", "loss": "loss"}
    """
    names = list(names)
    renamed = {name: name for name in names if name}
    if "" in names:
        taken = set(renamed)
        candidate, n = EMPTY_NAME, 1
        while candidate in taken:
            n += 1
            candidate = f"(empty name {n})"
        renamed[""] = candidate
    return renamed


def with_document_names(run: MlflowRun) -> MlflowRun:
    """``run`` with its metric, param and tag names as the document spells them (see :func:`document_names`)."""
    if "" not in run.metrics and "" not in run.params and "" not in run.tags:
        return run  # the usual case: nothing to copy
    metrics, params, tags = (document_names(d) for d in (run.metrics, run.params, run.tags))
    return dataclasses.replace(
        run,
        metrics={metrics[k]: v for k, v in run.metrics.items()},
        params={params[k]: v for k, v in run.params.items()},
        tags={tags[k]: v for k, v in run.tags.items()},
    )


def document_problem(document: Mapping[str, Any], data: bytes | None = None) -> str | None:
    """Why the ingestion function would refuse ``document`` (its own validator), or None.

    ``data``: the document's JSON bytes, when at hand (lets the validator skip a string walk).
    """
    from ingest.document import validate
    from ingest.errors import Rejected

    try:
        validate(dict(document), data.decode("utf-8") if data is not None else None)
    except Rejected as exc:
        return str(exc)
    return None
