"""Connection strings and URLs as messages may show them: never a password.

One rule for every message, report and log line that names a database or a
server (the function's, and the command line's: ``metrics_ingest`` imports
this module; it lives here because the function cannot import the command line):

- libpq's secret parameters (those ``PQconndefaults`` marks as a password
  field: ``password``, ``sslpassword``, and PostgreSQL 18's
  ``oauth_client_secret``) are shown as ``***`` wherever they are given:
  ``user:PASSWORD@`` in a URL, ``?password=`` (any spelling libpq decodes,
  ``pass%77ord`` too) or ``password=...`` in a key=value DSN;
- an http(s) URL keeps its scheme, host, port and path; the password of
  ``user:pw@`` and the value of a query parameter whose name looks secret
  (password, token, secret, key, signature, credential, auth) become ``***``;
- a value that cannot be parsed is not shown at all: the message names the
  setting or flag and the kind of mistake (:func:`not_shown`). Parse errors
  quote the text they choke on, password included, so they are never passed on.

Example::

    render_dsn("postgresql:///mlflow?host=/cloudsql/p:r:i&user=u&password=S3cr3t")
    # 'postgresql:///mlflow?host=/cloudsql/p:r:i&user=u&password=***'
    render_url("https://admin:pw@mlflow.example.com/?token=abc")
    # 'https://admin:***@mlflow.example.com/?token=***'
    scrub("FATAL: ... S3cr3t ...", dsn_secrets(url))    # every secret value -> ***
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote, urlsplit

MASK = "***"
# libpq's connection parameters displayed as a password field (dispchar "*" in
# PQconndefaults; tests/test_redact.py checks the linked libpq against this).
SECRET_PARAMETERS = frozenset({"password", "sslpassword", "oauth_client_secret"})
_SECRET_QUERY_WORDS = ("pass", "pwd", "secret", "token", "key", "sig", "credential", "auth")
_PG_URL = re.compile(r"^(?P<scheme>postgres(?:ql)?)://", re.I)
# libpq's messages that quote a connection option's value ('invalid integer
# value "ab" for connection option "port"'): the value may be a piece of a
# password that a stray '/' moved into another field.
_QUOTED_OPTION_VALUE = re.compile(r'(value )"[^"]*"( for connection option)')


def not_shown(setting: str, problem: str, expected: str = "a valid connection string") -> str:
    """The message for a malformed value: names ``setting``, says ``problem``, never quotes the value.

    Example::

        not_shown("--mlflow-database-url", "a '%' not followed by two hex digits")
        not_shown("--tracking-uri", "expected an http:// or https:// URL, got ftp://", "an MLflow tracking server's URL")
    """
    return f"Invalid value for {setting}: not {expected}: {problem}. The value is not shown (it may hold a password)."


def dsn_secrets(dsn: str | None) -> list[str]:
    """The secret values in a libpq URL or DSN (as libpq decodes them); [] when it cannot be parsed."""
    if not dsn:
        return []
    import psycopg2
    from psycopg2.extensions import parse_dsn

    try:
        params = parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        return []
    return [value for key, value in params.items() if key in SECRET_PARAMETERS and value]


def render_dsn(dsn: str | None) -> str:
    """``dsn`` (a PostgreSQL URL or a key=value DSN) with every secret parameter shown as ``***``.

    A URL keeps its own spelling; a DSN is rendered from libpq's own parse of
    it. Text libpq cannot parse is not shown.
    """
    if not dsn:
        return "libpq's defaults (PG* variables)"
    import psycopg2
    from psycopg2.extensions import make_dsn, parse_dsn

    from ingest.config import database_url_problem

    try:
        params = parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        return "(a connection string libpq cannot parse; not shown)"
    if database_url_problem(dsn):  # e.g. a '/' in a password: its pieces sit in other fields
        return "(a malformed connection string; not shown)"
    if _PG_URL.match(dsn):
        rendered = _render_pg_url(dsn)
        if rendered is not None and _agrees(rendered, params):
            return rendered
    masked = {key: (MASK if key in SECRET_PARAMETERS else value) for key, value in params.items()}
    return make_dsn(**masked)


def _render_pg_url(url: str) -> str | None:
    """Mask the password of ``user:pw@`` and every secret query parameter, splitting as libpq does."""
    head = _PG_URL.match(url)
    assert head is not None
    rest = url[head.end() :]
    # libpq: the user part ends at the first '@' before any '/'.
    authority_end = min((i for i in (rest.find("@"), rest.find("/")) if i >= 0), default=-1)
    if authority_end >= 0 and rest[authority_end] == "@":
        user, colon, _password = rest[:authority_end].partition(":")
        rest = user + (":" + MASK if colon else "") + rest[authority_end:]
    path, question, query = rest.partition("?")
    if not question:
        return url[: head.end()] + path
    pairs = []
    for pair in query.split("&"):
        key, equals, value = pair.partition("=")
        pairs.append(f"{key}={MASK}" if unquote(key) in SECRET_PARAMETERS else pair)
    return url[: head.end()] + path + "?" + "&".join(pairs)


def _agrees(rendered: str, params: dict[str, str]) -> bool:
    """Whether our split masked exactly what libpq reads as secrets (else the DSN form is shown)."""
    import psycopg2
    from psycopg2.extensions import parse_dsn

    try:
        seen = parse_dsn(rendered)
    except psycopg2.ProgrammingError:
        return False
    for key in SECRET_PARAMETERS:
        if key in params and seen.get(key) != MASK:
            return False
    return {k: v for k, v in seen.items() if k not in SECRET_PARAMETERS} == {
        k: v for k, v in params.items() if k not in SECRET_PARAMETERS
    }


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a usable http(s) URL (never quoting it), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        reason = str(exc).lower()
        if "ipv6" in reason:
            return "an unclosed '[' around an IPv6 host"
        if "port" in reason:
            return "the port is not a number from 0 to 65535"
        return "it cannot be parsed as a URL"
    if parts.scheme not in ("http", "https"):
        scheme = parts.scheme if re.fullmatch(r"[a-z][a-z0-9+.-]{0,15}", parts.scheme or "") else None
        return f"expected an http:// or https:// URL, got {scheme + '://' if scheme else 'no scheme'}"
    if not parts.hostname:
        return "it has no host"
    return None


def render_url(url: str) -> str:
    """An http(s) URL with the password of ``user:pw@`` and secret-looking query values shown as ``***``.

    A URL that cannot be parsed is not shown.
    """
    problem = url_problem(url)
    if problem is not None:
        return f"(not shown: {problem})"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host += f":{parts.port}"
    if parts.username is not None:
        host = quote(unquote(parts.username), safe="") + (f":{MASK}" if parts.password is not None else "") + "@" + host
    text = f"{parts.scheme}://{host}{parts.path}"
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        text += "?" + "&".join(
            f"{quote(k, safe='')}={MASK if _secret_query_name(k) else quote(v, safe='/:')}" for k, v in pairs
        )
    return text


def url_secrets(url: str) -> list[str]:
    """The secret values in an http(s) URL: its password and its secret-looking query values."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [parts.password or ""]
    found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if _secret_query_name(k)]
    raw = [unquote(v) for v in found] + found
    return [v for v in dict.fromkeys(raw) if v]


def _secret_query_name(name: str) -> bool:
    name = name.lower()
    return any(word in name for word in _SECRET_QUERY_WORDS)


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every secret value, and every value libpq quotes for a connection option, as ``***``."""
    for secret in sorted(set(secrets), key=len, reverse=True):  # longest first: one may contain another
        if secret:
            text = text.replace(secret, MASK)
    return _QUOTED_OPTION_VALUE.sub(rf'\1"{MASK}"\2', text)


def connection_error(exc: BaseException, dsn: str | None, setting: str = "DATABASE_URL") -> str:
    """The first line of a driver error from connecting with ``dsn``, safe to print.

    For a malformed ``dsn`` (libpq's parse errors quote the string) the line
    is :func:`not_shown`'s message. Any other line has every
    secret of ``dsn`` replaced by ``***``.
    """
    from ingest.config import database_url_problem

    text = str(exc).strip()
    # A malformed value (a stray '/' moves part of a password into the port or
    # the database name, which libpq then quotes): only the kind of mistake.
    problem = database_url_problem(dsn) if dsn else None
    if problem:
        return not_shown(setting, problem)
    if type(exc).__name__ == "ProgrammingError" and not getattr(exc, "pgcode", None) and "dsn" in text.lower():
        return not_shown(setting, "libpq cannot parse it")
    line = (text.splitlines() or [type(exc).__name__])[0].strip()
    return scrub(line, dsn_secrets(dsn))
