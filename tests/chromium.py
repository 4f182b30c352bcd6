"""The headless Chromium of the browser tests (the contact sheet's and the explorer's):
Debian's ``chromium`` executable driven by Playwright. Without one the tests are skipped
with the reason, unless ``REQUIRE_BROWSER=1`` (set by ``.ci/run``), which makes them fail."""

from __future__ import annotations

import os
import shutil
import time
from typing import Iterator

import pytest

REQUIRED = os.environ.get("REQUIRE_BROWSER", "").strip().lower() in {"1", "true", "yes"}


def chromium(tests: str) -> Iterator[object]:
    """A generator for a fixture: yields one launched headless Chromium, closed afterwards.
    ``tests`` names the tests in the skip reason ("the contact sheet's browser tests")."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = f"pip install playwright (the test extra) to run {tests}"
        if REQUIRED:
            pytest.fail(f"{reason} (REQUIRE_BROWSER is set)")
        pytest.skip(reason)
    if executable is None:
        missing = f"install Debian's chromium package (apt-get install chromium) to run {tests}"
        if REQUIRED:
            pytest.fail(f"no chromium on the PATH and REQUIRE_BROWSER is set: {missing}")
        pytest.skip(f"no chromium on the PATH: {missing}")
    with sync_playwright() as playwright:
        started = time.perf_counter()
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        print(f"chromium launch: {time.perf_counter() - started:.2f} s ({launched.version})")
        try:
            yield launched
        finally:
            launched.close()
