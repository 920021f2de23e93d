"""A study's contribution to the report, as one JSON file per study: results/<study>/section.json.

Each study stage writes its section with `write_section`; the report stage reads them all, puts each
`conclusion` on the landing page (linked to the section), renders `body_html` as the section, and
merges `summary` into results/summary.json under the study's name. Figures referenced in `body_html`
are paths relative to results/report/ (e.g. "figures/faces/lesion.png").

`units` lists the units the study singled out, each a dict with at least `model`, `layer`, `channel`
and a `facts` dict (name -> value or short text), optionally `images` (a list of {"src", "caption"} with
src relative to results/report/), so the report can join what every study knows about one unit on one
page. Tables in `body_html` link a unit to that page with `unit_href(model, layer, channel)`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from unitscope.fsutil import write_text_atomic

SECTION_KEYS = ("study", "title", "conclusion", "body_html", "summary", "units")


def unit_page_name(model: str, layer: str, channel: int) -> str:
    """File name of a unit's page inside results/report/units/."""
    return f"{model}__{layer}__{int(channel)}.html"


def unit_href(model: str, layer: str, channel: int) -> str:
    """Link to a unit's page, relative to results/report/ (where section bodies are rendered)."""
    return f"units/{unit_page_name(model, layer, channel)}"


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
