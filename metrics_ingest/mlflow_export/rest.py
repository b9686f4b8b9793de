"""Read MLflow runs through a tracking server's REST API (plain HTTP, no MLflow client).

Per run: ``runs/get`` (info, params, tags and the *names* of its metrics), then
``metrics/get-history`` for every metric, following page tokens. That is one
history call per metric, as MLflow's own client and export tools do; the
sampled (``get-history-bulk-interval``) and UI (``ajax-api/.../get-history-bulk``)
endpoints are lossy and never used.

Every history call sends ``max_results``: servers from 3.1.1 answer a call
without it with an empty page and a token that never advances (mlflow issue
23916). A page token sent before (with or without points), or more pages than
the points sent could need at ``max_results`` a page, is an error here, never
a loop. A metric with an empty name (older stores allow it) cannot be asked
for (``get-history`` refuses an empty key): that run is an error naming the
SQL path. Values arrive as numbers or the strings ``"NaN"``, ``"Infinity"``,
``"-Infinity"``. The URI is only ever shown through ``ingest.redact``.

Auth: ``MLFLOW_TRACKING_TOKEN`` as a bearer token; else ``MLFLOW_TRACKING_USERNAME``
/ ``MLFLOW_TRACKING_PASSWORD`` as basic auth; else, for a Cloud Run URL
(``*.run.app``), a Google identity token for that URL from the ambient
credentials (refreshed every 30 minutes). Transient faults (connection errors,
timeouts, 429, 5xx) are retried with backoff, as the MLflow client does.

Example::

    source = RestSource("https://mlflow-server-abc-ew.a.run.app")
    source.check()
    runs = source.fetch(["0a1b..."])
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from ingest.redact import not_shown, render_url, scrub, url_problem, url_secrets
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from metrics_ingest.mlflow_export.model import MlflowRun, Point, SourceError
from metrics_ingest.batch import SetupError, UsageError

API = "/api/2.0/mlflow"
PAGE_SIZE = 25_000  # the server's maximum per history page; what MLflow's client sends
_NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_TOKEN_LIFETIME_S = 30 * 60


class _Retryable(Exception):
    """A transient HTTP answer (429, 5xx), retried like a connection error."""


def _transient(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, (_Retryable, requests.ConnectionError, requests.Timeout))


class RestSource:
    """A tracking server's REST API.

    Args:
        uri: the tracking URI (``http(s)://host[:port][/prefix]``).
        timeout: seconds per request (default 120, as MLflow's client).
        attempts: tries per request on transient faults (default 5).
        token: a bearer token (default: ``MLFLOW_TRACKING_TOKEN``).

    Example::

        RestSource("http://127.0.0.1:5000").fetch(run_ids)
    """

    batch_size = 1  # one run at a time: each is its own set of calls

    def __init__(self, uri: str, timeout: float = 120.0, attempts: int = 5, token: str | None = None) -> None:
        # Never quoted back: a URL may carry user:password@ or a token in its query.
        problem = url_problem(uri)
        if problem:
            raise UsageError(not_shown("--tracking-uri", problem, "the http(s) URL of an MLflow tracking server"))
        parts = urlsplit(uri)
        self.base = uri.rstrip("/")
        self.timeout = timeout
        self.attempts = attempts
        self.description = f"MLflow tracking server {render_url(self.base)}"
        self._token = token if token is not None else os.environ.get("MLFLOW_TRACKING_TOKEN") or None
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        self._secrets = url_secrets(uri) + [s for s in (self._token, password) if s]
        self._basic = (user, password or "") if user and not self._token else None
        self._identity = not self._token and not self._basic and (parts.hostname or "").endswith(".run.app")
        self._identity_token: tuple[str, float] | None = None
        self._identity_lock = threading.Lock()
        self._local = threading.local()
        self.calls = 0  # requests sent (the bench counts them)

    # -- HTTP -------------------------------------------------------------
    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = self._local.session = requests.Session()
            if self._basic:
                session.auth = self._basic
        return session

    def _headers(self) -> dict[str, str]:
        if self._token:
            return {"Authorization": f"Bearer {self._token}"}
        if self._identity:
            return {"Authorization": f"Bearer {self._fetch_identity_token()}"}
        return {}

    def _fetch_identity_token(self) -> str:
        with self._identity_lock:
            if self._identity_token is None or time.monotonic() - self._identity_token[1] > _TOKEN_LIFETIME_S:
                import google.auth.exceptions
                import google.auth.transport.requests
                import google.oauth2.id_token

                try:
                    token = google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), self.base)
                except google.auth.exceptions.GoogleAuthError as exc:
                    raise SetupError(
                        f"cannot get a Google identity token for {self.description} ({self.safe(str(exc))}); set MLFLOW_TRACKING_TOKEN "
                        "(e.g. $(gcloud auth print-identity-token)) or use a service account's credentials",
                        2,
                    ) from None
                self._identity_token = (token, time.monotonic())
            return self._identity_token[0]

    def get(self, path: str, params: dict[str, Any]) -> tuple[int, Any]:
        """GET ``API + path``; returns (status, JSON body). Retries transient faults."""
        import requests

        def once() -> tuple[int, Any]:
            self.calls += 1
            response = self._session().get(self.base + API + path, params=params, headers=self._headers(), timeout=self.timeout)
            if response.status_code == 429 or response.status_code >= 500:
                raise _Retryable(f"HTTP {response.status_code} from {path}: {response.text[:200]}")
            try:
                body = response.json()
            except ValueError:
                body = None
            return response.status_code, body

        retrying = Retrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.5, max=10),
            reraise=True,
        )
        try:
            return retrying(once)
        except _Retryable as exc:
            raise SourceError(self.safe(f"{self.description}: {exc} (after {self.attempts} tries)")) from None
        except requests.RequestException as exc:
            raise SourceError(self.safe(f"cannot reach {self.description}: {type(exc).__name__}: {exc}")) from None

    def safe(self, text: str) -> str:
        """``text`` with this source's secrets (URL password, token, basic-auth password) as ``***``."""
        return scrub(text, self._secrets)

    # -- the Source protocol ----------------------------------------------
    def check(self) -> None:
        try:
            status, body = self.get("/experiments/get-by-name", {"experiment_name": "Default"})
        except SourceError as exc:
            raise SetupError(str(exc)) from None
        if status in (401, 403):
            raise SetupError(
                f"{self.description} refused the request (HTTP {status}); set MLFLOW_TRACKING_TOKEN "
                "(for Cloud Run: $(gcloud auth print-identity-token))",
                2,
            )
        if not isinstance(body, dict) or (status != 200 and "error_code" not in body):
            raise SetupError(
                f"--tracking-uri {self.description} does not answer like an MLflow tracking server (HTTP {status})", 2
            )

    def fetch(self, run_ids: list[str]) -> dict[str, MlflowRun]:
        runs = {}
        for run_id in sorted(set(run_ids)):
            run = self.fetch_run(run_id)
            if run is not None:
                runs[run_id] = run
        return runs

    def fetch_run(self, run_id: str) -> MlflowRun | None:
        """One run with every metric's full history; None when the server does not know it."""
        status, body = self.get("/runs/get", {"run_id": run_id})
        code = body.get("error_code") if isinstance(body, dict) else None
        if status == 404 or code == "RESOURCE_DOES_NOT_EXIST" or (status == 400 and code == "INVALID_PARAMETER_VALUE"):
            return None  # unknown (or not even a well-formed run id): reported, never guessed
        if status != 200 or not isinstance(body, dict) or "run" not in body:
            raise SourceError(f"runs/get for {run_id}: HTTP {status}: {_error(body)}")
        info = body["run"].get("info", {})
        data = body["run"].get("data", {})
        run = MlflowRun(
            run_id=info.get("run_id") or info.get("run_uuid") or run_id,
            experiment_id=str(info.get("experiment_id")),
            run_name=info.get("run_name"),
            status=info.get("status"),
            lifecycle_stage=info.get("lifecycle_stage"),
            start_time=_int_or_none(info.get("start_time")),
            end_time=_int_or_none(info.get("end_time")),
            tags={t["key"]: t.get("value") for t in data.get("tags", [])},
            params={p["key"]: p.get("value", "") for p in data.get("params", [])},
            metrics={},
        )
        for key in sorted({m["key"] for m in data.get("metrics", [])}):
            if not key:
                # get-history refuses an empty metric_key ("Missing value for required
                # parameter"): only the latest value could be had, and a part is not an export.
                raise SourceError(
                    f"run {run_id} has a metric with an empty name (older MLflow stores allow it), whose history "
                    "MLflow's REST API cannot return; export this run with --mlflow-database-url"
                )
            run.metrics[key] = self.history(run_id, key)
        return run

    def history(self, run_id: str, key: str) -> list[Point]:
        """Every logged point of one metric, all pages.

        Ends with a SourceError, never a loop, when the server repeats a page
        token (with or without points) or sends more pages than the points it
        sent could need at ``max_results`` a page (one page of slack).
        """
        points: list[Point] = []
        token: str | None = None
        seen: set[str] = set()
        pages = 0
        while True:
            params: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": PAGE_SIZE}
            if token:
                params["page_token"] = token
            status, body = self.get("/metrics/get-history", params)
            if status != 200 or not isinstance(body, dict):
                raise SourceError(f"get-history for {run_id} {key!r}: HTTP {status}: {_error(body)}")
            page = body.get("metrics", [])
            pages += 1
            points.extend(Point(int(m.get("step", 0)), int(m.get("timestamp", 0)), _value(m.get("value", 0.0))) for m in page)
            next_token = body.get("next_page_token")
            if not next_token:
                return points
            where = f"get-history for {run_id} {key!r}"
            if next_token in seen or next_token == token:
                raise SourceError(
                    f"{where}: the server sent a page token it had sent before (page {pages}, "
                    f"{'an empty page' if not page else f'{len(page)} points on it'}): its paging does not advance "
                    "(e.g. mlflow issue 23916); upgrade the server or use --mlflow-database-url"
                )
            if pages > math.ceil(len(points) / PAGE_SIZE) + 1:
                raise SourceError(
                    f"{where}: the server sent {pages} pages for {len(points)} points, more than {PAGE_SIZE:,} points "
                    "a page could need: its paging does not advance; upgrade the server or use --mlflow-database-url"
                )
            seen.add(next_token)
            token = next_token


def _value(raw: Any) -> float:
    if isinstance(raw, str):
        return _NON_FINITE[raw] if raw in _NON_FINITE else float(raw)
    return float(raw)


def _int_or_none(raw: Any) -> int | None:
    return None if raw is None else int(raw)


def _error(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error_code") or body)[:300]
    return "not a JSON answer"
