"""What a replay covers: the ``gs://BUCKET[/PREFIX]`` target, the ``--shard I/N`` and the ``--since``
window, parsed from the command line (each bad value a UsageError naming its flag).

Example::

    parse_gs_uri("gs://ml-artifacts/quick_tests"), parse_shard("0/4"), parse_duration("72h")
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import zlib
from collections.abc import Mapping

from metrics_ingest.batch import UsageError, clip as _clip

BUCKET_NAME = re.compile(r"^[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]$")
# GCS object names are at most 1,024 bytes of UTF-8: a longer prefix matches nothing.
MAX_PREFIX_BYTES = 1024
# Cloud Run Jobs run at most 10,000 tasks; a shard count beyond it is a typo.
MAX_SHARDS = 10_000


@dataclasses.dataclass(frozen=True)
class GcsTarget:
    """A bucket and an optional object-name prefix (``gs://bucket/prefix``).

    Example::

        GcsTarget("ml-artifacts", "quick_tests/").uri   # 'gs://ml-artifacts/quick_tests/'
    """

    bucket: str
    prefix: str = ""

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"


def parse_gs_uri(uri: str) -> GcsTarget:
    """``gs://bucket[/prefix]`` -> GcsTarget; raises UsageError otherwise.

    >>> parse_gs_uri("gs://ml-artifacts/quick_tests/")
    GcsTarget(bucket='ml-artifacts', prefix='quick_tests/')
    """
    shown = _clip(repr(uri), 120)  # an echo, not the whole of a 100 KB argument
    if not uri.startswith("gs://"):
        raise UsageError(f"expected gs://BUCKET[/PREFIX], got {shown}")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    if not BUCKET_NAME.match(bucket):
        raise UsageError(f"invalid bucket name {_clip(repr(bucket), 80)} in {shown}")
    size = len(prefix.encode("utf-8", "surrogatepass"))
    if size > MAX_PREFIX_BYTES:
        # GCS would answer with an error page (or nothing): no object can match.
        raise UsageError(
            f"the prefix is {size} bytes; GCS object names are at most {MAX_PREFIX_BYTES} bytes, "
            f"so no object can match it (prefix starts {_clip(repr(prefix), 60)})"
        )
    if "*" in prefix or "?" in prefix:
        # A shell-style pattern would silently match nothing: GCS lists by plain prefix.
        raise UsageError(
            f"{shown}: the prefix is a plain name prefix, not a pattern; drop the wildcard "
            f"(e.g. {_clip('gs://' + bucket + '/' + prefix.split('*')[0].split('?')[0], 120)})"
        )
    return GcsTarget(bucket=bucket, prefix=prefix)


@dataclasses.dataclass(frozen=True)
class Shard:
    """One of ``count`` disjoint parts of a bucket: the objects whose name hashes to ``index``.

    The hash is CRC32 of the object name's UTF-8 bytes (stable across
    processes and machines, unlike Python's ``hash()``), so ``count`` tasks
    with indexes 0..count-1 together take every object exactly once.

    Example::

        shard = parse_shard("2/8")
        shard.takes("quick_tests/42/training_metrics.json"), str(shard)   # (False, '2/8')
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS or not 0 <= self.index < self.count:
            raise UsageError(
                f"invalid shard {self.index}/{self.count}: expected I/N with 0 <= I < N <= {MAX_SHARDS}"
            )

    def takes(self, name: str) -> bool:
        return zlib.crc32(name.encode("utf-8", "surrogatepass")) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> Shard(I, N) (0-based I, as Cloud Run numbers its tasks); raises UsageError.

    >>> parse_shard("0/4")
    Shard(index=0, count=4)
    """
    match = re.fullmatch(r"\s*([0-9]{1,6})\s*/\s*([0-9]{1,6})\s*", text)
    if not match:
        raise UsageError(f"--shard: expected I/N (e.g. 0/4: the first of 4), got {_clip(repr(text), 40)}")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_from_env(env: Mapping[str, str]) -> Shard | None:
    """The Cloud Run Job task's shard (``CLOUD_RUN_TASK_INDEX`` of ``CLOUD_RUN_TASK_COUNT``), or None outside one.

    Raises UsageError when the variables are malformed or only one is set.
    """
    index, count = env.get("CLOUD_RUN_TASK_INDEX"), env.get("CLOUD_RUN_TASK_COUNT")
    if index is None and count is None:
        return None
    if index is None or count is None or not all(re.fullmatch(r"[0-9]{1,6}", v) for v in (index, count)):
        raise UsageError(
            "CLOUD_RUN_TASK_INDEX and CLOUD_RUN_TASK_COUNT must both be set to whole numbers; got "
            f"{_clip(repr(index), 20)} and {_clip(repr(count), 20)}"
        )
    return Shard(int(index), int(count))


_DURATION = re.compile(r"^([1-9][0-9]*)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> dt.timedelta:
    """``"90s"``, ``"30m"``, ``"72h"``, ``"3d"`` -> a timedelta; raises UsageError.

    >>> parse_duration("72h")
    datetime.timedelta(days=3)
    """
    match = _DURATION.match(text.strip())
    if not match:
        raise UsageError(
            f"--since: expected a whole number and a unit s, m, h or d (e.g. 90s, 72h, 3d), "
            f"got {_clip(repr(text), 40)}"
        )
    digits = match.group(1)
    # (Compared by length first: a 5,000-digit number would be slow to convert.)
    seconds = 10**20 if len(digits) > 15 else int(digits) * _UNIT_SECONDS[match.group(2)]
    if seconds > 36_500 * 86400:
        raise UsageError(
            f"--since {_clip(text.strip(), 40)} is more than 100 years; leave --since out for the whole prefix"
        )
    return dt.timedelta(seconds=seconds)


def metrics_glob(filename: str) -> str | None:
    """The ``match_glob`` that asks GCS for the metrics files only, or None when the
    name holds a glob character (then every object is listed and filtered here)."""
    if any(c in filename for c in "*?[]{}\\,"):
        return None
    return f"**/{filename}"


def format_duration(delta: dt.timedelta) -> str:
    """A timedelta in the largest whole unit --since accepts: ``72h``, ``3d``, ``90s``."""
    seconds = int(delta.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds % _UNIT_SECONDS[unit] == 0 and seconds >= _UNIT_SECONDS[unit]:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"
