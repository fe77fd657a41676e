"""Headless Chromium for the browser tests: Debian's own browser and driver, never a download."""

from __future__ import annotations

import shutil

import pytest


def browser(window: str = "800,900"):
    """Headless Debian chromium through its own chromedriver (never a downloaded browser)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test "
                    "installs them as root: apt-get install chromium chromium-driver)")  # fmt: skip
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", f"--window-size={window}"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)
