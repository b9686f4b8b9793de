"""Why a document fails the schema, found without copying a large value.

jsonschema-rs builds each error with a full copy of the failing value (its
``instance``, converted back to Python, and a message quoting it): for a
2,000,000-item array that breaks ``maxItems`` that is ~1.3 GiB for one
13 MiB file. So the reason is located here instead: walking the schema and
the document together, asking the compiled validator only yes-or-no
questions (``is_valid``, which copies nothing), checking the keywords that
apply to a container itself (type, sizes, required, names) in Python, and
descending into the first child that fails. The validator describes an error
itself only for a small value (a scalar, a short string, a small container).

Example::

    locate(schema(), {"epochs": "x"}, validator_for)   # "at $.epochs: expected array, got a string"
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# A value this small is described by the validator itself (its copy is cheap).
_SMALL_ITEMS = 64
_SMALL_STRING = 1024
_JSON_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
}


def _small(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= _SMALL_STRING
    if isinstance(value, (dict, list)):
        if len(value) > _SMALL_ITEMS:
            return False
        children = value.values() if isinstance(value, dict) else value
        return all(_small(c) for c in children) and (
            not isinstance(value, dict) or all(len(k) <= _SMALL_STRING for k in value)
        )
    return True


def _finite(value: Any) -> Any:
    """An overflowing literal (1e999, parsed as infinity) as a finite number of its sign, for the
    validator (which sees infinity as null): judged as the number the file spells."""
    if type(value) is float and not math.isfinite(value):
        return math.copysign(0.5, value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _path(parts: list[Any]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


class Locator:
    """Finds the first schema error in a document, in bounded memory.

    Args:
        root: the whole schema (``$ref`` resolves against its ``$defs``).
        compile: makes a validator for a schema (``jsonschema_rs.validator_for``).
        describe: a jsonschema-rs error, its path prefix, the schema part validated -> a reason.
        json_type: a value -> its JSON type in words ('an array').
    """

    def __init__(self, root: dict[str, Any], compile: Callable[[Any], Any],
                 describe: Callable[[Any, list[Any], Any], str], json_type: Callable[[Any], str]) -> None:
        self.root = root
        self._compile = compile
        self._describe = describe
        self._json_type = json_type
        self._validators: dict[int, Any] = {}

    def _resolve(self, node: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            assert ref.startswith("#/"), ref  # the schema refers to its own $defs only
            target: Any = self.root
            for part in ref[2:].split("/"):
                target = target[part]
            node = target
        return node

    def _validator(self, node: Any) -> Any:
        found = self._validators.get(id(node))
        if found is None:
            schema = node if node is self.root else {**node, "$defs": self.root.get("$defs", {})}
            if isinstance(node, bool):
                schema = node
            found = self._validators[id(node)] = self._compile(schema)
        return found

    def _valid(self, node: Any, value: Any) -> bool:
        return self._validator(node).is_valid(value)

    def locate(self, value: Any) -> str | None:
        """The reason ``value`` fails the schema, or None when it passes once
        infinities are read as the numbers they are written as."""
        return self._at(self.root, value, [])

    def _at(self, node: Any, value: Any, where: list[Any]) -> str | None:
        if node is True or self._valid(node, value):
            return None
        if node is False:
            return f"at {_path(where)}: not allowed here"
        node = self._resolve(node)
        if _small(value):
            validator = self._validator(node)
            candidate = _finite(value)
            error = next(iter(validator.iter_errors(candidate)), None)
            return None if error is None else self._describe(error, where, node)
        here = _path(where)
        types = node.get("type")
        if types is not None:
            names = [types] if isinstance(types, str) else list(types)
            if not any(_JSON_TYPES[t](value) for t in names):
                return f"at {here}: expected {' or '.join(names)}, got {self._json_type(value)}"
        for keyword in ("enum", "const"):
            if keyword in node:
                return f"at {here}: {self._json_type(value)} where the schema allows only given values"
        if isinstance(value, str):
            if "maxLength" in node and len(value) > node["maxLength"]:
                return f"at {here}: longer than {node['maxLength']} characters"
            return f"at {here}: the string does not match the schema"
        if isinstance(value, list):
            return self._array(node, value, where)
        if isinstance(value, dict):
            return self._object(node, value, where)
        return f"at {here}: does not match the schema"

    def _array(self, node: dict[str, Any], value: list[Any], where: list[Any]) -> str | None:
        here = _path(where)
        if "maxItems" in node and len(value) > node["maxItems"]:
            return f"at {here}: more than {node['maxItems']} items"
        if "minItems" in node and len(value) < node["minItems"]:
            return f"at {here}: fewer than {node['minItems']} items"
        items = node.get("items")
        if items is not None:
            for i, item in enumerate(value):
                found = self._at(items, item, [*where, i])
                if found is not None:
                    return found
            return None
        return f"at {here}: the array does not match the schema"

    def _object(self, node: dict[str, Any], value: dict[str, Any], where: list[Any]) -> str | None:
        here = _path(where)
        if "maxProperties" in node and len(value) > node["maxProperties"]:
            return f"at {here}: more than {node['maxProperties']} keys"
        for name in node.get("required", ()):
            if name not in value:
                return f"at {here}: '{name}' is a required property"
        names = node.get("propertyNames")
        properties = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        for key, item in value.items():
            if names is not None and not self._valid(names, key):
                shown = repr(key[:60] + ("…" if len(key) > 60 else ""))
                return f"at {here}: the name {shown} breaks the schema's rules for names"
            child = properties.get(key, extra)
            if child is False:
                return f"at {here}: the key {key[:60]!r} is not allowed"
            found = self._at(child, item, [*where, key])
            if found is not None:
                return found
        return None
