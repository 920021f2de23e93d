"""The report of the tiny run with every study on, opened in a real headless Chromium (Debian's chromium +
chromium-driver): links, images, unit pages, and what a reader sees first on a laptop and on a phone.

Screenshots of the landing page go to the test's temporary folder, or to $UNITSCOPE_SCREENSHOTS when set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from browser import crawl_report, on_first_screen, open_unit_page_from_section, overflowing, scrolled_to, show_at
from wfutil import STUDIES

pytestmark = pytest.mark.integration
SCREENS = {"laptop": (1366, 768), "phone": (390, 844)}


@pytest.fixture(autouse=True)
def window_size_restored(browser):
    """A test that emulates a screen size leaves the module's browser at its own size."""
    yield
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_report_loads_renders_every_image_and_every_internal_link_resolves(browser, tiny_studies_run):
    workdir, _ = tiny_studies_run
    pages = crawl_report(browser, workdir)
    assert any(page.endswith("/units/index.html") for page in pages), "the unit index is not linked"
    assert any("/units/" in page and not page.endswith("index.html") for page in pages), "no unit page reachable"
    browser.get((workdir / "results" / "report" / "index.html").as_uri())
    assert "unitscope report" in browser.title


def test_a_unit_page_opens_from_the_unit_index_and_from_a_study_table(browser, tiny_studies_run):
    from selenium.webdriver.common.by import By

    workdir, _ = tiny_studies_run
    browser.get((workdir / "results" / "report" / "index.html").as_uri())
    browser.find_element(By.CSS_SELECTOR, "#toc a[href='units/index.html']").click()
    assert browser.current_url.endswith("/units/index.html")
    browser.find_element(By.CSS_SELECTOR, "table a[href$='.html']").click()
    assert "/units/" in browser.current_url and "channel" in browser.find_element(By.TAG_NAME, "h1").text
    assert "channel" in open_unit_page_from_section(browser, workdir, "faces")


@pytest.mark.parametrize("screen", SCREENS)
def test_the_first_screen_answers_every_study_and_nothing_overflows(browser, tiny_studies_run, screen, tmp_path):
    from selenium.webdriver.common.by import By

    workdir, _ = tiny_studies_run
    report = workdir / "results" / "report"
    studies = [json.loads(p.read_text()) for p in sorted((workdir / "results").glob("*/section.json"))]
    assert len(studies) == len(STUDIES)  # every study is on in the all-studies run
    show_at(browser, *SCREENS[screen], (report / "index.html").as_uri())
    folder = Path(os.environ.get("UNITSCOPE_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(folder / f"landing_{screen}.png"))
    answers = {e.get_attribute("data-study"): e.text for e in browser.find_elements(By.CSS_SELECTOR, "li.answer")}
    for section in studies:  # each study's one-sentence answer, generated from its results, is on the first screen
        assert section["finding"]["answer"] in answers[section["study"]]
    assert all(on_first_screen(browser, "li.answer")), f"{screen}: an answer lies below the first screen"
    assert overflowing(browser) == 0, f"{screen}: the page is wider than the screen"
    for study in (s["study"] for s in studies):  # every figure fits its column
        widths = browser.execute_script(
            "return Array.from(document.querySelectorAll(`section[data-study='${arguments[0]}'] img`))"
            ".map(i => [i.getBoundingClientRect().right, document.documentElement.clientWidth])",
            study,
        )
        assert all(right <= width + 1 for right, width in widths), f"{screen}: a {study} figure is cut off"


def test_contents_links_scroll_to_their_sections_and_long_tables_unfold(browser, tiny_studies_run):
    from selenium.webdriver.common.by import By

    workdir, _ = tiny_studies_run
    show_at(browser, *SCREENS["laptop"], (workdir / "results" / "report" / "index.html").as_uri())
    links = browser.find_elements(By.CSS_SELECTOR, "#toc a[href^='#']")
    assert len(links) >= 4 + 6  # findings, the four studies, the run and its parts
    for link in links:
        anchor = link.get_attribute("href").split("#")[1]
        link.click()
        assert scrolled_to(browser, anchor), f"the contents link to #{anchor} did not scroll to it"
    fold = browser.find_element(By.CSS_SELECTOR, ".fold")
    hidden = [row for row in fold.find_elements(By.CSS_SELECTOR, "tr.more") if not row.is_displayed()]
    assert hidden, "a folded table shows all its rows"
    browser.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", fold)
    fold.find_element(By.CSS_SELECTOR, "label.show-all").click()
    assert all(row.is_displayed() for row in fold.find_elements(By.CSS_SELECTOR, "tr.more"))


def test_the_atlas_opens_from_the_report_and_its_unit_pages_link_back(browser, tiny_studies_run):
    """The report's atlas table opens the layer's page; a unit page there shows its NF and crops, the studies that
    name the unit and a link back to the report's page of that unit, which links to it in turn."""
    from browser import check_page
    from selenium.webdriver.common.by import By

    workdir, _ = tiny_studies_run
    report = workdir / "results" / "report"
    browser.get((report / "index.html").as_uri())
    link = browser.find_element(By.XPATH, "//h2[@id='atlas']/following::a[contains(@href, 'layer1/index.html')]")
    browser.get(link.get_attribute("href"))  # (not a click: the contents bar may cover the link on a small window)
    assert browser.current_url.endswith("/atlas/resnet20_cifar/layer1/index.html")
    check_page(browser, browser.current_url)  # every NF thumbnail renders, no console error
    summary = json.loads((workdir / "results" / "summary.json").read_text())
    assert summary["atlas"] == {"units": 16, "layers": ["resnet20_cifar/layer1"]}
    mentioned = sorted(
        int(page.stem.rsplit("__", 1)[1]) for page in report.glob("units/resnet20_cifar__layer1__*.html")
    )
    assert mentioned, "no study singles out a unit of resnet20_cifar layer1 in the tiny run"
    atlas_unit = workdir / f"results/atlas/resnet20_cifar/layer1/units/{mentioned[0]}.html"
    links = check_page(browser, atlas_unit.as_uri())
    assert len(browser.find_elements(By.TAG_NAME, "img")) >= 3  # the NF, at least one crop, the actmax image
    assert "activation maximisation 1 of resnet20_cifar/layer1/" in atlas_unit.read_text()
    assert '<h2 id="dissection">' in atlas_unit.read_text()  # the dissection dissects layer1: its tallies are read
    table = pd.read_parquet(workdir / "results/atlas/resnet20_cifar/layer1/units.parquet")
    assert table["actmax.activation"].notna().all() and len(table) == 16
    report_page = (report / "units" / f"resnet20_cifar__layer1__{mentioned[0]}.html").as_uri()
    assert report_page in links, "the atlas page does not link to the report's page of the unit"
    assert atlas_unit.as_uri() in check_page(browser, report_page), "the report's unit page does not link back"
