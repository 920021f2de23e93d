"""The atlas's layer page (`studies.atlas.pages`): a constructed layer table with a dissection concept, nefesi
indexes, category means and lesion columns (NaNs among them) renders one row per unit with the table's numbers; in
headless Chromium the filter keeps exactly the units of a concept and a header click sorts the rows as pandas does."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from unitscope.studies.atlas.pages import PageSettings, layer_page, write_layer_page

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
N = 12
NAN = float("nan")


def units_table() -> pd.DataFrame:
    """A layer table as atlas_gather writes it: 12 units, 'sky' the best concept of four, ties and NaNs in IoU/KL."""
    rng = np.random.default_rng(7)
    concepts = ["sky", "grass", None, "sky", "striped", "grass", "sky", NAN, "skyscraper", "water", "sky", "grass"]
    table = pd.DataFrame(
        {
            "unit": [f"toy/layer3/{c}" for c in range(N)],
            "model": "toy",
            "layer": "layer3",
            "channel": np.arange(N, dtype=np.int64),
            "act.objects.mean": rng.random(N),
            "act.scenes.mean": rng.random(N),
            "act.objects[0].mean": rng.random(N),
            "act.objects[6].mean": rng.random(N),
            "act.scenes[glacier].mean": rng.random(N),
            "kl.objects": [0.02, NAN, 0.5, 0.02, 0.1, 1e-6, 0.3, 0.0, NAN, 0.7, 0.2, 0.02],
            "acc_change.objects": rng.normal(0, 0.1, N),
            "acc_change.objects[0]": [-0.5, 0.0, 0.1, -0.2, 0.0, -0.1, 0.0, 0.2, -0.3, 0.0, -0.4, 0.1],
            "acc_change.objects[6]": [-0.1, 0.0, 0.0, -0.6, 0.1, -0.1, 0.0, 0.1, -0.3, 0.0, -0.1, 0.2],
            "nefesi.color_index": rng.random(N),
            "nefesi.top_class": [
                "frog",
                "cat",
                "",
                "ship",
                "frog",
                "dog",
                "cat",
                "bird",
                "deer",
                "frog",
                "cat",
                "ship",
            ],
            "dissection.concept": concepts,
            "dissection.iou": [0.2, NAN, 0.05, 0.31, 0.12, 0.2, 0.07, NAN, 0.2, 0.01, 0.44, 0.09],
        }
    )
    table.loc[3, "act.objects.mean"] = NAN  # a missing mean: the top dataset is the one left
    return table


SETTINGS = PageSettings(model="toy", layer="layer3", label_names={"objects": CIFAR})


class UnitRows(HTMLParser):
    """The rows of the page's #units table: per row its attributes and per cell (text, data-v or None)."""

    def __init__(self):
        super().__init__()
        self.rows, self.headers, self.inside, self.cell = [], [], False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == "units":
            self.inside = True
        elif self.inside and tag == "th":
            self.headers.append(attrs["data-key"])
        elif self.inside and tag == "tr" and "data-unit" in attrs:
            self.rows.append({**attrs, "cells": []})
        elif self.inside and tag == "td":
            self.cell = [attrs.get("data-v"), ""]

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[1] += data

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.rows[-1]["cells"].append((self.cell[1], self.cell[0]))
            self.cell = None
        elif tag == "table":
            self.inside = False


def parsed(html: str) -> tuple[list[str], list[dict]]:
    parser = UnitRows()
    parser.feed(html)
    return parser.headers, parser.rows


def column(headers, rows, key) -> list[tuple[str, str | None]]:
    at = headers.index(key)
    return [row["cells"][at] for row in rows]


def test_page_rows_are_the_table_rows():
    table = units_table()
    html = layer_page(table, SETTINGS)
    headers, rows = parsed(html)
    assert [row["data-unit"] for row in rows] == table["unit"].tolist()
    assert [row["id"] for row in rows] == [f"unit-{c}" for c in table["channel"]]
    assert [text for text, _ in column(headers, rows, "concept")] == [
        c if isinstance(c, str) else "" for c in table["dissection.concept"]
    ]
    for key, source in (("iou", "dissection.iou"), ("kl.objects", "kl.objects"), ("color_index", "nefesi.color_index")):
        cells = column(headers, rows, key)
        for (text, raw), value in zip(cells, table[source], strict=True):
            if math.isnan(value):
                assert (raw, text) == ("", "n/a")
            else:
                assert float(raw) == value and text != "n/a"  # the raw value exactly; the text rounded


def test_derived_columns_equal_pandas():
    """Top dataset by mean activation (NaN skipped), top class by activation, the largest class drop and its class."""
    table = units_table()
    headers, rows = parsed(layer_page(table, SETTINGS))
    groups = table[["act.objects.mean", "act.scenes.mean"]].idxmax(axis=1, skipna=True)
    assert [t for t, _ in column(headers, rows, "top_group")] == [g.split(".")[1] for g in groups]
    labels = table[["act.objects[0].mean", "act.objects[6].mean", "act.scenes[glacier].mean"]].idxmax(axis=1)
    names = {"act.objects[0].mean": "airplane (objects)", "act.objects[6].mean": "frog (objects)"}
    assert [t for t, _ in column(headers, rows, "top_label")] == [names.get(g, "glacier (scenes)") for g in labels]
    changes = table[["acc_change.objects[0]", "acc_change.objects[6]"]]
    drops = [float(raw) for _, raw in column(headers, rows, "drop")]
    assert drops == (-changes.min(axis=1)).tolist()
    worst = changes.idxmin(axis=1).map({"acc_change.objects[0]": "airplane", "acc_change.objects[6]": "frog"})
    expected = [name if drop > 0 else "" for name, drop in zip(worst, drops, strict=True)]
    assert [t for t, _ in column(headers, rows, "drop_class")] == expected


def test_the_page_needs_nothing_from_outside():
    html = layer_page(units_table(), SETTINGS)
    assert not re.search(r"<link\b|<script[^>]*\bsrc=|\bsrc=\"(?!data:)|https?://", html)
    assert "12 of 12 units" in html and "N = 12 units" in html


# ---- in headless Chromium ----------------------------------------------------------------------------------------

VISIBLE = (
    "return Array.from(document.querySelectorAll('#units tbody tr')).filter(r => !r.hidden).map(r => r.dataset.unit)"
)


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    from browser import check_page

    path = tmp_path_factory.mktemp("atlas_page") / "index.html"
    table = units_table()
    table.to_parquet(path.with_name("units.parquet"))
    write_layer_page(path.with_name("units.parquet"), SETTINGS, path)
    check_page(browser, path.as_uri())  # loads without console errors
    return browser, table


def type_filter(browser, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element(By.ID, "filter")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    if text:
        box.send_keys(text)


def click_header(browser, key: str) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, f"#units th[data-key='{key}'] button").click()


def pandas_order(table: pd.DataFrame, source: str, ascending: bool) -> list[str]:
    values = table[source].replace("", np.nan)  # an empty text cell is missing, sorted last as NaN
    order = values.sort_values(ascending=ascending, kind="stable", na_position="last").index
    return table.loc[order, "unit"].tolist()


def test_filtering_by_a_concept_shows_exactly_its_units(page):
    from selenium.webdriver.common.by import By

    browser, table = page
    type_filter(browser, "striped")
    assert browser.execute_script(VISIBLE) == ["toy/layer3/4"]
    type_filter(browser, "SKY")  # any case; 'skyscraper' contains it too, so unit 8 shows as well
    expected = table[table["dissection.concept"].str.contains("sky", na=False)]["unit"].tolist()
    assert browser.execute_script(VISIBLE) == expected and len(expected) == 5
    assert browser.find_element(By.ID, "count").text == f"{len(expected)} of {N} units"
    type_filter(browser, '"sky"')  # quoted: the concept whole, so exactly the units whose best concept is sky
    assert browser.execute_script(VISIBLE) == table[table["dissection.concept"] == "sky"]["unit"].tolist()
    assert browser.find_element(By.ID, "count").text == f"4 of {N} units"
    type_filter(browser, "")
    assert len(browser.execute_script(VISIBLE)) == N
    assert browser.find_element(By.ID, "count").text == f"{N} of {N} units"


def test_a_header_click_sorts_like_pandas_and_a_second_reverses(page):
    browser, table = page
    type_filter(browser, "")
    for key, source in (("iou", "dissection.iou"), ("kl.objects", "kl.objects"), ("concept", "dissection.concept")):
        click_header(browser, key)
        assert browser.execute_script(VISIBLE) == pandas_order(table, source, True), key
        click_header(browser, key)
        assert browser.execute_script(VISIBLE) == pandas_order(table, source, False), key


def test_sorting_keeps_the_filter(page):
    browser, table = page
    type_filter(browser, "grass")
    click_header(browser, "kl.objects")
    grass = table[table["dissection.concept"] == "grass"]
    assert browser.execute_script(VISIBLE) == pandas_order(grass, "kl.objects", True)
