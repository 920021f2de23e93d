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
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from markupsafe import Markup

from unitscope.fsutil import write_text_atomic
from unitscope.report.render import MISSING, environment

SECTION_KEYS = ("study", "title", "conclusion", "body_html", "summary", "units", "finding")
FINDING_NUMBERS = (1, 3)  # a finding card carries one to three numbers
ANSWER_CHARS = 240  # a finding's answer should fit a phone's first screen: studies word it within this (soft)


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


NUMBER = r"[-+−<>≈~]?\s?\d[\d,.]*(?:e[-+]?\d+)?\s?(?:%|×|s|MB| pts)?"
NUMERIC_TEXT = re.compile(rf"^(?:n/a|{NUMBER}(?:\s*\[[^\]]*\])?|\[{NUMBER}, {NUMBER}\])$")
FOLD_AFTER = 10  # a longer table shows its first rows and a "show all" toggle


def is_numeric_text(text: str) -> bool:
    """Whether a formatted cell reads as a number (right-aligned): '12.3%', '0.682 [0.50, 0.81]', '1,280', 'n/a'."""
    return bool(NUMERIC_TEXT.match(text.strip()))


def column_decimals(values) -> int:
    """Decimals that give a float column's largest magnitude three significant digits (at most 4), so a column
    reads at one precision: 0.682 and 0.026 (3 decimals), 6.94 and 0.26 (2), 1280 (0)."""
    finite = np.abs(np.asarray([v for v in values if isinstance(v, float) and math.isfinite(v)], dtype=float))
    if not finite.size or finite.max() == 0:
        return 2
    return int(min(4, max(0, 2 - math.floor(math.log10(finite.max())))))


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
    (e.g. "{:.3f}") formats float cells, otherwise each float column gets one precision (`column_decimals`).
    Numbers and cells that read as numbers (formatted percentages, intervals) are right-aligned.
    """
    links = links or {}
    columns = list(labels) if labels is not None else list(frame.columns)
    missing = [column for column in [*columns, *links] if column not in frame.columns]
    if missing:
        raise KeyError(f"table has no column(s) {', '.join(map(repr, missing))}; it has {list(frame.columns)}")
    for column, hrefs in links.items():
        if len(hrefs) != len(frame):
            raise ValueError(f"links for column {column!r}: {len(hrefs)} hrefs for {len(frame)} rows")
    formats = {column: float_format or f"{{:.{column_decimals(frame[column].tolist())}f}}" for column in columns}

    def cell(column: str, index: int, value) -> dict:
        numeric = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
        if isinstance(value, float | np.floating):
            value = formats[column].format(value) if math.isfinite(value) else MISSING
        text = str(value)
        href = links[column][index] if column in links else None
        return {"text": text, "href": href, "numeric": numeric or is_numeric_text(text)}

    rows = [
        [cell(column, i, value) for column, value in zip(columns, row, strict=True)]
        for i, row in enumerate(frame[columns].itertuples(index=False))
    ]
    return [str((labels or {}).get(c, c)) for c in columns], rows


def html_table(frame, *, caption: str | None = None, fold_after: int | None = FOLD_AFTER, **options) -> Markup:
    """The report's one HTML table, for every study section (see `table_rows` for the options): rendered by
    the shared `table` macro, every text escaped; rows after the first `fold_after` behind "show all"."""
    header, rows = table_rows(frame, **options)
    macro = environment().get_template("_macros.html.j2").module.table
    return Markup(macro(header, rows, caption, fold_after))


def finding_number(label: str, value: str, *, n: str, interval: str | None = None) -> dict:
    """One number of a finding card, already formatted by the report's filters (`pct`, `num`, `ci`, `p`):
    e.g. finding_number("lesioned, fixed readout", pct(0.81), interval=ci([0.7, 0.9], percent=True),
    n="19 held-out images"). `n` says what the number rests on; `interval` is None only for a count."""
    return {"label": label, "value": value, "interval": interval, "n": n}


def finding(*, question: str, answer: str, numbers: Sequence[Mapping], figure: Mapping | None, null: bool) -> dict:
    """A study's card on the landing page: the question it asks, a one-sentence answer in plain words generated
    from the results (a null result reads as one: `null=True`), the one figure that shows it
    ({"src", "caption", "alt"}, src relative to results/report/) and the one to three numbers that carry it
    (`finding_number`)."""
    answer = " ".join(answer.split())
    if not answer.endswith(".") or answer[:-1].count(". "):
        raise ValueError(f"a finding's answer is one sentence, not: {answer!r}")
    low, high = FINDING_NUMBERS
    if not low <= len(numbers) <= high:
        raise ValueError(f"a finding carries {low} to {high} numbers, not {len(numbers)}")
    if figure is not None and not all(figure.get(key) for key in ("src", "caption", "alt")):
        raise ValueError(f"a finding's figure needs src, caption and alt: {dict(figure)}")
    return {
        "question": " ".join(question.split()),
        "answer": answer,
        "numbers": [dict(number) for number in numbers],
        "figure": dict(figure) if figure is not None else None,
        "null": bool(null),
    }


def claim(
    *, study: str, claim: str, intervention: str, effect: str, controls: str, p: str, n: str, shown: bool
) -> dict:
    """One row of the landing page's "Claims and their evidence": what the study says about a unit set, the
    intervention behind it, the effect with its interval, what the controls did, the p-values and what the
    effect rests on (all formatted by the report's filters); `shown` False states a null result as one."""
    fields = {"claim": claim, "intervention": intervention, "effect": effect, "controls": controls, "p": p, "n": n}
    empty = [name for name, value in fields.items() if not str(value).strip()]
    if empty:
        raise ValueError(f"a claim needs {', '.join(empty)}: {fields}")
    return {"study": study, **{name: " ".join(str(v).split()) for name, v in fields.items()}, "shown": bool(shown)}


def write_section(
    path: str | os.PathLike,
    *,
    study: str,
    title: str,
    conclusion: str,
    body_html: str,
    summary: dict,
    finding: dict,
    units: list[dict] | None = None,
    claims: list[dict] | None = None,
) -> dict:
    """Write results/<study>/section.json. `finding` (built by `finding`) is the study's card on the landing
    page; `conclusion` the paragraph that opens its section; `claims` (built by `claim`) its rows of the
    landing page's claims table."""
    section = {
        "study": study,
        "title": title,
        "conclusion": conclusion,
        "body_html": body_html,
        "summary": summary,
        "finding": finding,
        "units": units or [],
        "claims": claims or [],
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
