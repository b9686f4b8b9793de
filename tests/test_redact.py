"""ingest.redact: connection strings and URLs rendered without secrets, against the libpq psycopg2 links."""

from __future__ import annotations

import ctypes
from pathlib import Path

import psycopg2
import pytest

from ingest.redact import (
    SECRET_PARAMETERS,
    connection_error,
    dsn_secrets,
    not_shown,
    render_dsn,
    render_url,
    scrub,
    url_problem,
)
from tests.support.network import closed_port

SECRET = "S3cr3tPW"


def linked_libpq() -> Path:
    """The libpq file this process has loaded for psycopg2 (from /proc/self/maps)."""
    import psycopg2._psycopg  # noqa: F401  (loads libpq)

    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if "/libpq" in path and ".so" in path:
            return Path(path)
    raise AssertionError("libpq is not loaded")


class _Option(ctypes.Structure):
    _fields_ = [(name, ctypes.c_char_p) for name in ("keyword", "envvar", "compiled", "val", "label", "dispchar")] + [
        ("dispsize", ctypes.c_int)
    ]


def test_every_parameter_libpq_shows_as_a_password_is_a_secret_here() -> None:
    """libpq's own list (PQconndefaults, dispchar "*") is covered by SECRET_PARAMETERS."""
    lib = ctypes.CDLL(str(linked_libpq()))
    lib.PQconndefaults.restype = ctypes.POINTER(_Option)
    options = lib.PQconndefaults()
    hidden, index = set(), 0
    while options[index].keyword:
        if options[index].dispchar == b"*":
            hidden.add(options[index].keyword.decode())
        index += 1
    assert {"password", "sslpassword"} <= hidden and hidden <= SECRET_PARAMETERS


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (f"postgresql:///mlflow?host=/cloudsql/p:r:i&user=u&password={SECRET}",
         "postgresql:///mlflow?host=/cloudsql/p:r:i&user=u&password=***"),
        (f"postgresql://u:{SECRET}@db:5432/mlflow?sslmode=require", "postgresql://u:***@db:5432/mlflow?sslmode=require"),
        (f"postgresql://u@db/mlflow?sslpassword={SECRET}&pass%77ord={SECRET}x",
         "postgresql://u@db/mlflow?sslpassword=***&pass%77ord=***"),
        (f"host=/cloudsql/p:r:i dbname=mlflow password='{SECRET} x'", None),
        (f"postgres://u:{SECRET[:4]}%2F{SECRET[4:]}@db/m", "postgres://u:***@db/m"),
    ],
)
def test_every_secret_form_is_masked(dsn: str, shown: str | None) -> None:
    """user:pw@, ?password=, ?sslpassword=, a percent-encoded key and a quoted DSN value are all ***."""
    rendered = render_dsn(dsn)
    assert SECRET not in rendered and SECRET[:4] not in rendered and "***" in rendered
    if shown is not None:
        assert rendered == shown
    assert dsn_secrets(dsn) and all(s not in rendered for s in dsn_secrets(dsn))


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://postgres:{SECRET[:4]}%zz{SECRET[4:]}@127.0.0.1/mlflow",  # a bad percent-encoding
        f"postgresql://postgres:ab/{SECRET}=@127.0.0.1/mlflow",  # base64 with '/': 'ab' becomes the port
        f"host=db password='{SECRET}",  # an unterminated quote
    ],
)
def test_malformed_values_are_never_quoted(dsn: str) -> None:
    """libpq's real error for each malformed value quotes it; what we print names the setting and the kind only."""
    with pytest.raises(psycopg2.Error) as caught:
        psycopg2.connect(dsn, connect_timeout=1)
    message = connection_error(caught.value, dsn, "--mlflow-database-url")
    assert message.startswith("Invalid value for --mlflow-database-url: not a valid connection string: ")
    assert "The value is not shown" in message
    for piece in (SECRET, SECRET[:4], '"ab"'):
        assert piece not in message and piece not in render_dsn(dsn)


def test_driver_errors_lose_every_secret() -> None:
    """A refused connection's real message keeps its facts; secrets and quoted option values become ***."""
    dsn = f"host=127.0.0.1 port={closed_port()} dbname=x user=u password={SECRET} connect_timeout=2"
    with pytest.raises(psycopg2.OperationalError) as caught:
        psycopg2.connect(dsn)
    line = connection_error(caught.value, dsn)
    assert "127.0.0.1" in line and SECRET not in line
    assert scrub(f'invalid integer value "{SECRET}" for connection option "port"', []) == (
        'invalid integer value "***" for connection option "port"'
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"ftp://admin:{SECRET}@host", "got ftp://"),
        (f"http://admin:{SECRET}@[::1", "unclosed '['"),
        (f"http://admin:{SECRET}@host:{SECRET}", "port is not a number"),
        (f"{SECRET}", "got no scheme"),
    ],
)
def test_a_bad_url_is_described_never_quoted(url: str, problem: str) -> None:
    """Each malformed --tracking-uri gets the kind of mistake; the value appears nowhere."""
    found = url_problem(url)
    assert found is not None and problem in found and SECRET not in found
    assert SECRET not in render_url(url)
    assert SECRET not in not_shown("--tracking-uri", found) and "--tracking-uri" in not_shown("--tracking-uri", found)


def test_a_good_url_keeps_what_identifies_the_server() -> None:
    """Scheme, host, port and path stay; the password and secret-looking query values go."""
    url = f"https://admin:{SECRET}@mlflow.example.com:8443/prefix?token={SECRET}&view=all"
    assert render_url(url) == "https://admin:***@mlflow.example.com:8443/prefix?token=***&view=all"
