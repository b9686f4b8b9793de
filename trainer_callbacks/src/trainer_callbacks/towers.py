"""Which variables belong to which tower."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# A tower given explicitly: a layer/model, an attribute name of the model, or variables.
TowerSpec = Any


def _variables_of(spec: TowerSpec, model: Any, name: str) -> list[Any]:
    if isinstance(spec, str):
        if not hasattr(model, spec):
            raise ValueError(f"tower {name!r}: the model has no attribute {spec!r}")
        spec = getattr(model, spec)
    if hasattr(spec, "trainable_variables"):
        return list(spec.trainable_variables)
    if isinstance(spec, Sequence):
        return list(spec)
    raise ValueError(
        f"Invalid value for tower {name!r}: {type(spec).__name__}. "
        "Expected a layer or model, the name of a model attribute, or a list of variables."
    )


def unique(variables: list[Any]) -> list[Any]:
    """Drop repeats (a variable shared by two layers), keeping order."""
    seen: set[int] = set()
    result = []
    for variable in variables:
        if id(variable) not in seen:
            seen.add(id(variable))
            result.append(variable)
    return result


def resolve_towers(model: Any, towers: Mapping[str, TowerSpec] | None = None) -> dict[str, list[Any]]:
    """Map tower names to their trainable variables.

    Explicit ``towers`` win; otherwise a model with ``query_model`` and
    ``candidate_model`` attributes (TensorFlow Recommenders style) has towers
    ``query`` and ``candidate``; any other model is one tower named ``model``.

    Example::

        resolve_towers(model)                                  # {"query": [...], "candidate": [...]}
        resolve_towers(model, {"user": "user_tower", "item": model.item_tower})
    """
    if towers is None:
        if hasattr(model, "query_model") and hasattr(model, "candidate_model"):
            towers = {"query": model.query_model, "candidate": model.candidate_model}
        else:
            towers = {"model": model}
    if not towers:
        raise ValueError("Invalid value for argument `towers`. Received: towers={}. Expected at least one tower.")
    resolved = {name: unique(_variables_of(spec, model, name)) for name, spec in towers.items()}
    empty = [name for name, variables in resolved.items() if not variables]
    if empty:
        raise ValueError(f"towers {empty} have no trainable variables (is the model built?)")
    return resolved
