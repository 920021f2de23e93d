"""The report of the tiny run, opened in a real headless Chromium (Debian's chromium + chromium-driver).

Each study's workflow test also opens its own report in the browser (`browser` fixture, tests/browser.py).
"""

from __future__ import annotations

import pytest
from browser import crawl_report, open_unit_page_from_section

pytestmark = pytest.mark.integration


def test_report_loads_renders_every_image_and_every_internal_link_resolves(browser, tiny_local_run):
    workdir, _ = tiny_local_run
    assert crawl_report(browser, workdir)
    browser.get((workdir / "results" / "report" / "index.html").as_uri())
    assert "unitscope report" in browser.title


def test_study_report_and_a_unit_page_opened_from_the_landing_page(browser, tiny_faces_run):
    from selenium.webdriver.common.by import By

    workdir, _ = tiny_faces_run
    pages = crawl_report(browser, workdir)
    assert any("/units/" in page for page in pages), "no unit page is reachable from the landing page"
    browser.get((workdir / "results" / "report" / "index.html").as_uri())
    browser.find_element(By.CSS_SELECTOR, "#units ~ table a[href^='units/']").click()
    assert "/units/" in browser.current_url and "channel" in browser.find_element(By.TAG_NAME, "h1").text
    assert "channel" in open_unit_page_from_section(browser, workdir, "faces")
    browser.get((workdir / "results" / "report" / "index.html").as_uri())
    assert browser.find_element(By.CSS_SELECTOR, "h2#faces").text == "Face-selective units"
