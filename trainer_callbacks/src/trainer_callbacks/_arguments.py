"""The collector's arguments, checked at construction, in Keras' words.

The destination is the one that matters most: a typo such as ``gcs://bucket/x`` or
``GS://bucket/x`` used to become a local folder named ``gcs:`` in the working
directory, which dies with the training container. Only two forms are accepted:
``gs://BUCKET[/FOLDER]`` (a valid bucket name) and a local path (``file://`` accepted);
anything else shaped like a URL (``scheme:/...``) is refused.

Example::

    destination("gs://ml-artifacts/quick_tests/42")   # 'gs://ml-artifacts/quick_tests/42'
    destination("file:///tmp/run")                    # '/tmp/run'
    destination("s3://bucket/x")                      # ValueError naming output_path
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")
# Cloud Storage bucket names: 3-63 characters of lowercase letters, digits, '-', '_'
# and '.', starting and ending with a letter or digit; with dots, up to 222 characters
# of dot-separated parts of at most 63.
_BUCKET_PART = re.compile(r"^[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?$")
EXPECTED = "gs://BUCKET[/FOLDER] (a Cloud Storage bucket name) or a local folder (file:// accepted)"


def _refuse(value: Any, why: str) -> ValueError:
    return ValueError(f"Invalid value for argument `output_path`. Received: output_path={value!r} ({why}). Expected {EXPECTED}.")


def bucket_problem(bucket: str) -> str | None:
    """Why ``bucket`` is not a valid Cloud Storage bucket name, or None."""
    if not 3 <= len(bucket) <= (222 if "." in bucket else 63):
        return f"a bucket name is 3 to 63 characters (222 with dots), {bucket!r} has {len(bucket)}"
    parts = bucket.split(".")
    if any(not _BUCKET_PART.match(part) or len(part) > 63 for part in parts):
        return f"bucket {bucket!r}: lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
    try:
        ipaddress.ip_address(bucket)
    except ValueError:
        pass
    else:
        return f"bucket {bucket!r} looks like an IP address"
    if bucket.startswith("goog") or "google" in bucket:
        return f"bucket {bucket!r}: names starting with 'goog' or containing 'google' are reserved"
    return None


def destination(output_path: str | os.PathLike[str]) -> str:
    """``output_path`` as ``gs://BUCKET[/FOLDER]`` or a local path; ValueError naming it otherwise."""
    if not isinstance(output_path, str | os.PathLike):
        raise _refuse(output_path, f"a {type(output_path).__name__}")
    text = os.fspath(output_path)
    if not isinstance(text, str):
        raise _refuse(output_path, "a bytes path")
    if not text:
        raise _refuse(text, "empty")
    if text.startswith("gs://"):
        bucket = text[len("gs://"):].partition("/")[0]
        problem = "no bucket name" if not bucket else bucket_problem(bucket)
        if problem:
            raise _refuse(text, problem)
        return text
    if text.startswith("file://"):
        rest = text[len("file://"):]
        host, slash, path = rest.partition("/")
        if host not in ("", "localhost") or not slash:
            raise _refuse(text, "a file:// URL must be file:///ABSOLUTE/PATH")
        return "/" + path
    match = _SCHEME.match(text)
    if match and not (os.name == "nt" and len(match.group(1)) == 1):  # C:/ is a Windows drive, not a scheme
        scheme = match.group(1)
        hint = " (Cloud Storage is written gs://, in lowercase)" if scheme.lower() in ("gs", "gcs") else ""
        raise _refuse(text, f"the scheme {scheme!r} is not supported{hint}")
    return text


def positive_seconds(name: str, value: Any, *, optional: bool) -> float | None:
    """``value`` if it is a positive number of seconds (or None, when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. "
            f"Expected a positive number of seconds{' or None' if optional else ''}."
        )
    return float(value)


def resume_mode(resume: Any) -> bool | None:
    if resume is not None and not isinstance(resume, bool):
        raise ValueError(
            f"Invalid value for argument `resume`. Received: resume={resume!r}. "
            "Expected None (continue the file when Keras starts past epoch 0), True or False."
        )
    return resume


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"Invalid value for argument `{name}`. Received: {name}={value!r}. Expected True or False.")
    return value


def run_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 256:
        raise ValueError(f"Invalid value for argument `run_id`. Received: run_id={value!r}. Expected a string of 1 to 256 characters or None.")
    return value
