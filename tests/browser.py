"""Headless Chromium (Debian's chromium + chromium-driver) helpers for the report tests: install, crawl, click."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def ensure_browser() -> None:
    """Install Debian's chromium and chromium-driver if missing; skip (with the reason) where that is impossible."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no chromium/chromedriver and no permission to apt-get install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium", "chromium-driver"]
    if subprocess.run(command, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.skip(f"chromium could not be installed: {result.stderr.strip()[-300:]}")


@contextmanager
def headless_chromium(profile_dir: Path):
    """A selenium driver for headless Debian chromium, quit on exit (the `browser` fixture in conftest)."""
    ensure_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "--window-size=1280,900"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def check_page(driver, url: str) -> list[str]:
    """Load `url`; assert no console errors and that every image rendered; return its internal links."""
    driver.get(url)
    errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, f"{url}: console errors {errors}"
    images = driver.execute_script(
        "return Array.from(document.images)"
        ".map(i => [i.getAttribute('src'), i.complete, i.naturalWidth, i.naturalHeight])"
    )
    for src, complete, width, height in images:
        assert complete and width > 0 and height > 0, f"{url}: image {src} did not render"
    return driver.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")


def crawl_report(browser, workdir) -> set[str]:
    """Visit every page of the report reachable from the landing page; return the pages visited."""
    report = workdir / "results" / "report"
    start = (report / "index.html").as_uri()
    seen, queue = set(), [start]
    while queue:
        url = queue.pop()
        page = url.split("#")[0]
        if page in seen:
            continue
        seen.add(page)
        for link in check_page(browser, page):
            parsed = urlparse(link)
            if parsed.scheme != "file":
                continue  # the report links nowhere else; an external link would fail offline anyway
            target = Path(unquote(parsed.path))
            assert target.exists(), f"{page}: link to missing {target}"
            if parsed.fragment and target.suffix == ".html":  # read from the file: no second load per anchor
                ids = set(re.findall(r'\bid="([^"]+)"', target.read_text()))
                assert parsed.fragment in ids, f"{page}: anchor #{parsed.fragment} missing in {target.name}"
            if target.suffix == ".html" and report in target.parents or target == report / "index.html":
                queue.append(target.as_uri())
    return seen


def open_unit_page_from_section(browser, workdir: Path, study: str) -> str:
    """From the landing page, click the first unit link in `study`'s section tables; return the unit page's title.

    Fails when the section has no table linking a unit to its page, or when the page does not open.
    """
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get((workdir / "results" / "report" / "index.html").as_uri())
    unit_links = (By.XPATH, f"//section[@data-study='{study}']//table//a[starts-with(@href, 'units/')]")
    try:  # waited for, not read at once: on a busy machine the page's end may still be parsing
        links = WebDriverWait(browser, 20).until(lambda driver: driver.find_elements(*unit_links))
    except TimeoutException:
        links = []
    assert links, f"the {study} section has no table linking a unit to its page"
    browser.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", links[0])
    links[0].click()
    assert "/units/" in browser.current_url, f"{study}: clicking {links[0].get_attribute('href')} did not open it"
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    return browser.find_element(By.TAG_NAME, "h1").text


def check_study_in_browser(browser, workdir: Path, study: str) -> None:
    """Open a unit page from the study's own table and check that the page lists the study (the whole report is
    crawled once, by tests/report/test_browser.py: every page loads, renders its images, resolves its links)."""
    from selenium.webdriver.common.by import By

    assert "channel" in open_unit_page_from_section(browser, workdir, study)
    section = json.loads((workdir / "results" / study / "section.json").read_text())
    assert section["title"] in browser.find_element(By.TAG_NAME, "body").text


def show_at(driver, width: int, height: int, url: str) -> None:
    """Load `url` in a viewport of `width` x `height` CSS pixels (a phone's when narrow), scrolled to the top."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    driver.get(url)
    driver.execute_script("window.scrollTo(0, 0)")


def overflowing(driver) -> int:
    """How many CSS pixels the page is wider than its viewport (0: nothing overflows horizontally)."""
    return driver.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")


def on_first_screen(driver, css: str) -> list[bool]:
    """For each element matching `css`: whether it lies wholly inside the viewport without scrolling."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => {"
        " const r = e.getBoundingClientRect();"
        " return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight && r.right <= window.innerWidth; })",
        css,
    )


def scrolled_to(driver, anchor: str, timeout: float = 5.0) -> bool:
    """Wait (smooth scrolling) until the element `#anchor` is at the top of the viewport, or the page is scrolled
    to its end with the element in view; False if neither happens within `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    script = (
        "const e = document.getElementById(arguments[0]); const r = e.getBoundingClientRect();"
        " const end = window.scrollY + window.innerHeight >= document.documentElement.scrollHeight - 2;"
        " return (r.top >= -2 && r.top <= 90) || (end && r.top >= 0 && r.top < window.innerHeight);"
    )
    while time.monotonic() < deadline:
        if driver.execute_script(script, anchor):
            return True
        time.sleep(0.1)
    return False
