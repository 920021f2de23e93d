"""One Jinja environment for every page and section of the report: prose lives in templates, numbers are
computed in Python and formatted by the filters here, the same way everywhere.

Templates are looked up in the calling study's own `templates/` folder first, then in
`unitscope/report/templates/` (the landing page, unit pages and the shared macros in `_macros.html.j2`:
`figure` and `table`). `*.html.j2` templates are autoescaped, `*.txt.j2` ones (plain text such as a section's
one-sentence conclusion, escaped where it is shown) are not; an undefined name is an error, not an empty string.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import jinja2
from markupsafe import Markup

TEMPLATES = Path(__file__).resolve().parent / "templates"
MISSING = "n/a"


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and not math.isfinite(x))


def pct(x: float | None, digits: int = 1) -> str:
    """A share as a percentage: 0.1234 -> '12.3%'; None or NaN -> 'n/a'."""
    return f"{100 * float(x):.{digits}f}%" if _finite(x) else MISSING


def num(x: float | None, digits: int = 3) -> str:
    """A number with `digits` significant digits; None or NaN -> 'n/a'."""
    return f"{float(x):.{digits}g}" if _finite(x) else MISSING


def fixed(x: float | None, digits: int = 2) -> str:
    """A number with `digits` decimals; None or NaN -> 'n/a'."""
    return f"{float(x):.{digits}f}" if _finite(x) else MISSING


def p_value(x: float | None) -> str:
    """A p-value: three decimals, or scientific below 0.001."""
    if not _finite(x):
        return MISSING
    return f"{x:.3f}" if x >= 0.001 else (f"{x:.1e}" if x > 0 else "<1e-300")


def ci(bounds: Sequence[float] | None, percent: bool = False, digits: int | None = None) -> str:
    """An interval as '[low, high]' (percentages with percent=True); 'n/a' when missing."""
    if bounds is None or len(bounds) != 2 or not all(_finite(b) for b in bounds):
        return MISSING
    low, high = (float(b) for b in bounds)
    if percent:
        return f"[{pct(low, 1 if digits is None else digits)}, {pct(high, 1 if digits is None else digits)}]"
    return f"[{fixed(low, 2 if digits is None else digits)}, {fixed(high, 2 if digits is None else digits)}]"


FILTERS = {"pct": pct, "num": num, "fixed": fixed, "p": p_value, "ci": ci}


@cache
def environment(study_templates: str | None = None) -> jinja2.Environment:
    """The report's Jinja environment; `study_templates` (a folder) is searched before the shared one."""
    folders = [study_templates, str(TEMPLATES)] if study_templates else [str(TEMPLATES)]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folders),
        # HTML templates (*.html.j2) are autoescaped; plain-text ones (*.txt.j2, e.g. a conclusion that the
        # landing page escapes itself) are not, so nothing is escaped twice.
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default=False),
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(FILTERS)
    return env


def render_text(template: str, study_dir: str | os.PathLike | None = None, **context) -> str:
    """Plain text on one line from `template` (a conclusion, a caption): an HTML template's tags are dropped and
    its entities resolved; line breaks and indents become single spaces. Where the text is shown it is escaped."""
    rendered = Markup(render(template, study_dir, **context))
    return rendered.striptags() if template.endswith(".html.j2") else " ".join(rendered.unescape().split())


def render(template: str, study_dir: str | os.PathLike | None = None, **context) -> str:
    """Render `template` (a file name) with `context`; `study_dir` is the study package's folder, whose
    `templates/` is searched first."""
    folder = str(Path(study_dir) / "templates") if study_dir else None
    return environment(folder).get_template(template).render(**context)
