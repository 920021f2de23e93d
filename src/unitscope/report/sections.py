"""A study's contribution to the report, as one JSON file per study: results/<study>/section.json.

Each study stage writes its section with `write_section`; the report stage reads them all, puts each
`conclusion` on the landing page (linked to the section), renders `body_html` as the section, and
merges `summary` into results/summary.json under the study's name. Figures referenced in `body_html`
are paths relative to results/report/ (e.g. "figures/faces/lesion.png").

`units` lists the units the study singled out, each a dict with at least `model`, `layer`, `channel`
and a `facts` dict (name -> value or short text), optionally `images` (a list of {"src", "caption"} with
src relative to results/report/), so the report can join what every study knows about one unit on one
page. Tables in `body_html` are built with `html_table`, which links each unit the study lists to that
page (`unit_hrefs` gives the links for a table's rows).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from markupsafe import Markup

from unitscope.fsutil import write_text_atomic
from unitscope.report.render import environment

SECTION_KEYS = ("study", "title", "conclusion", "body_html", "summary", "units")


def unit_page_name(model: str, layer: str, channel: int) -> str:
    """File name of a unit's page inside results/report/units/."""
    return f"{model}__{layer}__{int(channel)}.html"


def unit_href(model: str, layer: str, channel: int) -> str:
    """Link to a unit's page, relative to results/report/ (where section bodies are rendered)."""
    return f"units/{unit_page_name(model, layer, channel)}"


def unit_hrefs(
    models: Sequence[str], layers: Sequence[str], channels: Sequence[int], units: Sequence[Mapping] | None = None
) -> list[str | None]:
    """One link per table row to that unit's page; None for a row whose unit is not in `units` (the study's
    singled-out units, which are the ones that get a page), so a table never links to a page that does not exist.
    With units=None every row is linked."""
    known = None if units is None else {(u["model"], u["layer"], int(u["channel"])) for u in units}
    return [
        unit_href(model, layer, channel) if known is None or (model, layer, int(channel)) in known else None
        for model, layer, channel in zip(models, layers, channels, strict=True)
    ]


def table_rows(
    frame,
    *,
    links: Mapping[str, Sequence[str | None]] | None = None,
    labels: Mapping[str, str] | None = None,
    float_format: str | None = None,
) -> tuple[list[str], list[list[dict]]]:
    """A frame as (header, rows of cells {text, href, numeric}) for the `table` macro of `_macros.html.j2`.

    `links` maps a column to one href per row (None: that cell is not linked), e.g. `unit_hrefs(...)` for a
    channel column; `labels` picks and renames columns (in its order; default all, as named); `float_format`
    (e.g. "{:.3f}") formats float cells.
    """
    links = links or {}
    columns = list(labels) if labels is not None else list(frame.columns)
    missing = [column for column in [*columns, *links] if column not in frame.columns]
    if missing:
        raise KeyError(f"table has no column(s) {', '.join(map(repr, missing))}; it has {list(frame.columns)}")
    for column, hrefs in links.items():
        if len(hrefs) != len(frame):
            raise ValueError(f"links for column {column!r}: {len(hrefs)} hrefs for {len(frame)} rows")

    def cell(column: str, index: int, value) -> dict:
        numeric = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
        if float_format is not None and isinstance(value, float):
            value = float_format.format(value)
        href = links[column][index] if column in links else None
        return {"text": str(value), "href": href, "numeric": numeric}

    rows = [
        [cell(column, i, value) for column, value in zip(columns, row, strict=True)]
        for i, row in enumerate(frame[columns].itertuples(index=False))
    ]
    return [str((labels or {}).get(c, c)) for c in columns], rows


def html_table(frame, *, caption: str | None = None, **options) -> Markup:
    """The report's one HTML table, for every study section (see `table_rows` for the options): rendered by
    the shared `table` macro, every text escaped."""
    header, rows = table_rows(frame, **options)
    macro = environment().get_template("_macros.html.j2").module.table
    return Markup(macro(header, rows, caption))


def write_section(
    path: str | os.PathLike,
    *,
    study: str,
    title: str,
    conclusion: str,
    body_html: str,
    summary: dict,
    units: list[dict] | None = None,
) -> dict:
    section = {
        "study": study,
        "title": title,
        "conclusion": conclusion,
        "body_html": body_html,
        "summary": summary,
        "units": units or [],
    }
    write_text_atomic(path, json.dumps(section, indent=2, default=_jsonable) + "\n")
    return section


def read_section(path: str | os.PathLike) -> dict:
    section = json.loads(Path(path).read_text())
    missing = [key for key in SECTION_KEYS if key not in section]
    if missing:
        raise ValueError(f"{path}: report section lacks {', '.join(missing)}")
    return section


def _jsonable(value):
    """numpy scalars and arrays in summaries become plain JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
