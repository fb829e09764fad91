"""Debian's chromium, headless, driven by selenium through the system chromedriver.

`make test` installs chromium and chromium-driver where they are missing (as it does etcd); a
test that needs the browser fails, loudly, when they are not there. Nothing is downloaded at
test time: selenium is pointed at the system driver, so Selenium Manager never runs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = ("chromium", "chromium-browser")
DRIVER = "chromedriver"


def _find(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name) or (
            f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
        )
        if found:
            return found
    return None


@contextmanager
def chromium(profile: Path, width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A fresh headless chromium (its own profile directory), closed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = _find(CHROMIUM), _find((DRIVER,))
    if binary is None or driver is None:
        pytest.fail(
            "chromium or chromedriver is missing: `make test` installs Debian's chromium and "
            "chromium-driver (apt-get install chromium chromium-driver)"
        )
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager reach the network
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-default-apps", "--disable-extensions",
        f"--user-data-dir={profile}", f"--window-size={width},{height}",
    ):  # fmt: skip
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield browser
    finally:
        browser.quit()
