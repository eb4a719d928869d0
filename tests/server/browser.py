"""What the browser tests share: Debian's chromium driven by Playwright (no browser download), and a page on
a live server that fails its test on any JavaScript error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_MS = 60_000


def require_playwright() -> Any:
    """Playwright's sync API; skips the calling test module without chromium or playwright."""
    if not CHROMIUM.exists():
        pytest.skip("the browser test needs Debian's chromium: apt-get install -y chromium", allow_module_level=True)
    return pytest.importorskip(
        "playwright.sync_api", reason="the browser test needs playwright: pip install playwright (no browser download)"
    )


@contextmanager
def launched(sync_api: Any) -> Iterator[Any]:
    """A headless chromium."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@contextmanager
def opened(browser: Any, url: str, height: int = 900) -> Iterator[Any]:
    """The UI at `url` in a new context (downloads accepted); JavaScript errors on the page fail the test."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": height})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{url}/")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
