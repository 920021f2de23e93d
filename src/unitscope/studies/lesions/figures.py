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


# ---------------------------------------------------------------------------------------------- colour units

EVAL_SETS = ("biased", "unbiased", "conflicting")  # actmax.colored_mnist.EVAL_SETS (no torch here)
SET_COLOURS = {"intact": "#555555", "colour": "#c0392b", "shape": "#2c7fb8"}
SET_NAMES = {"intact": "intact", "colour": "colour set lesioned", "shape": "shape set lesioned"}
SET_OFFSETS = {"intact": -0.25, "colour": 0.0, "shape": 0.25}


def colour_units_figure(compared: pd.DataFrame, path: str | os.PathLike) -> None:
    """One panel per layer: accuracy on the biased, unbiased and conflicting digits of the intact network and with
    the layer's colour set or shape set lesioned (95% paired bootstrap interval), each beside the 95% range of its
    random sets of the same size (as accuracies: intact plus the random sets' change)."""
    layers = list(dict.fromkeys(compared["layer"])) if len(compared) else []
    with plt.rc_context({"font.size": MIN_FONT + 1}):
        fig, axes = plt.subplots(
            1, max(1, len(layers)), figsize=(FIGURE_WIDTH - 0.6, 3.1), sharey=True, layout="constrained", squeeze=False
        )
        for ax, layer in zip(axes[0], layers, strict=False):
            _colour_panel(ax, compared[compared["layer"] == layer], layer)
        if not layers:
            _empty(axes[0, 0], "no layer has a colour unit: nothing lesioned")
        axes[0, 0].set_ylabel("accuracy (%)")
        handles = [
            plt.Line2D([], [], color=SET_COLOURS[kind], marker="o", ls="", label=SET_NAMES[kind])
            for kind in SET_COLOURS
        ]
        handles.append(
            plt.Rectangle(
                (0, 0), 1, 1, color="#999999", alpha=0.35, lw=0, label="light bar: its random sets' 95% range"
            )
        )
        fig.legend(handles=handles, loc="outside upper center", ncol=4, frameon=False)
        save_figure(fig, path)


def _colour_panel(ax, rows: pd.DataFrame, layer: str) -> None:
    x = np.arange(len(EVAL_SETS))
    by = {(row.kind, row.measure): row for row in rows.itertuples()}
    first = {m: next(by[(kind, m)] for kind in ("colour", "shape") if (kind, m) in by) for m in EVAL_SETS}
    ax.plot(x + SET_OFFSETS["intact"], [100 * first[m].intact for m in EVAL_SETS], "o", color=SET_COLOURS["intact"])
    for kind in ("colour", "shape"):
        if not all((kind, m) in by for m in EVAL_SETS):
            continue
        part = [by[(kind, m)] for m in EVAL_SETS]
        at = x + SET_OFFSETS[kind]
        low = np.array([100 * (r.intact + r.null_low) for r in part])
        high = np.array([100 * (r.intact + r.null_high) for r in part])
        ax.bar(at, high - low, bottom=low, width=0.2, color=SET_COLOURS[kind], alpha=0.2, lw=0)
        value = np.array([100 * r.value for r in part])
        ends = np.array([[100 * (r.intact + r.change_low), 100 * (r.intact + r.change_high)] for r in part])
        errors = np.abs(ends.T - value)
        ax.errorbar(at, value, yerr=errors, fmt="o", color=SET_COLOURS[kind], ms=5, capsize=2)
    size = int(rows["set_size"].iloc[0])
    ax.set_title(f"{layer} ({size} unit{'' if size == 1 else 's'} per set)")
    ax.set_xticks(x, EVAL_SETS)
    ax.set_ylim(-3, 103)
    ax.grid(axis="y", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------------------------------------- concept detectors

FAMILY_COLOURS = {"random": "#e08214", "matched": "#8073ac"}
GROUPS = {"high": ("concept-rich frames", "o", "black"), "low": ("concept-poor frames", "o", "white")}


def concept_units_figure(compared: pd.DataFrame, path: str | os.PathLike) -> None:
    """One row per concept tested. Left: the output change (KL from the intact output, nats, log scale) when its
    detectors are lesioned, on the frames the concept covers most (filled) and least (open), each with its 95%
    bootstrap interval, beside the 95% ranges of the random and the matched sets on the same frames. Right: the
    tested difference (rich minus poor) against the same ranges, with each family's BH q-value."""
    concepts = list(dict.fromkeys(compared["concept"])) if len(compared) else []
    height = 1.2 + 0.62 * max(1, len(concepts))
    with plt.rc_context({"font.size": MIN_FONT + 1}):
        fig, axes = plt.subplots(
            1, 2, figsize=(FIGURE_WIDTH - 0.6, height), sharey=True, layout="constrained", width_ratios=(1.25, 1)
        )
        if not concepts:
            _empty(axes[0], "no concept has enough detectors")
            _empty(axes[1], "")
        else:
            rows = {c: {r["control"]: r for _, r in compared[compared["concept"] == c].iterrows()} for c in concepts}
            _kl_panel(axes[0], rows)
            _difference_panel(axes[1], rows)
            labels = [f"{c} ({int(next(iter(r.values()))['set_size'])})" for c, r in rows.items()]
            axes[0].set_yticks(np.arange(len(concepts)), labels)
            axes[0].set_ylim(len(concepts) - 0.5, -0.5)
        handles = [
            plt.Line2D([], [], color="black", marker="o", mfc=face, ls="", label=f"detectors lesioned, {name}")
            for name, _, face in GROUPS.values()
        ]
        handles += [
            plt.Line2D([], [], color=colour, lw=5, alpha=0.45, label=f"{family} sets, 95% range")
            for family, colour in FAMILY_COLOURS.items()
        ]
        fig.legend(handles=handles, loc="outside upper center", ncol=2, frameon=False)
        save_figure(fig, path)


def _control_ranges(ax, y: float, families: dict, statistic: str) -> None:
    for offset, (family, colour) in zip((-0.07, 0.07), FAMILY_COLOURS.items(), strict=True):
        if family in families and np.isfinite(families[family][f"null_{statistic}_low"]):
            row = families[family]
            ax.plot(
                [row[f"null_{statistic}_low"], row[f"null_{statistic}_high"]],
                [y + offset] * 2,
                color=colour,
                lw=5,
                alpha=0.45,
                solid_capstyle="butt",
            )


def _kl_panel(ax, rows: dict) -> None:
    for i, families in enumerate(rows.values()):
        first = next(iter(families.values()))
        for (group, (_, marker, face)), shift in zip(GROUPS.items(), (-0.22, 0.22), strict=True):
            _control_ranges(ax, i + shift, families, f"kl_{group}")
            value = first[f"kl_{group}"]
            errors = np.abs(np.array([[first[f"kl_{group}_ci_low"]], [first[f"kl_{group}_ci_high"]]]) - value)
            ax.errorbar([value], [i + shift], xerr=errors, fmt=marker, mfc=face, color="black", ms=5, capsize=2)
    ax.set_xscale("log")
    ax.set_xlabel("output change: KL from intact (nats)")
    ax.grid(axis="x", color="#dddddd", lw=0.6, which="major")
    ax.set_axisbelow(True)


def _difference_panel(ax, rows: dict) -> None:
    for i, families in enumerate(rows.values()):
        first = next(iter(families.values()))
        _control_ranges(ax, i, families, "kl_difference")
        value = first["kl_difference"]
        errors = np.abs(np.array([[first["kl_difference_ci_low"]], [first["kl_difference_ci_high"]]]) - value)
        ax.errorbar([value], [i], xerr=errors, fmt="D", color="black", ms=5, capsize=2)
        q = ", ".join(f"{family} {_q(row['q_value'])}" for family, row in families.items())
        ax.annotate(
            f"q {q}",
            (1.0, i),
            xycoords=("axes fraction", "data"),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=MIN_FONT,
        )
    ax.axvline(0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("KL rich − poor (nats)")
    ax.grid(axis="x", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)


def _q(q: float) -> str:
    return "n/a" if not np.isfinite(q) else (f"{q:.3f}" if q >= 0.001 else f"{q:.0e}")
