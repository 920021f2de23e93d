import json

import numpy as np
import pandas as pd
import pytest
import zarr

from unitscope.report.landing import build_report, collect_units
from unitscope.report.sections import finding, finding_number, unit_href, write_section


def study_card(title: str, null: bool) -> dict:
    return finding(
        question=f"Does {title} do it?",
        answer=f"{title}: {'no effect beyond chance' if null else 'a clear effect'}.",
        numbers=[finding_number("effect", "0.50", interval="[0.40, 0.60]", n="N = 3 images")],
        figure=None,
        null=null,
    )


def make_inputs(tmp_path):
    manifest = pd.DataFrame(
        {
            "image_id": ["faces/a.jpg", "faces/b.jpg", "faces/c.jpg"],
            "path": ["/x/a.jpg", "/x/b.jpg", "/x/c.jpg"],
            "category": ["face"] * 3,
            "label": ["0", "1", "1"],
            "sha256": ["0" * 64] * 3,
            "included": [True, True, False],
            "exclude_reason": ["", "", "empty file (0 bytes)"],
        }
    )
    manifest.to_parquet(tmp_path / "manifest.parquet")
    card = {
        "name": "tiny",
        "arch": "cifar_resnet20",
        "parameters": 1234,
        "checkpoint": None,
        "preprocessing": {"resize": 32, "crop": 32},
        "layers": [{"name": "layer3", "shape": [64, 8, 8]}],
        "eval": {"dataset": "objects", "n": 10, "correct": 8, "top1": 0.8, "ci95": [0.49, 0.94]},
    }
    (tmp_path / "card.json").write_text(json.dumps(card))
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    group.create_array("means", shape=(2, 3), dtype="float32")[:] = np.array([[0, 1, 2], [0, 3, 4]], "float32")
    group.attrs.update({"model": "tiny", "dataset": "faces", "layer": "layer3"})
    sections = []
    for study, title, fact in (("faces", "Face units", {"lesion drop": "0.12"}), ("nefesi", "nefesi", {"color": 0.4})):
        sections.append(tmp_path / f"{study}.json")
        write_section(
            sections[-1],
            study=study,
            title=title,
            conclusion=f"{title} found something (n = 3).",
            body_html=f'<p>See <a href="{unit_href("tiny", "layer3", 2)}">channel 2</a>.</p>',
            summary={"headline": np.float32(0.5)},
            finding=study_card(title, null=study == "nefesi"),
            units=[{"model": "tiny", "layer": "layer3", "channel": 2, "facts": fact}],
        )
    return tmp_path / "manifest.parquet", tmp_path / "card.json", tmp_path / "s.zarr", sections


def tiny_report(tmp_path, report, **extra) -> dict:
    """build_report on make_inputs' files, the page in `report`; `extra`: more keyword arguments."""
    manifest, card, store, sections = make_inputs(tmp_path)
    return build_report(
        manifests={"faces": manifest},
        cards={"tiny": card},
        stores=[store],
        figures={},
        sections=sections,
        config={"seed": 0},
        html_path=report / "index.html",
        summary_path=tmp_path / "summary.json",
        **extra,
    )


def test_report_joins_studies_into_unit_pages_and_summary(tmp_path):
    report = tmp_path / "report"
    summary = tiny_report(tmp_path, report)
    assert summary["faces"] == {"headline": 0.5} and summary["nefesi"] == {"headline": 0.5}
    assert summary["datasets"]["faces"] == {"category": "face", "drawn": 3, "included": 2, "excluded": 1}
    assert summary["extraction"]["tiny/faces/layer3"]["dead_channels"] == 1
    html = (report / "index.html").read_text()
    assert "Face units found something (n = 3)." in html and "empty file (0 bytes)" in html
    assert 'href="units/tiny__layer3__2.html"' in html
    # findings first: each study's answer (a null one marked) and card come before any section
    assert html.index("Face units: a clear effect.") < html.index('<h2 id="faces">')
    assert 'nefesi: no effect beyond chance.<span class="null-tag">null result</span>' in html
    assert 'id="finding-faces"' in html and "N = 3 images" in html
    assert '<span class="value">0.50</span><span class="interval">[0.40, 0.60]</span>' in html
    index = (report / "units" / "index.html").read_text()
    assert 'href="tiny__layer3__2.html"' in index and "Face units, nefesi" in index
    page = (report / "units" / "tiny__layer3__2.html").read_text()
    assert "lesion drop" in page and "0.12" in page and "color" in page and "0.4" in page
    assert 'href="../index.html#faces"' in page
    assert json.loads((tmp_path / "summary.json").read_text())["faces"]["headline"] == 0.5


def test_collect_units_merges_the_same_unit_across_studies():
    studies = [
        {"study": "a", "title": "A", "units": [{"model": "m", "layer": "l", "channel": 3, "facts": {"x": 1}}]},
        {
            "study": "b",
            "title": "B",
            "units": [
                {"model": "m", "layer": "l", "channel": 3.0, "facts": {"y": 2}},
                {"model": "m", "layer": "l", "channel": 1, "facts": {}},
            ],
        },
    ]
    units = collect_units(studies)
    assert [(u["channel"], [s["study"] for s in u["studies"]]) for u in units] == [(1, ["b"]), (3, ["a", "b"])]


def test_html_table_links_only_units_with_pages_and_escapes_text():
    from unitscope.report.sections import html_table, unit_hrefs

    frame = pd.DataFrame({"layer": ["conv1", "conv2"], "channel": [3, 7], "note": ["<b>", 0.123456]})
    pages = [{"model": "m", "layer": "conv2", "channel": 7}]
    hrefs = unit_hrefs(["m", "m"], frame["layer"], frame["channel"], pages)
    assert hrefs == [None, "units/m__conv2__7.html"]
    table = html_table(frame, links={"channel": hrefs}, labels={"channel": "ch", "note": "note"}, float_format="{:.2f}")
    assert "<th>ch</th><th>note</th>" in table and "conv1" not in table  # labels pick and rename columns
    assert '<tr><td class="num">3</td>' in table  # no page: plain text; numbers right-aligned
    assert '<tr><td class="num"><a href="units/m__conv2__7.html">7</a></td>' in table
    assert "<td>&lt;b&gt;</td>" in table and '<td class="num">0.12</td>' in table
    with pytest.raises(KeyError, match="'missing'"):
        html_table(frame, labels={"missing": "x"})
    with pytest.raises(ValueError, match="1 hrefs for 2 rows"):
        html_table(frame, links={"channel": ["units/x.html"]})


def test_long_tables_fold_after_their_first_rows_and_short_ones_do_not():
    from unitscope.report.sections import FOLD_AFTER, html_table

    long = html_table(pd.DataFrame({"x": range(FOLD_AFTER + 5)}))
    assert long.count('<tr class="more">') == 5 and f"show all {FOLD_AFTER + 5} rows" in long
    short = html_table(pd.DataFrame({"x": range(FOLD_AFTER + 2)}))  # folding away two rows saves nothing
    assert "more" not in short and "show all" not in short
    assert "show all" not in html_table(pd.DataFrame({"x": range(50)}), fold_after=None)


def test_a_float_column_reads_at_one_precision_and_formatted_numbers_are_right_aligned():
    from unitscope.report.sections import column_decimals, html_table, is_numeric_text

    assert [column_decimals(v) for v in ([0.682, 0.026], [6.94, 0.26], [1280.0], [float("nan")])] == [3, 2, 0, 2]
    table = html_table(pd.DataFrame({"kl": [0.682, 0.026, float("nan")], "share": ["12.3%", "4.0%", "n/a"]}))
    assert '<td class="num">0.026</td>' in table and '<td class="num">n/a</td>' in table
    assert '<td class="num">12.3%</td>' in table
    assert all(is_numeric_text(t) for t in ["0.68 [0.50, 0.81]", "1,280", "<1e-300", "4.98×", "−0.5"])
    assert not any(is_numeric_text(t) for t in ["conv1", "layer3.1", "2 of 16", "car"])


def test_a_finding_is_one_sentence_with_one_to_three_numbers_and_a_described_figure():
    number = finding_number("x", "1.0", interval="[0.9, 1.1]", n="N = 5")
    ok = finding(question="Q?", answer="One  sentence.", numbers=[number], figure=None, null=False)
    assert ok["answer"] == "One sentence." and ok["null"] is False
    with pytest.raises(ValueError, match="is one sentence"):
        finding(question="Q?", answer="One. Two.", numbers=[number], figure=None, null=False)
    with pytest.raises(ValueError, match="1 to 3 numbers"):
        finding(question="Q?", answer="One.", numbers=[number] * 4, figure=None, null=False)
    with pytest.raises(ValueError, match="alt"):
        finding(question="Q?", answer="One.", numbers=[number], figure={"src": "a.png", "caption": "c"}, null=True)


def test_the_atlas_is_listed_and_unit_pages_of_its_layers_link_to_their_atlas_pages(tmp_path):
    atlas = tmp_path / "results" / "atlas"
    atlas.mkdir(parents=True)
    layers = [{"model": "tiny", "layer": "layer3", "units": 64}, {"model": "tiny", "layer": "layer2", "units": 32}]
    (atlas / "index.json").write_text(json.dumps({"layers": layers, "units": 96}))
    report = tmp_path / "results" / "report"
    summary = tiny_report(tmp_path, report, atlas=[atlas / "index.json"])
    assert summary["atlas"] == {"units": 96, "layers": ["tiny/layer3", "tiny/layer2"]}
    html = (report / "index.html").read_text()
    assert '<h2 id="atlas">' in html and "96 units" in html
    assert 'href="../atlas/tiny/layer3/index.html"' in html and 'href="../atlas/tiny/layer2/index.html"' in html
    page = (report / "units" / "tiny__layer3__2.html").read_text()
    link = '<a href="../../atlas/tiny/layer3/units/2.html">'
    assert link in page
    assert (report / "units" / "../../atlas/tiny/layer3/units").resolve() == atlas / "tiny" / "layer3" / "units"


def test_without_the_atlas_the_report_has_no_atlas_part(tmp_path):
    summary = tiny_report(tmp_path, tmp_path / "report")
    assert "atlas" not in summary
    assert 'id="atlas"' not in (tmp_path / "report" / "index.html").read_text()
    assert "atlas" not in (tmp_path / "report" / "units" / "tiny__layer3__2.html").read_text()
