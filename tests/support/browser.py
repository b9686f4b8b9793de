"""Headless Chromium (Debian's ``chromium`` package) driven by Playwright, offline.

``.ci/run`` installs the browser when it is missing; without one,
:func:`chromium_path` fails with a message saying how to install it (the
browser tests never skip). Every page is opened with networking disabled
three ways: Playwright's offline context, a proxy that points at a closed
port, and a log of every request, so a test can assert that none left.

Example::

    with Browser() as browser:
        page = browser.open(Path("report.html"))
        page.requests, page.console_errors, page.evaluate("1 + 1")
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def chromium_path() -> str:
    """The browser to drive: ``$CHROMIUM``, else Debian's chromium; fails the test when none is found."""
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), *CANDIDATES):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "no Chromium found: the report's browser tests need Debian's chromium "
        "(`apt-get install -y chromium`, which .ci/run does) or CHROMIUM=/path/to/chrome",
        pytrace=False,
    )


@dataclasses.dataclass
class OpenedPage:
    """A page as loaded: the Playwright page, and what happened while it loaded."""

    page: Any
    url: str
    requests: list[str]
    console_errors: list[str]
    load_seconds: float

    def evaluate(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)


class Browser:
    """One headless Chromium for a block of pages (starting it costs ~1 s)."""

    def __init__(self, width: int = 1400, height: int = 900) -> None:
        self.viewport = {"width": width, "height": height}
        self._playwright: Any = None
        self._browser: Any = None
        self._pages: list[Any] = []

    def __enter__(self) -> Browser:
        from playwright.sync_api import sync_playwright

        path = chromium_path()
        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=path,
            headless=True,
            # No request can leave: every proxied one goes to a closed port.
            args=["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--no-sandbox"],
        )
        return self

    def __exit__(self, *exc: object) -> None:
        for page in self._pages:
            page.context.close()
        if self._browser is not None:
            self._browser.close()
        if self._playwright is not None:
            self._playwright.stop()

    def open(self, path: Path, *, wait: str = "window.metricsReport && window.metricsReport.ready",
             timeout_s: float = 30.0) -> OpenedPage:
        """Load ``path`` offline and wait until ``wait`` is true in the page."""
        context = self._browser.new_context(offline=True, viewport=self.viewport)
        page = context.new_page()
        self._pages.append(page)
        url = path.resolve().as_uri()
        requests: list[str] = []
        errors: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
        started = time.perf_counter()
        page.goto(url, wait_until="load", timeout=timeout_s * 1000)
        page.wait_for_function(wait, timeout=timeout_s * 1000)
        return OpenedPage(page, url, requests, errors, time.perf_counter() - started)
