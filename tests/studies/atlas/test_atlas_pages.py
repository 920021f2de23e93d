"""The atlas's layer page (`studies.atlas.pages`): a constructed layer table with a dissection concept, nefesi
indexes, category means and lesion columns (NaNs among them) renders one row per unit with the table's numbers; in
headless Chromium the filter keeps exactly the units of a concept and a header click sorts the rows as pandas does.

The unit pages (`studies.atlas.unit_page`): for a layer folder laid out as the workflow writes it (table, two shards'
exemplars.npz, the dissection's tallies.npz, two studies' sections), every unit's page holds its row's numbers, its
IoU profile as the dissection computes it, its NF and crops with the npz's pixels, links that resolve; in Chromium a
unit id opens its page with every image decoded, and a 1,280-unit index sorts and filters with its columns aligned."""

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


# ---- unit pages ----------------------------------------------------------------------------------------------------
# A layer folder as the workflow lays it out (results/atlas/toy/layer3/): the layer table with intervals, two shards'
# exemplars.npz (the contract of unit_evidence), the dissection's tallies.npz and two studies' sections.

CONCEPTS = pd.DataFrame(
    {
        "code": [1, 2, 3, 5, 6, 7],
        "name": ["sky", "grass", "striped", "skyscraper", "water", "car"],
        "category": ["object", "object", "texture", "object", "material", "object"],
    }
)
SHARDS = ((0, 7), (7, N))
EMPTY = 5
K_SHOWN, PIXELS = 3, 10


def tallies(rng) -> dict[str, np.ndarray]:
    """Counts as the dissection sums them for 12 units and 8 codes (code 0 and 4: no concept)."""
    intersection = rng.integers(0, 60, (N, 8))
    intersection[EMPTY] = 0  # a unit whose mask never overlaps a concept
    return {
        "layer3/intersection": intersection,
        "layer3/unit_area": intersection.max(axis=1, keepdims=True) + rng.integers(1, 200, (N, 3)),
        "layer3/label_area": intersection.max(axis=0) + rng.integers(1, 300, 8),
        "concept_codes": CONCEPTS["code"].to_numpy(),
        "concept_names": CONCEPTS["name"].to_numpy().astype(str),
        "concept_categories": CONCEPTS["category"].to_numpy().astype(str),
        "categories": np.array(["object", "texture", "material"]),
    }


def dissection_columns(arrays: dict) -> pd.DataFrame:
    """The dissection's unit columns (its own `label_units` on its own IoU), as atlas_gather joins them."""
    from unitscope.studies.dissection.dissect import iou_from_counts, label_units

    categories = [str(c) for c in arrays["categories"]]
    code_category, code_name = np.full(8, -1), np.full(8, "", dtype=object)
    for row in CONCEPTS.itertuples():
        code_category[row.code], code_name[row.code] = categories.index(row.category), row.name
    iou = iou_from_counts(
        arrays["layer3/intersection"], arrays["layer3/unit_area"], arrays["layer3/label_area"], code_category
    )
    units = label_units(iou, code_category, code_name, categories, 0.04)
    keep = ["concept", "category", "iou", "detector", "runner_up", "runner_up_iou"]
    return units[keep].rename(columns={c: f"dissection.{c}" for c in keep})


def exemplar_file(path, start: int, stop: int, rng) -> dict[str, np.ndarray]:
    arrays = {
        "channels": np.arange(start, stop, dtype=np.int64),
        "nf": rng.integers(0, 256, (stop - start, PIXELS + 2, PIXELS, 3), dtype=np.uint8),
        "crops": rng.integers(0, 256, (stop - start, K_SHOWN, PIXELS + 2, PIXELS, 3), dtype=np.uint8),
        "activation": rng.random((stop - start, K_SHOWN)).astype(np.float32) * 5,
        "image_id": np.array([[f"img{c}_{j}.png" for j in range(K_SHOWN)] for c in range(start, stop)]),
        "dataset": np.full((stop - start, K_SHOWN), "objects"),
    }
    arrays["dataset"][stop - start - 1, -1] = ""  # the shard's last unit has one exemplar fewer than shown
    np.savez(path, **arrays)
    return arrays


def full_table(arrays: dict, rng) -> pd.DataFrame:
    table = units_table().drop(columns=["dissection.concept", "dissection.iou"])
    for group in ("objects", "scenes", "objects[0]", "objects[6]", "scenes[glacier]"):
        spread = rng.random(N) / 10
        table[f"act.{group}.low"] = table[f"act.{group}.mean"] - spread
        table[f"act.{group}.high"] = table[f"act.{group}.mean"] + spread
    table["flip.objects"] = rng.random(N) / 4
    table["nefesi.orientation_index"] = rng.random(N)
    table["exemplar_share.objects"] = 1.0  # a column no section of the page names: shown among the others
    return pd.concat([table, dissection_columns(arrays)], axis=1)


def write_sections(folder) -> list:
    from unitscope.report.sections import finding, finding_number, write_section

    def section(study, title, units):
        path = folder / study / "section.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        number = finding_number("units", str(len(units)), n=f"N = {len(units)}")
        card = finding(question="Which units?", answer="These.", numbers=[number], figure=None, null=False)
        write_section(
            path, study=study, title=title, conclusion="c", body_html="", summary={}, finding=card, units=units
        )
        return path

    faces = [{"model": "toy", "layer": "layer3", "channel": c, "facts": {"face d'": 1.5}} for c in (3, 7)]
    other = [
        {"model": "toy", "layer": "layer1", "channel": 5, "facts": {}},  # another layer, another model: not ours
        {"model": "other", "layer": "layer3", "channel": 5, "facts": {}},
        {"model": "toy", "layer": "layer3", "channel": 3, "facts": {"best concept": "sky"}},
    ]
    return [section("faces", "Face units", faces), section("dissection", "Network dissection", other)]


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    """The layer folder with its index and unit pages written; returns (folder, table, exemplars, tallies)."""
    from unitscope.studies.atlas.unit_page import LayerSources

    root = tmp_path_factory.mktemp("atlas_units") / "results"
    folder = root / "atlas" / "toy" / "layer3"
    rng = np.random.default_rng(3)
    counts = tallies(rng)
    (root / "dissection" / "toy").mkdir(parents=True)
    np.savez(root / "dissection" / "toy" / "tallies.npz", **counts)
    exemplars, paths = {}, []
    for start, stop in SHARDS:
        path = folder / "shards" / f"{start}-{stop - 1}" / "exemplars.npz"
        path.parent.mkdir(parents=True)
        exemplars[(start, stop)] = exemplar_file(path, start, stop, rng)
        paths.append(path)
    table = full_table(counts, rng)
    table.to_parquet(folder / "units.parquet")
    sources = LayerSources(exemplars=paths, tallies=root / "dissection/toy/tallies.npz", sections=write_sections(root))
    assert write_layer_page(folder / "units.parquet", SETTINGS, folder / "index.html", sources=sources) == N
    return folder, table, exemplars, counts


class PageParts(HTMLParser):
    """A unit page's tables (by id, else data-dataset, else caption-less index) as rows of cell texts, its images
    (src, alt) and its links (id or class -> href)."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.links, self.rows_attrs = {}, [], {}, {}
        self.table = self.row = self.cell = self.link = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.table = attrs.get("id") or attrs.get("data-dataset") or f"table{len(self.tables)}"
            if "class-changes" in (attrs.get("class") or ""):
                self.table = f"changes:{self.table}"
            self.tables[self.table] = []
        elif tag == "tr" and self.table:
            self.row = []
            self.rows_attrs.setdefault(self.table, []).append(attrs)
        elif tag in ("td", "th") and self.row is not None:
            self.cell = ""
        elif tag == "img":
            self.images.append((attrs["src"], attrs["alt"]))
        elif tag == "a":
            self.links.setdefault(attrs.get("id") or attrs.get("class") or "", []).append(attrs["href"])

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.row.append(" ".join(self.cell.split()))
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.tables[self.table].append(self.row)
            self.row = None
        elif tag == "table":
            self.table = None


def unit_parts(folder, channel: int) -> tuple[PageParts, str]:
    html = (folder / "units" / f"{channel}.html").read_text(encoding="utf-8")
    parts = PageParts()
    parts.feed(html)
    return parts, html


def test_every_unit_has_a_page_with_its_rows_numbers(layer):
    from unitscope.report.render import num, pct

    folder, table, _, _ = layer
    assert sorted(p.name for p in (folder / "units").iterdir()) == sorted(f"{c}.html" for c in range(N))
    for record in table.to_dict("records"):
        parts, html = unit_parts(folder, record["channel"])
        assert f'<code class="unit-id">{record["unit"]}</code>' in html
        assert not re.search(r"<link\b|<script[^>]*\bsrc=|\bsrc=\"(?!data:)|https?://", html)  # one file, offline
        groups = {row[0]: row[1:] for row in parts.tables["groups"][1:]}
        for group in ("objects", "scenes"):
            mean, low, high = (record[f"act.{group}.{part}"] for part in ("mean", "low", "high"))
            interval = "n/a" if math.isnan(low) else f"[{num(low)}, {num(high)}]"
            assert groups[group] == [num(mean), interval]  # num(NaN) is 'n/a'
        objects = {row[0]: row[1] for row in parts.tables["objects"][1:]}  # per class, by name
        assert objects == {"airplane": num(record["act.objects[0].mean"]), "frog": num(record["act.objects[6].mean"])}
        lesion = parts.tables["lesion-table"][1]
        assert lesion[:3] == ["objects", num(record["kl.objects"]), pct(record["flip.objects"])]
        changes = dict(parts.tables["changes:objects"][1:])
        for label, name in (("0", "airplane"), ("6", "frog")):
            value = record[f"acc_change.objects[{label}]"]
            assert changes[name] == ("+" if value > 0 else "") + pct(value)
        nefesi = dict(parts.tables["nefesi"])
        assert nefesi["color index"] == f"{record['nefesi.color_index']:.3f}"
        assert nefesi["top class"] == record["nefesi.top_class"]
        names = {"color_index": "colour", "orientation_index": "orientation", "symmetry_index": "symmetry"}
        missing = [name for key, name in (*names.items(), ("class_index", "class")) if f"nefesi.{key}" not in record]
        assert (
            missing and f"Not computed for this layer: the {', '.join(missing)} index" in html
        )  # the table lacks them
        assert dict(parts.tables["other-columns"])["exemplar_share.objects"] == "1"


def test_the_iou_profile_is_the_dissections(layer):
    from unitscope.studies.dissection.dissect import iou_from_counts

    folder, table, _, counts = layer
    code_category = np.array([-1, 0, 0, 1, -1, 0, 2, 0])
    iou = iou_from_counts(
        counts["layer3/intersection"], counts["layer3/unit_area"], counts["layer3/label_area"], code_category
    )
    for record in table.to_dict("records"):
        parts, html = unit_parts(folder, record["channel"])
        ious = iou[record["channel"]][code_category >= 0]
        if record["channel"] == EMPTY:  # no overlap: the dissection names no concept, the page lists none
            assert record["dissection.concept"] == "" and "profile" not in parts.rows_attrs
            assert 'id="no-overlap"' in html and '<strong class="best-concept">none</strong>' in html
            continue
        profile = parts.rows_attrs["profile"][1:]
        assert (profile[0]["data-concept"], float(profile[0]["data-iou"])) == (
            record["dissection.concept"],
            record["dissection.iou"],
        )  # the best concept and its IoU exactly as the dissection's table has them
        assert [float(row["data-iou"]) for row in profile] == sorted(ious[ious > 0].tolist(), reverse=True)
        assert f'<strong class="best-concept">{record["dissection.concept"]}</strong>' in html


def decoded(src: str, kind: str = "png") -> np.ndarray:
    import base64
    import io

    from PIL import Image

    assert src.startswith(f"data:image/{kind};base64,")
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert image.format == kind.upper()
    return np.asarray(image.convert("RGB"))


def jpeg_round_trip(pixels: np.ndarray) -> np.ndarray:
    """The pixels as a quality-85 JPEG decodes them (crops are photographs: stored lossy)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_images_are_the_npz_pixels_and_the_index_has_thumbnails(layer):
    folder, table, exemplars, _ = layer
    index_thumbnails = {}
    for row in parsed(folder.joinpath("index.html").read_text(encoding="utf-8"))[1]:
        index_thumbnails[row["data-unit"]] = row
    nf_alts = re.findall(r'<img src="(data:[^"]+)" alt="NF of ([^"]+)">', (folder / "index.html").read_text())
    thumbnails = {unit: decoded(src) for src, unit in nf_alts}
    assert sorted(thumbnails) == sorted(table["unit"])
    for (start, stop), arrays in exemplars.items():
        for i, channel in enumerate(range(start, stop)):
            parts, html = unit_parts(folder, channel)
            sources = [src for src, _ in parts.images]
            n_crops = K_SHOWN - 1 if channel == stop - 1 else K_SHOWN  # the missing exemplar is not shown
            assert len(sources) == 1 + n_crops
            assert np.array_equal(decoded(sources[0]), arrays["nf"][i])  # the NF: lossless
            for j in range(n_crops):
                assert np.array_equal(decoded(sources[1 + j], "jpeg"), jpeg_round_trip(arrays["crops"][i, j]))
                assert f"{arrays['dataset'][i, j]} {arrays['image_id'][i, j]}" in html
            small = thumbnails[f"toy/layer3/{channel}"]
            assert max(small.shape[:2]) <= 32
            assert np.array_equal(small, arrays["nf"][i])  # 12 x 10 px: already small, kept as it is


def test_navigation_and_studies_links_resolve(layer):
    import os

    folder, table, _, _ = layer
    channels = table["channel"].tolist()
    index_ids = set(re.findall(r'<tr id="(unit-\d+)"', (folder / "index.html").read_text()))
    for at, channel in enumerate(channels):
        parts, _ = unit_parts(folder, channel)
        units = folder / "units"
        previous, following = parts.links.get("previous"), parts.links.get("next")
        assert previous == ([f"{channels[at - 1]}.html"] if at else None)
        assert following == ([f"{channels[at + 1]}.html"] if at + 1 < len(channels) else None)
        for href in (previous or []) + (following or []):
            assert (units / href).is_file()
        back, anchor = parts.links["back"][0].split("#")
        assert (units / back).resolve() == (folder / "index.html").resolve() and anchor in index_ids
    report = folder.parents[2] / "report"
    for channel, titles in ((3, ["Face units", "Network dissection"]), (7, ["Face units"]), (5, [])):
        parts, html = unit_parts(folder, channel)
        assert re.findall(r'<a class="study" href="[^"]+">([^<]+)</a>', html) == titles
        if titles:
            href = parts.links["report-unit"][0]
            expected = report / "units" / f"toy__layer3__{channel}.html"  # unit_page_name, in results/report/units
            assert os.path.normpath(folder / "units" / href) == os.path.normpath(expected)
            assert os.path.normpath(folder / "units" / parts.links["study"][0].split("#")[0]) == os.path.normpath(
                report / "index.html"
            )
        else:
            assert "No study of the report singles this unit out" in html


def test_bad_exemplar_files_are_one_line_errors(tmp_path):
    from unitscope.studies.atlas.inputs import AtlasError
    from unitscope.studies.atlas.unit_page import LayerSources, write_unit_pages

    table = units_table()
    arrays = exemplar_file(tmp_path / "good.npz", 0, 4, np.random.default_rng(0))
    np.savez(tmp_path / "short.npz", **{k: v for k, v in arrays.items() if k != "crops"})
    np.savez(tmp_path / "stray.npz", **{**arrays, "channels": np.arange(20, 24)})
    np.savez(tmp_path / "grey.npz", **{**arrays, "nf": arrays["nf"][..., 0]})
    for name, message in (
        ("short", "lacks crops"),
        ("stray", "unit 20 is not in the layer table"),
        ("grey", "expected uint8 [U, h, w, 3]"),
    ):
        with pytest.raises(AtlasError, match=re.escape(message)) as error:
            write_unit_pages(table, SETTINGS, tmp_path / name, LayerSources(exemplars=[tmp_path / f"{name}.npz"]))
        assert f"{name}.npz" in str(error.value) and "\n" not in str(error.value)
        assert not (tmp_path / name).exists()  # nothing half-written
    with pytest.raises(AtlasError, match="listed twice"):
        write_unit_pages(table, SETTINGS, tmp_path / "twice", LayerSources(exemplars=[tmp_path / "good.npz"] * 2))


def test_unit_pages_without_other_evidence(tmp_path):
    """Only the layer table (no exemplars, no dissection, no study): every unit still has its page and the index no
    thumbnail column."""
    table = units_table()
    table.to_parquet(tmp_path / "units.parquet")
    write_layer_page(tmp_path / "units.parquet", SETTINGS, tmp_path / "index.html")
    html = (tmp_path / "index.html").read_text()
    assert 'data-key="nf"' not in html and "<img" not in html
    assert re.findall(r'<a href="(units/\d+\.html)">', html) == [f"units/{c}.html" for c in range(N)]
    parts, page = unit_parts(tmp_path, 4)
    assert "No exemplar images were computed" in page and not parts.images and 'id="profile"' not in page
    assert 'Best concept <strong class="best-concept">striped</strong>' in page  # the table's concept, no profile


def test_actmax_images_are_on_the_unit_pages_and_their_first_seed_in_the_index(tmp_path):
    """actmax.npz shards (atlas.actmax's layout) of 2 seeds: each unit's page shows both images losslessly with the
    activation each reaches; the index gets an AM thumbnail column; a unit without actmax gets none."""
    from unitscope.fsutil import write_npz
    from unitscope.report.render import num
    from unitscope.studies.atlas.unit_page import LayerSources

    rng = np.random.default_rng(3)
    table = units_table()
    table.to_parquet(tmp_path / "units.parquet")
    shards = []
    for start, stop in ((0, 6), (6, N - 1)):  # the last unit has no actmax image
        arrays = {
            "channels": np.arange(start, stop, dtype=np.int64),
            "images": rng.integers(0, 256, (stop - start, 2, 20, 20, 3), dtype=np.uint8),
            "activation": rng.random((stop - start, 2), dtype=np.float32) * 5,
            "colour_score": rng.random(stop - start, dtype=np.float32),
        }
        write_npz(arrays, tmp_path / f"actmax_{start}.npz")
        shards.append(arrays)
    sources = LayerSources(actmax=[tmp_path / "actmax_0.npz", tmp_path / "actmax_6.npz"])
    write_layer_page(tmp_path / "units.parquet", SETTINGS, tmp_path / "index.html", sources=sources)
    for arrays in shards:
        for i, channel in enumerate(arrays["channels"].tolist()):
            parts, page = unit_parts(tmp_path, channel)
            shown = [decoded(src) for src, alt in parts.images if alt.startswith("activation maximisation")]
            assert len(shown) == 2 and all(
                np.array_equal(a, b) for a, b in zip(shown, arrays["images"][i], strict=True)
            )
            assert f"seed 1 · {num(float(arrays['activation'][i, 1]))}" in page  # the page's own number format
    assert "No activation-maximisation images" in unit_parts(tmp_path, N - 1)[1]
    index = (tmp_path / "index.html").read_text()
    thumbs = re.findall(r'<img src="(data:[^"]+)" alt="AM of ([^"]+)">', index)
    assert [unit for _, unit in thumbs] == [f"toy/layer3/{c}" for c in range(N - 1)]
    assert np.array_equal(decoded(thumbs[0][0]), shards[0]["images"][0, 0])  # 20 px: already thumbnail-sized


# ---- in headless Chromium: the unit pages, and a layer of 1,280 units ----------------------------------------------


def test_in_chromium_a_unit_id_opens_its_page_with_every_image(browser, layer):
    from browser import check_page
    from selenium.webdriver.common.by import By

    folder, _, _, _ = layer
    check_page(browser, (folder / "index.html").as_uri())  # no console error; every thumbnail has naturalWidth > 0
    assert browser.execute_script("return document.querySelectorAll('#units td.nf img').length") == N
    browser.find_element(By.CSS_SELECTOR, "#unit-9 td.unit a").click()
    assert browser.current_url == (folder / "units" / "9.html").as_uri()
    assert browser.find_element(By.CSS_SELECTOR, "h1 .unit-id").text == "toy/layer3/9"
    check_page(browser, browser.current_url)  # the NF and every crop decoded (naturalWidth > 0)
    assert browser.execute_script("return document.images.length") == 1 + K_SHOWN
    browser.find_element(By.ID, "next").click()
    assert browser.current_url == (folder / "units" / "10.html").as_uri()
    browser.find_element(By.ID, "back").click()
    assert browser.current_url == (folder / "index.html").as_uri() + "#unit-10"


def big_table(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(11)
    concepts = np.array(["sky", "skyscraper", "grass", "car", "striped", "water"], dtype=object)
    concepts = concepts[rng.integers(0, len(concepts), n)]
    concepts[n - 30] = "wide-display-monitor-screen"  # the widest text, far below the first rows
    return pd.DataFrame(
        {
            "unit": [f"toy/layer3/{c}" for c in range(n)],
            "channel": np.arange(n),
            "act.objects.mean": rng.random(n),
            "kl.objects": np.where(rng.random(n) < 0.05, np.nan, rng.random(n)),
            "dissection.concept": concepts,
            "dissection.iou": rng.random(n).round(2),  # many ties: sorted in the units' order
        }
    )


ALIGNED = """
const heads = Array.from(document.querySelectorAll('#units th')).map(c => Math.round(c.getBoundingClientRect().left));
const row = Array.from(document.querySelectorAll('#units tbody tr')).find(r => !r.hidden);
return [heads, Array.from(row.cells).map(c => Math.round(c.getBoundingClientRect().left))];
"""


CLIPPED = """
return Array.from(document.querySelectorAll('#units tbody tr')).filter(r => !r.hidden)
  .flatMap(r => Array.from(r.cells)).filter(c => c.scrollWidth > c.clientWidth).map(c => c.textContent);
"""


def test_in_chromium_1280_units_sort_and_filter_in_columns(browser, tmp_path):
    """The frozen layout (rows laid out only when in view) sorts and filters 1,280 rows exactly as the table does,
    and every row's cells stay under their headers."""
    from browser import check_page

    table = big_table(1280)
    (tmp_path / "index.html").write_text(layer_page(table, SETTINGS), encoding="utf-8")
    check_page(browser, (tmp_path / "index.html").as_uri())
    for key, source in (("kl.objects", "kl.objects"), ("iou", "dissection.iou")):
        click_header(browser, key)
        assert browser.execute_script(VISIBLE) == pandas_order(table, source, True), key
        click_header(browser, key)
        assert browser.execute_script(VISIBLE) == pandas_order(table, source, False), key
    heads, cells = browser.execute_script(ALIGNED)
    assert heads == cells
    type_filter(browser, '"sky"')
    sky = table[table["dissection.concept"] == "sky"]
    assert browser.execute_script(VISIBLE) == pandas_order(sky, "dissection.iou", False)
    heads, cells = browser.execute_script(ALIGNED)
    assert heads == cells
    type_filter(browser, "wide-display")  # its column was sized at load for this row, though it was not shown then
    assert browser.execute_script(VISIBLE) == ["toy/layer3/1250"]
    assert browser.execute_script(CLIPPED) == []
