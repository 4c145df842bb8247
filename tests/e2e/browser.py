"""Debian's chromium driven through Selenium, for the web page's tests.

The page is tested in a real browser: without chromium and its driver the test fails and says
how to install them (``make test`` installs them), it is never skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from posttrain.service.settings import posttrain_home

INSTALL = (
    "the web page is tested in Debian's chromium: install it with "
    "`apt-get install -y chromium chromium-driver` (as root; `make test` does it)"
)


def _find(names: tuple[str, ...], env: str) -> str | None:
    if os.environ.get(env):
        return shutil.which(os.environ[env])
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> tuple[str, str]:
    """The chromium and chromedriver executables, or the test fails saying how to get them."""
    browser = _find(("chromium", "chromium-browser"), "POSTTRAIN_CHROMIUM")
    driver = _find(("chromedriver",), "POSTTRAIN_CHROMEDRIVER")
    if browser is None or driver is None:
        missing = [n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None]
        pytest.fail(f"{' and '.join(missing)} not found: {INSTALL}", pytrace=False)
    return browser, driver


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless chromium session (selenium's WebDriver), closed afterwards."""
    browser, driver_path = require_chromium()
    # Selenium Manager would look for drivers on the network: there is none to use here.
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespaces for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def artifacts_dir() -> Path:
    """Where screenshots are kept after the run: $POSTTRAIN_ARTIFACTS, or
    $POSTTRAIN_HOME/artifacts (~/.cache/posttrain/artifacts)."""
    if os.environ.get("POSTTRAIN_ARTIFACTS"):
        return Path(os.environ["POSTTRAIN_ARTIFACTS"])
    home = posttrain_home()
    return home / "artifacts"
