"""Saving a figure: every figure of the report is a PNG written whole then renamed, at one resolution."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from unitscope.fsutil import atomic_path  # noqa: E402

DPI = 110
TEXT_COLUMN_PX = 960  # the report's text column (report/templates/_style.html.j2: --text)
FIGURE_WIDTH = 8.4  # inches: 924 px at DPI, inside the text column before bbox_inches="tight" trims or grows it
MIN_FONT = 9  # points: the smallest text of any figure of the report


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write `fig` as a PNG at `path` (atomically) and close it."""
    with atomic_path(path) as temp:
        write_png(fig, temp)


def write_png(fig, path: str | os.PathLike) -> None:
    """Write `fig` as a PNG at `path` directly (inside a folder that is itself written atomically) and close it."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight", format="png")
    plt.close(fig)
