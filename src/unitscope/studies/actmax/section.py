"""The actmax study's report section: results/actmax/section.json, its unit images and the numbers its prose
states. The words are in templates/actmax.html.j2 (the body) and templates/actmax_conclusion.j2; this module
computes what they say: sample sizes, intervals, tables, and the verdicts (colour-dominated layers, flagged
units) as values the templates branch on, so a null result reads as one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from markupsafe import Markup

from unitscope.report.render import ci, fixed, pct, render, render_text
from unitscope.report.sections import html_table, unit_hrefs, write_section
from unitscope.studies.actmax.grids import save_grid
from unitscope.studies.actmax.runs import load_run

if TYPE_CHECKING:
    from unitscope.studies.actmax.plan import ReportSettings

__all__ = ["ReportInputs", "RegistryOutputs", "mnist_unit_images", "registry_outputs", "write_actmax_section"]

STUDY = "actmax"
STUDY_DIR = Path(__file__).resolve().parent
TITLE = "Activation maximisation"
MODEL_NAME = "colored_mnist_cnn"


@dataclass
class ReportInputs:
    """What the report stage reads: the evaluation table, the model's description, the chosen units, the data
    probe, the analysis folder's tables and images, and each layer's runs ({layer: (arrays, table)})."""

    evaluation: list[dict]
    info: dict
    selection: dict
    probe: pd.DataFrame
    units: pd.DataFrame
    metrics: pd.DataFrame
    reference: pd.DataFrame
    color_table: pd.DataFrame
    interpolation: pd.DataFrame
    interp_images: dict[str, np.ndarray]
    runs: dict[str, tuple[dict, pd.DataFrame]]

    @classmethod
    def load(cls, *, evaluation_path, model_info_path, units_path, probe_path, analysis_dir, run_paths) -> ReportInputs:
        analysis_dir = Path(analysis_dir)
        with np.load(analysis_dir / "interpolation.npz") as arrays:
            interp_images = {key: arrays[key] for key in arrays.files}
        return cls(
            evaluation=json.loads(Path(evaluation_path).read_text()),
            info=json.loads(Path(model_info_path).read_text()),
            selection=json.loads(Path(units_path).read_text()),
            probe=pd.read_parquet(probe_path),
            units=pd.read_parquet(analysis_dir / "polysemanticity.parquet"),
            metrics=pd.read_parquet(analysis_dir / "image_metrics.parquet"),
            reference=pd.read_parquet(analysis_dir / "reference_metrics.parquet"),
            color_table=pd.read_parquet(analysis_dir / "color_vs_shape.parquet"),
            interpolation=pd.read_parquet(analysis_dir / "interpolation.parquet"),
            interp_images=interp_images,
            runs={layer: load_run(npz, table) for layer, (npz, table) in run_paths.items()},
        )

    @property
    def all_runs(self) -> pd.DataFrame:
        return pd.concat([table for _, table in self.runs.values()], ignore_index=True)


@dataclass
class RegistryOutputs:
    """The registry models' part of the section: its tables (None without registry targets), summary rows and
    unit entries."""

    tables: dict[str, Markup] | None
    summary: list[dict]
    units: list[dict]


# ----------------------------------------------------------------------------------------------
# the section


def write_actmax_section(
    section_path, inputs: ReportInputs, registry: RegistryOutputs, mnist_images: Mapping, *, settings: ReportSettings
) -> dict:
    """results/actmax/section.json: conclusion, body, summary and units; returns the summary. The templates state
    `settings` (rho and the unit, optimisation and analysis settings)."""
    verdicts = _verdicts(inputs)
    rho = settings.rho
    context = {"rho": rho, "settings": settings, "info": inputs.info, **verdicts}
    conclusion = render_text("actmax_conclusion.j2", STUDY_DIR, **context)
    body = render("actmax.html.j2", STUDY_DIR, **context, **_body_context(inputs, registry))
    summary = _summary(inputs, verdicts, rho=rho, registry_summary=registry.summary)
    units = _mnist_unit_facts(inputs, mnist_images) + registry.units
    write_section(
        section_path, study=STUDY, title=TITLE, conclusion=conclusion, body_html=body, summary=summary, units=units
    )
    return summary


def _verdicts(inputs: ReportInputs) -> dict:
    """The numbers the conclusion states: accuracy per evaluation set and the biased - conflicting gap, per layer
    the median colour index with its CI (and the layers whose whole CI lies above 0.5), and the polysemanticity
    counts with the flagged units' names."""
    by_set = {row["set"]: row for row in inputs.evaluation}
    units = inputs.units
    flagged = units[units["flagged"]]
    color_rows = [
        {
            "layer": row.layer,
            "median": row.median_color_index,
            "low": row.median_color_index_ci95[0],
            "high": row.median_color_index_ci95[1],
            "dominated": row.color_dominated,
            "responsive": row.n_responsive,
        }
        for row in inputs.color_table.itertuples()
    ]
    return {
        "biased": by_set["biased"],
        "unbiased": by_set["unbiased"],
        "conflicting": by_set["conflicting"],
        "gap": by_set["biased"]["accuracy"] - by_set["conflicting"]["accuracy"],
        "color_rows": color_rows,
        "color_layers": [row["layer"] for row in color_rows if np.isfinite(row["low"]) and row["low"] > 0.5],
        "n_units": len(units),
        "n_judged": int(units["converged"].sum()),
        "n_flagged": len(flagged),
        "flagged_names": [
            f"{u.layer} ch {u.channel} {u.objective}"
            + (f" ({u.y},{u.x})" if u.y >= 0 else "")
            + f" (score {u.score:.2f})"
            for u in flagged.sort_values("score", ascending=False).itertuples()
        ],
        "n_seeds": int(units["n_seeds"].max()) if len(units) else 0,
    }


def _body_context(inputs: ReportInputs, registry: RegistryOutputs) -> dict:
    """The body's tables and the numbers only the body states."""
    all_runs = inputs.all_runs
    reference, metrics = inputs.reference, inputs.metrics
    return {
        "evaluation_table": _evaluation_table(inputs.evaluation),
        "n_images": next(iter(inputs.selection["layers"].values()))["n_images"],
        "n_runs": len(all_runs),
        "objectives": list(dict.fromkeys(all_runs["objective"])),
        "init_table": _init_table(all_runs),
        "reference": {
            "n": len(reference),
            **{column: reference[column].median() for column in _REFERENCE_COLUMNS},
            "start_color_concentration": metrics["start_color_concentration"].median(),
            "start_edge_energy": metrics["start_edge_energy"].median(),
        },
        "color_table": _color_table(inputs.color_table),
        "unit_table": _unit_table(inputs.units, inputs.selection),
        "interpolations": _interpolations(inputs.interpolation),
        "registry": registry.tables,
    }


_REFERENCE_COLUMNS = ("color_concentration", "edge_energy", "color_edge_energy", "dark_fraction")


def _evaluation_table(evaluation: list[dict]) -> Markup:
    frame = pd.DataFrame(
        [
            {
                "set": row["set"],
                "N": row["n"],
                "accuracy": pct(row["accuracy"]),
                "95% CI": ci(row["accuracy_ci95"], percent=True),
                "errors": row["errors"],
                "errors = colour's class": f"{row['errors_as_color_class']} ({pct(row['error_color_fraction'])})",
                "95% CI ": ci(row["error_color_ci95"], percent=True),
                "prediction follows a non-class colour": f"{row['follows_color']}/{row['mismatched_color']}",
            }
            for row in evaluation
        ]
    )
    return html_table(frame)


def _init_table(all_runs: pd.DataFrame) -> Markup:
    """Final activation per layer and init, for the first objective."""
    table = (
        all_runs[all_runs["objective"] == all_runs["objective"].iloc[0]]
        .groupby(["layer", "init"], sort=False)["final_activation"]
        .agg(["count", "median", "min", "max"])
        .reset_index()
    )
    for column in ("median", "min", "max"):
        table[column] = table[column].astype(float).round(3)
    return html_table(table)


def _color_table(color_table: pd.DataFrame) -> Markup:
    frame = pd.DataFrame(
        [
            {
                "layer": row.layer,
                "channels": row.n_channels,
                "median colour index (95% CI)": f"{fixed(row.median_color_index, 3)} "
                f"{ci(list(row.median_color_index_ci95), digits=3)}",
                "colour-dominated channels": f"{row.color_dominated}/{row.n_responsive} "
                f"({pct(row.color_dominated_fraction)}; CI {ci(list(row.color_dominated_ci95), percent=True)})",
                "images": row.n_images,
                "median colour concentration": fixed(row.median_color_concentration, 3),
                "median edge energy (brightness)": fixed(row.median_edge_energy, 3),
                "median edge energy (RGB)": fixed(row.median_color_edge_energy, 3),
                "median dark fraction": fixed(row.median_dark_fraction, 2),
            }
            for row in color_table.itertuples()
        ]
    )
    return html_table(frame)


def _unit_table(units: pd.DataFrame, selection: Mapping) -> Markup:
    """The 12 most polysemantic unit-runs (flagged first, then score, then the most varied seeds); channels
    linked to the pages of the chosen units."""
    page_units = [
        {"model": MODEL_NAME, "layer": layer, "channel": unit["channel"]}
        for layer, chosen in selection["layers"].items()
        for unit in chosen["units"]
    ]
    top = units.assign(_varied=-units["pixel_similarity"])
    top = top.sort_values(["flagged", "score", "_varied"], ascending=False).head(12)
    frame = pd.DataFrame(
        {
            "layer": top["layer"],
            "channel": top["channel"],
            "objective": top["objective"],
            "neuron": [f"({y},{x})" if y >= 0 else "" for y, x in zip(top["y"], top["x"], strict=True)],
            "init": top["init"],
            "score": top["score"].round(2),
            "pixel sim.": top["pixel_similarity"].round(2),
            "colour sim.": top["color_similarity"].round(2),
            "activation sim.": top["activation_similarity"].round(2),
            "converged": top["converged"],
            "flagged": top["flagged"],
        }
    )
    links = unit_hrefs([MODEL_NAME] * len(frame), frame["layer"], frame["channel"], page_units)
    return html_table(frame, links={"channel": links})


def _unit_label(key: str) -> str:
    """'conv2|5|topk|-1|-1|-1|gray_noise|0.01|0.05' -> 'conv2 ch 5, topk, init gray_noise'."""
    layer, channel, objective, y, x, target, init = key.split("|")[:7]
    where = f" at ({y},{x})" if int(y) >= 0 else ""
    target = f" (class {target})" if int(target) >= 0 else ""
    return f"{layer} ch {channel}, {objective}{where}{target}, init {init}"


def _interpolations(interpolation: pd.DataFrame) -> list[dict]:
    """Per interpolated unit: the middle mix's start against its end points' mean, where the re-optimised
    interior mixes end up."""
    items = []
    for key, rows in interpolation.groupby("key", sort=False):
        rows = rows.sort_values("alpha")
        ends = rows[rows["alpha"].isin([rows["alpha"].min(), rows["alpha"].max()])]["activation_before"].mean()
        middle = rows.iloc[len(rows) // 2]
        interior = rows[(rows["alpha"] > rows["alpha"].min()) & (rows["alpha"] < rows["alpha"].max())]
        items.append(
            {
                "label": _unit_label(key),
                "flagged": bool(rows["flagged"].iloc[0]),
                "score": rows["score"].iloc[0],
                "alpha": middle["alpha"],
                "before": middle["activation_before"],
                "ends": ends,
                "ratio": middle["activation_before"] / ends if ends else float("nan"),
                "low": interior["activation_after"].min(),
                "high": interior["activation_after"].max(),
                "landings": list(zip(interior["alpha"], interior["lands_at"], strict=True)),
            }
        )
    return items


# ----------------------------------------------------------------------------------------------
# summary and units


def _summary(inputs: ReportInputs, verdicts: Mapping, *, rho: float, registry_summary: list[dict]) -> dict:
    evaluation, units = inputs.evaluation, inputs.units
    evaluation_keys = (
        "n",
        "accuracy",
        "accuracy_ci95",
        "errors",
        "errors_as_color_class",
        "error_color_fraction",
        "follows_color_fraction",
    )
    return {
        "rho": rho,
        "train_images": inputs.info["train_images"],
        "evaluation": {row["set"]: {key: row[key] for key in evaluation_keys} for row in evaluation},
        "biased_minus_conflicting_accuracy": verdicts["gap"],
        "color_vs_shape": _color_summary(inputs.color_table),
        "color_layers": verdicts["color_layers"],
        "runs": len(inputs.all_runs),
        "polysemanticity": {
            "units": int(len(units)),
            "judged": int(units["converged"].sum()),
            "flagged": int(units["flagged"].sum()),
            "flagged_units": verdicts["flagged_names"],
        },
        "registry": registry_summary,
    }


def _color_summary(color_table: pd.DataFrame) -> dict:
    return {
        row.layer: {
            "n_channels": row.n_channels,
            "median_color_index": row.median_color_index,
            "median_color_index_ci95": list(row.median_color_index_ci95),
            "color_dominated_fraction": row.color_dominated_fraction,
            "median_color_concentration": row.median_color_concentration,
            "median_edge_energy": row.median_edge_energy,
            "median_color_edge_energy": row.median_color_edge_energy,
        }
        for row in color_table.itertuples()
    }


def _mnist_unit_facts(inputs: ReportInputs, mnist_images: Mapping) -> list[dict]:
    """One entry per chosen Colored-MNIST channel for its unit page: colour index, variance rank,
    polysemanticity flags, the channel objective's score and activation, and its images."""
    probe, units = inputs.probe, inputs.units
    index_by_channel = probe[probe["kind"] == "channel"].set_index(["layer", "channel"])["color_index"]
    entries = []
    for layer, chosen in inputs.selection["layers"].items():
        for unit in chosen["units"]:
            rows = units[(units["layer"] == layer) & (units["channel"] == unit["channel"])]
            channel_rows = rows[rows["objective"] == "channel"]
            facts = {
                "color_index": round(float(index_by_channel.get((layer, unit["channel"]), np.nan)), 3),
                "variance_rank": unit["variance_rank"],
                "polysemantic_flags": f"{int(rows['flagged'].sum())}/{len(rows)} unit-runs",
            }
            if len(channel_rows):
                facts["channel_objective_score"] = round(float(channel_rows["score"].iloc[0]), 2)
                facts["actmax_activation"] = round(float(channel_rows["max_final_activation"].iloc[0]), 3)
            entries.append(
                {
                    "model": MODEL_NAME,
                    "layer": layer,
                    "channel": unit["channel"],
                    "facts": facts,
                    "images": mnist_images.get((layer, int(unit["channel"])), []),
                }
            )
    return entries


def mnist_unit_images(runs: Mapping[str, tuple[dict, pd.DataFrame]], selection: Mapping, out_dir) -> dict:
    """Each chosen Colored-MNIST channel's final channel-objective images (rows: inits, columns: seeds) as
    out_dir/<unit page name>.png; returns {(layer, channel): [image entry for its unit page]}."""
    images = {}
    for layer, chosen in selection["layers"].items():
        run, table = runs[layer]
        for unit in chosen["units"]:
            channel = int(unit["channel"])
            rows = table[(table["channel"] == channel) & (table["objective"] == "channel")]
            if rows.empty:
                continue
            first = rows.iloc[0]  # one regulariser setting (the first) per page image
            rows = rows[(rows["l2"] == first["l2"]) & (rows["tv"] == first["tv"])]
            inits = list(dict.fromkeys(rows["init"]))
            seeds = sorted(set(rows["seed"]))
            position = {(i, s): index for index, i, s in zip(rows.index, rows["init"], rows["seed"], strict=True)}
            tiles = np.stack([[run["images"][position[(i, s)]] for s in seeds] for i in inits])
            name = f"{MODEL_NAME}__{layer}__{channel}.png"
            save_grid(tiles, Path(out_dir) / name, scale=3, col_labels=[f"seed {s}" for s in seeds])
            images[(layer, channel)] = [
                {
                    "src": f"figures/actmax/units/{name}",
                    "caption": f"Images that maximise the mean of {layer} channel {channel} (28×28 px, L2 "
                    f"{first['l2']:g}, TV {first['tv']:g}; rows: start {', '.join(inits)}; columns: seeds); each "
                    "stretched to its own range for display.",
                }
            ]
    return images


# ----------------------------------------------------------------------------------------------
# registry models


def registry_outputs(registry_paths: Sequence[tuple[str, str, str, str]], figures_dir) -> RegistryOutputs:
    """Registry-model runs: the section's tables, summary rows, and one unit (facts + image) per channel.

    Each channel's final images (rows: objectives, columns: seeds) go to figures_dir/<unit page name>.png
    (figures_dir: an existing folder, which the caller writes whole).
    """
    if not registry_paths:
        return RegistryOutputs(None, [], [])
    summary, units, rows = [], [], []
    for model, layer, npz_path, table_path in registry_paths:
        run, table = load_run(npz_path, table_path)
        summary.append(
            {
                "model": model,
                "layer": layer,
                "runs": len(table),
                "parameterization": str(table["parameterization"].iloc[0]),
                "median_final_activation": float(table["final_activation"].median()),
                "median_start_activation": float(table["start_objective"].median()),
            }
        )
        for channel, group in table.groupby("channel", sort=False):
            unit, row = _registry_channel(model, layer, run, table, int(channel), group, figures_dir)
            units.append(unit)
            rows.append(row)
    frame = pd.DataFrame(rows)
    links = {"channel": unit_hrefs(frame["model"], frame["layer"], frame["channel"])}
    tables = {"runs": html_table(pd.DataFrame(summary)), "channels": html_table(frame, links=links)}
    return RegistryOutputs(tables, summary, units)


def _registry_channel(model: str, layer: str, run: dict, table, channel: int, group, figures_dir):
    """One registry channel: its image grid (rows: objectives, columns: seeds), its unit entry and its row of the
    channel table."""
    unit_layer = str(table["unit_layer"].iloc[0]) if "unit_layer" in table else layer
    parameterization = str(table["parameterization"].iloc[0])
    where = layer if unit_layer == layer else f"{layer} (inside {unit_layer})"
    objectives = list(dict.fromkeys(group["objective"]))
    seeds = sorted(set(group["seed"]))
    position = {(o, s): i for i, (o, s) in enumerate(zip(group["objective"], group["seed"], strict=True))}
    tiles = np.stack([[run["images"][group.index[position[(o, s)]]] for s in seeds] for o in objectives])
    name = f"{model}__{unit_layer}__{channel}.png"
    save_grid(tiles, Path(figures_dir) / name, scale=1, col_labels=[f"seed {s}" for s in seeds])
    final = round(float(group["final_activation"].astype(float).median()), 3)
    start = round(float(group["start_objective"].astype(float).median()), 3)
    unit = {
        "model": model,
        "layer": unit_layer,
        "channel": channel,
        "facts": {
            "actmax final activation (median over runs)": final,
            "actmax start activation (median)": start,
            "actmax runs": f"{len(group)} ({', '.join(objectives)}; {len(seeds)} seeds)",
        },
        "images": [
            {
                "src": f"figures/actmax/units/{name}",
                "caption": f"Activation maximisation of {model} {where} channel {channel}: final images (rows: "
                f"objective {', '.join(objectives)}; columns: seeds), {parameterization} parameterisation; each "
                "image stretched to its own range for display.",
            }
        ],
    }
    row = {
        "model": model,
        "layer": unit_layer,
        "optimised at": layer,
        "channel": channel,
        "runs": len(group),
        "start activation (median)": start,
        "final activation (median)": final,
    }
    return unit, row
