"""The GCS object an event is about.

Example::

    ref = ObjectRef.from_resource({"bucket": "b", "name": "quick_tests/42/training_metrics.json",
                                   "generation": "1700000000000000", "size": "1234"})
    ref.folder_uri   # 'gs://b/quick_tests/42'
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from ingest.errors import BadEvent, printable

_INT64_MAX = 2**63 - 1  # generation and size are int64 in GCS and bigint in our table


def _int_field(data: Mapping[str, Any], key: str, *, required: bool) -> int | None:
    """GCS sends int64 fields as JSON strings; accept ints too (replay, tests)."""
    raw = data.get(key)
    if raw is None or raw == "":
        if required:
            raise BadEvent(f"object resource has no {key!r}")
        return None
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise BadEvent(f"object resource field {key!r} is not an integer: {raw!r}")
    if isinstance(raw, str) and not (raw.isascii() and raw.isdigit()):
        raise BadEvent(f"object resource field {key!r} is not an integer: {printable(repr(raw), 80)}")
    # GCS int64 fields, stored as bigint: a longer digit string is not a GCS
    # value (and int() refuses more than 4300 digits).
    value = int(raw) if isinstance(raw, int) or len(raw) <= 19 else _INT64_MAX + 1
    if value < 0:
        raise BadEvent(f"object resource field {key!r} is negative: {raw!r}")
    if value > _INT64_MAX:
        raise BadEvent(f"object resource field {key!r} is out of the int64 range: {printable(str(raw), 40)}")
    return value


def _str_field(data: Mapping[str, Any], key: str) -> str | None:
    raw = data.get(key)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise BadEvent(f"object resource field {key!r} is not a string: {printable(repr(raw), 80)}")
    # GCS names are UTF-8 without NUL; anything else cannot be recorded (text column).
    if "\x00" in raw or not _encodable(raw):
        raise BadEvent(f"object resource field {key!r} is not a UTF-8 string without NUL: {printable(repr(raw), 80)}")
    return raw or None


_BASE64 = re.compile(r"^[A-Za-z0-9+/]{4,64}={0,2}$")


def _hash_field(data: Mapping[str, Any], key: str) -> str | None:
    """A checksum as GCS sends it (base64), or None; anything else is a malformed event."""
    raw = _str_field(data, key)
    if raw is not None and not _BASE64.match(raw):
        raise BadEvent(f"object resource field {key!r} is not a base64 checksum: {printable(repr(raw), 80)}")
    return raw


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a JSON "\ud800" escape
        return False
    return True


@dataclasses.dataclass(frozen=True)
class ObjectRef:
    """One generation of one GCS object, as a finalize event names it.

    Args:
        bucket: bucket name.
        name: object name (``quick_tests/42/training_metrics.json``).
        generation: the object's generation (GCS sends it as a string).
        metageneration: its metageneration, if known.
        size: its size in bytes as stored (compressed, for gzip objects), if known.
        content_type: ``contentType``, if any.
        content_encoding: ``contentEncoding`` (``gzip`` for compressed uploads), if any.
        md5_hash: ``md5Hash`` (base64), if any: composite objects have none.
        crc32c: ``crc32c`` (base64), if any. With ``md5_hash`` it tells the same
            bytes under a new generation (a copy, rewrite or restore) before any download.

    Example::

        ObjectRef.from_resource(cloud_event.data).generation
    """

    bucket: str
    name: str
    generation: int
    metageneration: int | None = None
    size: int | None = None
    content_type: str | None = None
    content_encoding: str | None = None
    md5_hash: str | None = None
    crc32c: str | None = None

    @classmethod
    def from_resource(cls, data: Mapping[str, Any]) -> ObjectRef:
        """Build from a GCS object resource (the finalize event's data).

        Raises:
            BadEvent: when ``data`` is not a mapping or lacks bucket, name or generation.
        """
        if not isinstance(data, Mapping):
            raise BadEvent(f"event data is not an object resource: {type(data).__name__}")
        bucket, name = _str_field(data, "bucket"), _str_field(data, "name")
        if not bucket:
            raise BadEvent("object resource has no 'bucket'")
        if not name:
            raise BadEvent("object resource has no 'name'")
        generation = _int_field(data, "generation", required=True)
        assert generation is not None
        return cls(
            bucket=bucket,
            name=name,
            generation=generation,
            metageneration=_int_field(data, "metageneration", required=False),
            size=_int_field(data, "size", required=False),
            content_type=_str_field(data, "contentType"),
            content_encoding=_str_field(data, "contentEncoding"),
            md5_hash=_hash_field(data, "md5Hash"),
            crc32c=_hash_field(data, "crc32c"),
        )

    @property
    def folder(self) -> str:
        """The object's folder inside the bucket (``quick_tests/42``; '' at the root)."""
        return posixpath.dirname(self.name)

    @property
    def folder_uri(self) -> str:
        """``gs://bucket/folder``, the form stored in ``gcs_artifacts_path``."""
        folder = self.folder
        return f"gs://{self.bucket}/{folder}" if folder else f"gs://{self.bucket}"

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}#{self.generation}"
