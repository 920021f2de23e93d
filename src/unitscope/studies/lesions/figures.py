"""The lesions study's figures, drawn from its tables (no network runs here)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from unitscope.report.plotting import FIGURE_WIDTH, MIN_FONT, plt, save_figure

KIND_COLOURS = {"selective": "#c0392b", "important": "#2c7fb8"}
KIND_NAMES = {"selective": "most selective units", "important": "most important units"}
MODE_TITLES = {"lesion": "Set lesioned", "keep_only": "Only the set kept"}


def class_units_figure(
    pooled: pd.DataFrame, units: pd.DataFrame, agreement: pd.DataFrame, path: str | os.PathLike
) -> None:
    """Left and middle: the class-accuracy change (percentage points, mean over classes, evaluation half) when a
    class's k most selective or most important units are lesioned or kept alone, with the 95% range of random sets
    of the same size. Right: each (unit, class) pair's selectivity against its own lesion's accuracy drop."""
    with plt.rc_context({"font.size": MIN_FONT + 1}):
        fig, axes = plt.subplots(1, 3, figsize=(FIGURE_WIDTH - 0.6, 3.3), layout="constrained")
        for ax, mode in zip(axes[:2], ("lesion", "keep_only"), strict=True):
            _effect_panel(ax, pooled[(pooled["mode"] == mode) & (pooled["control"] == "random")], MODE_TITLES[mode])
        _scatter_panel(axes[2], units, agreement)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper center", ncol=2, frameon=False)
        save_figure(fig, path)


def _effect_panel(ax, rows: pd.DataFrame, title: str) -> None:
    for kind, colour in KIND_COLOURS.items():
        part = rows[rows["kind"] == kind].sort_values("k")
        if part.empty:
            continue
        k = part["k"].to_numpy()
        ax.fill_between(k, 100 * part["null_low"], 100 * part["null_high"], color=colour, alpha=0.15, lw=0)
        errors = 100 * np.abs(part[["change_low", "change_high"]].to_numpy().T - part["accuracy_change"].to_numpy())
        ax.errorbar(
            k,
            100 * part["accuracy_change"],
            yerr=errors,
            color=colour,
            marker="o",
            ms=4,
            capsize=2,
            label=f"{KIND_NAMES[kind]} (band: random sets)",
        )
    ax.axhline(0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(rows["k"].unique()), [str(k) for k in sorted(rows["k"].unique())])
    ax.minorticks_off()
    ax.set_xlabel("units in the set (k)")
    ax.set_ylabel("class accuracy change (pts)")
    ax.set_title(title)


def _scatter_panel(ax, units: pd.DataFrame, agreement: pd.DataFrame) -> None:
    mean = agreement[(agreement["kind"] == "per class") & (agreement["class_name"] == "mean over classes")]
    ax.scatter(units["selectivity"], 100 * units["accuracy_drop"], s=6, alpha=0.4, color="#555555", lw=0)
    ax.axhline(0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("selectivity for the class (nefesi share)")
    ax.set_ylabel("own lesion's accuracy drop (pts)")
    if len(mean):
        row = mean.iloc[0]
        ax.set_title(f"mean Spearman ρ {row['rho']:.2f} [{row['low']:.2f}, {row['high']:.2f}]")
