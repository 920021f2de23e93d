"""The actmax study's report section: results/actmax/section.json, its unit images and the numbers its prose
states. The words are in templates/actmax.html.j2 (the body), templates/actmax_conclusion.j2 and
templates/actmax_answer.txt.j2 (the landing page card's one-sentence answer); this module computes what they say:
sample sizes, intervals, tables, and the verdicts (reliance on colour, colour-dominated layers, flagged units) as
values the templates branch on, so a null result reads as one.
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
from unitscope.report.sections import finding, finding_number, html_table, unit_hrefs, write_section
from unitscope.studies.actmax.grids import save_grid
from unitscope.studies.actmax.runs import load_run

if TYPE_CHECKING:
    from unitscope.studies.actmax.plan import ReportSettings

__all__ = [
    "ReportInputs",
    "RegistryOutputs",
    "finding_of",
    "mnist_unit_images",
    "registry_outputs",
    "write_actmax_section",
]

STUDY = "actmax"
STUDY_DIR = Path(__file__).resolve().parent
TITLE = "Activation maximisation"
MODEL_NAME = "colored_mnist_cnn"
QUESTION = (
    "Does the CNN trained on Biased Colored-MNIST take the colour shortcut, which layers' channels code colour rather "
    "than digit shape, and are its units polysemantic?"
)
CARD_FIGURE = "figures/actmax/color_vs_shape.png"  # written by figures.color_shape_figure (FIGURES)


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
    body = render("actmax.html.j2", STUDY_DIR, conclusion=conclusion, **context, **_body_context(inputs, registry))
    summary = _summary(inputs, verdicts, rho=rho, registry_summary=registry.summary)
    units = _mnist_unit_facts(inputs, mnist_images) + registry.units
    write_section(
        section_path,
        study=STUDY,
        title=TITLE,
        conclusion=conclusion,
        body_html=body,
        summary=summary,
        finding=finding_of(verdicts),
        units=units,
    )
    return summary


def finding_of(verdicts: Mapping) -> dict:
    """The landing page card from `_verdicts`: the accuracies on biased and conflicting digits (95% Wilson
    intervals; the model relies on colour when the biased interval lies wholly above the conflicting one), the
    deepest probed layer's median colour index (95% bootstrap interval; a layer codes colour when its whole interval
    lies above 0.5) and the polysemanticity count. Null when neither the accuracies nor any layer show colour."""
    biased, conflicting, rows = verdicts["biased"], verdicts["conflicting"], verdicts["color_rows"]
    numbers = [
        finding_number(
            "accuracy on biased test digits (coloured as in training), 95% Wilson interval",
            pct(biased["accuracy"]),
            interval=ci(biased["accuracy_ci95"], percent=True),
            n=f"N = {biased['n']} biased test digits",
        ),
        finding_number(
            "accuracy on conflicting test digits (never the class colour), 95% Wilson interval",
            pct(conflicting["accuracy"]),
            interval=ci(conflicting["accuracy_ci95"], percent=True),
            n=f"N = {conflicting['n']} conflicting test digits",
        ),
    ]
    if rows:
        deepest = rows[-1]
        numbers.append(
            finding_number(
                f"median colour index of {deepest['layer']} channels (1 = colour only, 0 = digit only), "
                "95% bootstrap interval",
                fixed(deepest["median"]),
                interval=ci([deepest["low"], deepest["high"]]),
                n=f"N = {deepest['responsive']} {deepest['layer']} channels",
            )
        )
    figure = {
        "src": CARD_FIGURE,
        "caption": "Look at the left panel: each dot is a channel, and dots above the dotted 0.5 line change their "
        "activation more when only a digit's colour changes than when only the digit changes (bar: the layer's "
        "median); the right panel places the synthesised channel images against real coloured digits (grey).",
        "alt": "Left: strip plot of the colour index (0 to 1) of every channel, one column per layer, with each "
        "layer's median as a black bar and a dotted line at 0.5; right: scatter of colour concentration against "
        "edge energy for the synthesised channel images, coloured by layer, over real digits in grey.",
    }
    return finding(
        question=QUESTION,
        answer=render_text("actmax_answer.txt.j2", STUDY_DIR, **verdicts),
        numbers=numbers,
        figure=figure,
        null=not verdicts["relies_on_color"] and not verdicts["color_layers"],
    )


def _verdicts(inputs: ReportInputs) -> dict:
    """The numbers the conclusion states: accuracy per evaluation set and the biased - conflicting gap, per layer
    the median colour index with its CI (and the layers whose whole CI lies above 0.5), and the polysemanticity
    counts with the flagged units' names. The model relies on colour when the biased set's 95% Wilson interval of
    accuracy lies wholly above the conflicting set's; `intervals_overlap` says whether the two overlap."""
    by_set = {row["set"]: row for row in inputs.evaluation}
    biased_ci, conflicting_ci = by_set["biased"]["accuracy_ci95"], by_set["conflicting"]["accuracy_ci95"]
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
        "relies_on_color": bool(biased_ci[0] > conflicting_ci[1]),
        "intervals_overlap": bool(biased_ci[0] <= conflicting_ci[1] and conflicting_ci[0] <= biased_ci[1]),
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
                "errors naming the colour's class": row["errors_as_color_class"],
                "share of errors": pct(row["error_color_fraction"]),
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
        table[column] = table[column].astype(float)
    return html_table(table, float_format="{:.3f}")


def _color_table(color_table: pd.DataFrame) -> Markup:
    """Per layer: the median colour index with its 95% bootstrap interval, the colour-dominated channels with a
    95% Wilson interval of their share, and the image measures of the synthesised channel images."""
    frame = pd.DataFrame(
        [
            {
                "layer": row.layer,
                "channels": row.n_channels,
                "median colour index": float(row.median_color_index),
                "95% CI": ci(list(row.median_color_index_ci95), digits=3),
                "colour-dominated channels": f"{row.color_dominated}/{row.n_responsive}",
                "share": pct(row.color_dominated_fraction),
                "95% CI ": ci(list(row.color_dominated_ci95), percent=True),
                "images": row.n_images,
                "median colour concentration": float(row.median_color_concentration),
                "median edge energy (brightness)": float(row.median_edge_energy),
                "median edge energy (RGB)": float(row.median_color_edge_energy),
                "median dark fraction": float(row.median_dark_fraction),
            }
            for row in color_table.itertuples()
        ]
    )
    return html_table(frame, float_format="{:.3f}")


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
            "score": top["score"].astype(float),
            "pixel sim.": top["pixel_similarity"].astype(float),
            "colour sim.": top["color_similarity"].astype(float),
            "activation sim.": top["activation_similarity"].astype(float),
            "converged": top["converged"],
            "flagged": top["flagged"],
        }
    )
    links = unit_hrefs([MODEL_NAME] * len(frame), frame["layer"], frame["channel"], page_units)
    return html_table(frame, links={"channel": links}, float_format="{:.2f}")


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
    tables = {
        "runs": html_table(pd.DataFrame(summary), float_format="{:.3f}"),
        "channels": html_table(frame, links=links, float_format="{:.3f}"),
    }
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
