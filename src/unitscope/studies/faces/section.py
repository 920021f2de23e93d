"""The faces study's report section: numbers and tables computed from its tables, worded by the templates
`templates/faces_conclusion.txt.j2` (the conclusion), `templates/faces.html.j2` (the body) and
`templates/faces_question.txt.j2` / `templates/faces_answer.txt.j2` (the landing page's card, `finding_of`).

Verdicts are stated against explicit rules, with the numbers in the sentence. Each has an absolute
part (is the change larger than the sampling uncertainty of the intact accuracy, its 95% Wilson
interval?) and a control part (one-sided empirical p < alpha against every control present):
- necessary: lesioning the selected channels lowers the fixed-readout accuracy below the intact
  interval, and more than random and activation-matched lesions of the same size do;
- sufficient: keeping only the selected channels, a retrained probe stays within the intact
  interval, and above random and matched keep-only sets;
- specific: the lesion disturbs the model's outputs more for faces than for non-faces (ratio of the
  mean KL divergences), more so than random and matched lesions do (control part only).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from unitscope.report.render import ci, fixed, num, p_value, pct, render, render_text
from unitscope.report.sections import claim, finding, finding_number, html_table, unit_hrefs
from unitscope.stats import wilson_interval
from unitscope.studies.faces.figures import METRIC_WORDS, interventions_metrics
from unitscope.studies.faces.pca import components_for
from unitscope.studies.faces.selection import rule_agreement, selected_channels

if TYPE_CHECKING:  # annotations only (the settings arrive as params)
    from unitscope.studies.faces.plan import SectionSettings

TITLE = "Face-selective units"
STUDY_DIR = Path(__file__).parent
RULE_NAMES = {"top_percentile": "top-percentile", "contrast": "contrast"}
CONTROLS = ("random", "matched")
READOUTS = ("fixed_accuracy", "retrained_accuracy", "kl_faces", "kl_nonfaces", "kl_face_ratio")
NAMED = ("intact", "lesion", "keep_only")
CONTROL_NAMES = {"random": "random", "matched": "activation-matched"}
INTERVENTIONS_FIGURE = "figures/faces/interventions.png"
VERDICTS_FIGURE = "figures/faces/verdicts.png"  # the card's: the three verdicts' panels in one row
KL_DIGITS, RATIO_DIGITS, MEAN_DIGITS = 4, 2, 3  # decimals of KL divergences (nats), KL ratios, mean activations


# ---------------------------------------------------------------------------------------------- verdicts


def _control(controls: pd.DataFrame, mode: str, control: str, metric: str) -> dict | None:
    rows = controls[(controls["mode"] == mode) & (controls["control"] == control) & (controls["metric"] == metric)]
    return rows.iloc[0].to_dict() if len(rows) else None


def _beats(rows: list[dict | None], alpha: float) -> bool:
    present = [row for row in rows if row is not None]
    return bool(present) and all(row["p_value"] < alpha for row in present)


def _wilson_of(accuracy: float, n: int) -> tuple[float, float]:
    return wilson_interval(round(accuracy * n), n)


def accuracy_n(conditions: pd.DataFrame, metric: str) -> int:
    """The images an accuracy readout is scored on: the held-out split for a fixed readout, every image
    (cross-validated) for a retrained probe."""
    first = conditions.iloc[0]
    n_images = int(first["n_faces"] + first["n_nonfaces"])
    return int(first["fixed_n_test"]) if "fixed" in metric and "fixed_n_test" in conditions else n_images


def intact_interval(conditions: pd.DataFrame, metric: str) -> tuple[float, float]:
    """The intact network's 95% Wilson interval for an accuracy readout (the verdicts' absolute yardstick);
    (nan, nan) where the intact network has no value (a readout not computed)."""
    intact = float(conditions.loc[conditions["condition"] == "intact", metric].iloc[0])
    return _wilson_of(intact, accuracy_n(conditions, metric)) if np.isfinite(intact) else (np.nan, np.nan)


def verdicts(conditions: pd.DataFrame, controls: pd.DataFrame, alpha: float) -> dict:
    """The three verdicts and the numbers they rest on."""
    by_name = conditions.set_index("condition")
    fixed_low, fixed_high = intact_interval(conditions, "fixed_accuracy")
    retrained_low, retrained_high = intact_interval(conditions, "retrained_accuracy")
    necessary_rows = [_control(controls, "lesion", c, "fixed_accuracy") for c in CONTROLS]
    sufficient_rows = [_control(controls, "keep_only", c, "retrained_accuracy") for c in CONTROLS]
    specific_rows = [_control(controls, "lesion", c, "kl_face_ratio") for c in CONTROLS]
    necessary_absolute = bool(by_name.loc["lesion", "fixed_accuracy"] < fixed_low)
    necessary_vs_controls = _beats(necessary_rows, alpha)
    sufficient_absolute = bool(by_name.loc["keep_only", "retrained_accuracy"] >= retrained_low)
    sufficient_vs_controls = _beats(sufficient_rows, alpha)
    return {
        "alpha": alpha,
        "necessary": necessary_absolute and necessary_vs_controls,
        "necessary_absolute": necessary_absolute,
        "necessary_vs_controls": necessary_vs_controls,
        "sufficient": sufficient_absolute and sufficient_vs_controls,
        "sufficient_absolute": sufficient_absolute,
        "sufficient_vs_controls": sufficient_vs_controls,
        "specific": _beats(specific_rows, alpha),
        "intact_fixed_ci": [fixed_low, fixed_high],
        "intact_retrained_ci": [retrained_low, retrained_high],
        "rows": {"necessary": necessary_rows, "sufficient": sufficient_rows, "specific": specific_rows},
    }


# ---------------------------------------------------------------------------------------------- conclusion


def _named_readouts(conditions: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{intact, lesion, keep_only: {readout: value}}."""
    by_name = conditions.set_index("condition")
    return {name: {metric: float(by_name.loc[name, metric]) for metric in READOUTS} for name in NAMED}


def conclusion_context(
    selection: pd.DataFrame, conditions: pd.DataFrame, controls: pd.DataFrame, settings: SectionSettings
) -> dict:
    """What the conclusion states: counts, the named conditions' readouts, the verdicts and their controls."""
    first = conditions.iloc[0]
    alpha = settings.alpha
    judged = verdicts(conditions, controls, alpha)
    kl = {metric: [(c, _control(controls, "lesion", c, metric)) for c in CONTROLS] for metric in READOUTS[2:4]}
    kl["kl_face_ratio"] = list(zip(CONTROLS, judged["rows"]["specific"], strict=True))
    return {
        **_counts(first, selection),
        "percentile": settings.percentile,
        "fdr": settings.fdr,
        "alpha": alpha,
        "agreement": rule_agreement(selection),
        "size": int(conditions.set_index("condition").loc["lesion", "set_size"]),
        "rule_name": RULE_NAMES[settings.rule],
        "ablation": first["ablation"],
        "fixed_n_test": int(first["fixed_n_test"]),
        "readouts": _named_readouts(conditions),
        "judged": judged,
        "kl": kl,
        "limited": limited_controls(controls, alpha),
    }


def limited_controls(controls: pd.DataFrame, alpha: float) -> list[dict]:
    """The controls with too few distinct draws for any p-value below `alpha` (the smallest is 1 / (n + 1)):
    against them no verdict can be positive."""
    floors = sorted({(row["control"], int(row["n_distinct"])) for row in controls.to_dict("records")})
    return [{"control": c, "n": n, "floor": 1 / (n + 1)} for c, n in floors if 1 / (n + 1) >= alpha]


def conclusion_text(
    selection: pd.DataFrame, conditions: pd.DataFrame, controls: pd.DataFrame, settings: SectionSettings
) -> str:
    """The conclusion as plain text (the landing page escapes it)."""
    return render_text(
        "faces_conclusion.txt.j2", STUDY_DIR, **conclusion_context(selection, conditions, controls, settings)
    )


# ---------------------------------------------------------------------------------------------- card


def interventions_figure_ref(controls: pd.DataFrame) -> dict:
    """The interventions figure as {src, caption, alt}: the card's figure and the body's."""
    rows = [METRIC_WORDS[m] for m in interventions_metrics(controls)]
    caption = (
        "Look at the red line (the selected channels) against the grey (random) and blue (activation-matched) "
        "histograms of control sets of the same size and, for accuracies, the shaded 95% interval of the intact "
        "network (dashed): the verdicts read row 1 left (fixed readout after the lesion: necessary?), row 2 right "
        "(retrained probe on only the selected channels: sufficient?) and row 3 left (faces / non-faces KL ratio "
        "after the lesion: face-specific?); each panel's title gives the one-sided empirical p against each "
        "control, and the last row the faces' explained variance per principal component."
    )
    alt = (
        f"A grid of histograms in two columns, lesion and keep-only, one row per readout ({', '.join(rows)}); "
        "each panel shows the random and activation-matched control draws as histograms, the selected set as a "
        "red vertical line and the intact network as a dashed line, with a shaded band for the intact accuracy's "
        "95% interval; a last row of two line plots shows the faces' cumulative and per-component explained "
        "variance for intact, lesion and keep-only."
    )
    return {"src": INTERVENTIONS_FIGURE, "caption": caption, "alt": alt}


def verdicts_figure_ref() -> dict:
    """The card's figure as {src, caption, alt}: the three panels of the interventions figure the verdicts read."""
    caption = (
        "Look at where the red line (the selected channels) falls against the grey (random) and blue "
        "(activation-matched) histograms of same-size control sets: left, accuracy after the lesion (below the "
        "shaded intact 95% interval and the controls: necessary); middle, a probe on only the selected channels "
        "(within the interval and above the controls: sufficient); right, the faces / non-faces KL ratio after the "
        "lesion (above the controls: face-specific)."
    )
    alt = (
        "Three histograms in a row (fixed-readout accuracy after the lesion, retrained-probe accuracy keeping only "
        "the selected channels, faces / non-faces KL ratio after the lesion), each with the random and "
        "activation-matched control draws, the selected set as a red line and the intact network as a dashed line."
    )
    return {"src": VERDICTS_FIGURE, "caption": caption, "alt": alt}


def _binding(rows: list[dict | None]) -> dict | None:
    """Of the controls present, the one the selected set beats least (largest p): the one that decides."""
    present = [row for row in rows if row is not None]
    return max(present, key=lambda row: row["p_value"]) if present else None


def _p_against(rows: list[dict | None], what: str) -> str:
    """'p = 0.111 against 8 random lesions, 0.143 against 6 activation-matched'."""
    present = [row for row in rows if row is not None]
    if not present:
        return f"no control {what} could be drawn"
    parts = [f"{p_value(r['p_value'])} against {r['n_distinct']} {CONTROL_NAMES[r['control']]}" for r in present]
    return f"p = {', '.join(parts)} {what}"


def finding_of(conditions: pd.DataFrame, controls: pd.DataFrame, settings: SectionSettings) -> dict:
    """The study's card on the landing page: the question, a one-sentence answer worded by the three
    `verdicts` (templates/faces_answer.txt.j2; a null result reads as one), and the numbers each verdict
    rests on: the faces / non-faces KL ratio after the lesion against its controls (specific), the
    fixed-readout accuracy after the lesion and the retrained-probe accuracy with only the selected channels
    kept, each against the intact network's 95% interval (necessary, sufficient)."""
    first = conditions.iloc[0]
    by_name = conditions.set_index("condition")
    judged = verdicts(conditions, controls, settings.alpha)
    size = int(by_name.loc["lesion", "set_size"])
    context = {
        "model": first["model"],
        "layer": first["layer"],
        "n_faces": int(first["n_faces"]),
        "n_nonfaces": int(first["n_nonfaces"]),
        "size": size,
        "rule": settings.rule,
        "percentile": settings.percentile,
        "fdr": settings.fdr,
        "alpha": settings.alpha,
        "judged": judged,
        "limited": bool(limited_controls(controls, settings.alpha)),
    }
    faces_nonfaces = f"{context['n_faces']} faces, {context['n_nonfaces']} non-faces"
    ratio_rows = judged["rows"]["specific"]
    binding = _binding(ratio_rows)
    numbers = [
        finding_number(
            "output change on faces / on non-faces (KL ratio), lesioned; interval: 95% of "
            + (f"{CONTROL_NAMES[binding['control']]} lesions" if binding else "control lesions (none drawn)"),
            fixed(by_name.loc["lesion", "kl_face_ratio"], RATIO_DIGITS),
            interval=ci([binding["null_low"], binding["null_high"]] if binding else None, digits=RATIO_DIGITS),
            n=f"N = {faces_nonfaces}; {_p_against(ratio_rows, 'lesions')}",
        ),
        finding_number(
            "fixed-readout accuracy, lesioned; interval: intact network, 95%",
            pct(by_name.loc["lesion", "fixed_accuracy"]),
            interval=ci(judged["intact_fixed_ci"], percent=True),
            n=f"N = {accuracy_n(conditions, 'fixed_accuracy')} held-out images",
        ),
        finding_number(
            "retrained-probe accuracy, only these kept; interval: intact network, 95%",
            pct(by_name.loc["keep_only", "retrained_accuracy"]),
            interval=ci(judged["intact_retrained_ci"], percent=True),
            n=f"N = {accuracy_n(conditions, 'retrained_accuracy')} images ({faces_nonfaces}), cross-validated",
        ),
    ]
    positive = size > 0 and any(judged[name] for name in ("necessary", "sufficient", "specific"))
    return finding(
        question=render_text("faces_question.txt.j2", STUDY_DIR, **context),
        answer=render_text("faces_answer.txt.j2", STUDY_DIR, **context),
        numbers=numbers,
        figure=verdicts_figure_ref(),
        null=not positive,
    )


# ---------------------------------------------------------------------------------------------- body


def _counts(first: pd.Series, selection: pd.DataFrame) -> dict:
    """Model, layer and sample sizes: the opening of the body's context and of the summary."""
    return {
        "model": first["model"],
        "layer": first["layer"],
        "n_channels": len(selection),
        "n_faces": int(first["n_faces"]),
        "n_nonfaces": int(first["n_nonfaces"]),
    }


def _components(pca: pd.DataFrame, level: float) -> int:
    return components_for(pca["cumulative"].to_numpy(), level)


def _unit_links(first: pd.Series, channels) -> list[str | None]:
    return unit_hrefs([first["model"]] * len(channels), [first["layer"]] * len(channels), channels)


def _selection_context(selection: pd.DataFrame, first: pd.Series, settings: SectionSettings) -> dict:
    nonface_sets = [c.removeprefix("q_") for c in selection.columns if c.startswith("q_")]
    agreement = rule_agreement(selection)
    chosen = selected_channels(selection, settings.rule)
    overview = pd.DataFrame(
        [
            [f"top {settings.percentile:g}% by mean face activation", agreement["top_percentile"]],
            [
                f"contrast: Welch t faces > each of {', '.join(nonface_sets)}, BH q < {settings.fdr:g}",
                agreement["contrast"],
            ],
            ["in both", agreement["overlap"]],
            ["Jaccard index", num(agreement["jaccard"], 3)],
        ],
        columns=["selection rule", "channels"],
    )
    head = selection.set_index("channel").loc[chosen[:10]].reset_index()
    columns = {
        "channel": head["channel"],
        "face rank": head["face_rank"],
        "face mean": head["face_mean"].map(lambda v: fixed(v, 3)),
        **{f"{s} mean": head[f"{s}_mean"].map(lambda v: fixed(v, 3)) for s in nonface_sets},
        "d' (vs non-faces)": head["d_nonface"].map(fixed),
        **{f"q ({s})": head[f"q_{s}"].map(p_value) for s in nonface_sets},
        "selectivity index": head["selectivity_index"].map(fixed),
    }
    return {
        "nonface_sets": nonface_sets,
        "overview": html_table(overview),
        "head": html_table(pd.DataFrame(columns), links={"channel": _unit_links(first, head["channel"])}),
        "n_head": len(head),
        "n_chosen": len(chosen),
        "rule_name": RULE_NAMES[settings.rule],
    }


def _pca_context(pca: pd.DataFrame, levels: list[float]) -> dict:
    return {
        "pc1": pca["explained_variance_ratio"].iloc[0],
        "n_images": int(pca["n_images"].iloc[0]),
        "n_channels": int(pca["n_channels"].iloc[0]),
        "levels": [{"level": level, "n": _components(pca, level)} for level in levels],
    }


def _condition_rows(conditions: pd.DataFrame, levels: list[float]) -> tuple[pd.DataFrame, list[str]]:
    """The intact and selected-set conditions' readouts (formatted), and the headline metrics shown."""
    named = conditions[conditions["family"].isin(["intact", "selected"])]
    metric_columns = {
        "fixed_accuracy": "fixed readout",
        "retrained_accuracy": "retrained probe (CV)",
        "downstream_fixed_accuracy": "downstream fixed",
        "downstream_retrained_accuracy": "downstream retrained",
        "kl_faces": "KL faces (nats)",
        "kl_nonfaces": "KL non-faces (nats)",
        "pca_pc1": "PC1 share",
        f"pca_n{round(100 * levels[-1])}": f"PCs for {pct(levels[-1])}",
    }
    metric_columns = {k: v for k, v in metric_columns.items() if k in named and named[k].notna().any()}
    shown = pd.DataFrame({"condition": named["condition"], "channels ablated": named["n_ablated"]})
    for key, label in metric_columns.items():
        shown[label] = named[key].map(_formatter(key))
    headline = [m for m in metric_columns if "accuracy" in m or m.startswith("kl_")] + ["kl_face_ratio"]
    return shown, headline


def _formatter(metric: str):
    """How a readout is written in every table and sentence of the section: accuracies and shares as
    percentages, KL divergences (nats) with `KL_DIGITS` decimals, KL ratios with `RATIO_DIGITS`, counts as is."""
    if "accuracy" in metric or metric == "pca_pc1":
        return pct
    if metric == "kl_face_ratio":
        return lambda v: fixed(v, RATIO_DIGITS)
    if metric.startswith("kl_"):
        return lambda v: fixed(v, KL_DIGITS)
    return num


def _interval(metric: str, bounds) -> str:
    """`bounds` as "[low, high]" in `_formatter(metric)`'s precision."""
    if "accuracy" in metric or metric == "pca_pc1":
        return ci(bounds, percent=True)
    if metric.startswith("kl_"):
        return ci(bounds, digits=RATIO_DIGITS if metric == "kl_face_ratio" else KL_DIGITS)
    return f"[{num(bounds[0])}, {num(bounds[1])}]"


def _control_rows(controls: pd.DataFrame, headline: list[str]) -> pd.DataFrame:
    """The selected set against each control's null, per mode and headline metric (formatted)."""
    rows = controls[controls["metric"].isin(headline)]
    return pd.DataFrame(
        {
            "mode": rows["mode"],
            "control": rows["control"],
            "metric": rows["metric"],
            "selected": [_formatter(r.metric)(r.selected) for r in rows.itertuples()],
            "control mean [95% of draws]": [
                f"{_formatter(r.metric)(r.null_mean)} {_interval(r.metric, [r.null_low, r.null_high])}"
                for r in rows.itertuples()
            ],
            "distinct draws": rows["n_distinct"],
            "stronger if": rows["direction"],
            "p": rows["p_value"].map(p_value),
        }
    )


def _matching(conditions: pd.DataFrame) -> dict | None:
    """Mean activation of the matched draws' channels (mean, range) against the selected set's and the random
    draws' (mean); None when no matched control could be drawn."""
    activation = conditions.set_index("family")["set_mean_activation"]
    if "matched" not in activation.index:
        return None
    matched = activation.loc[["matched"]]
    return {
        "mean": matched.mean(),
        "min": matched.min(),
        "max": matched.max(),
        "selected": float(conditions.set_index("condition").loc["lesion", "set_mean_activation"]),
        "random": activation.loc[activation.index == "random"].mean(),
    }


def _interventions_context(conditions: pd.DataFrame, controls: pd.DataFrame, levels: list[float]) -> dict:
    first = conditions.iloc[0]
    shown, headline = _condition_rows(conditions, levels)
    return {
        "n_images": int(first["n_faces"] + first["n_nonfaces"]),
        "fixed_n_test": int(first["fixed_n_test"]),
        "downstream": first["downstream"],
        "matching": _matching(conditions),
        "conditions": html_table(shown),
        "controls": html_table(_control_rows(controls, headline)),
        "single": _single_context(conditions),
        "figure": interventions_figure_ref(controls),
        "verdicts_figure": verdicts_figure_ref(),
    }


def _single_context(conditions: pd.DataFrame, shown: int = 10) -> dict | None:
    """Each selected channel lesioned alone: KL statistics and the `shown` largest effects, or None."""
    single = single_lesions(conditions)
    if single.empty:
        return None
    head = single.sort_values("kl_faces", ascending=False).head(shown)
    table = pd.DataFrame(
        {
            "channel": head.index,
            "KL faces (nats)": head["kl_faces"].map(_formatter("kl_faces")),
            "KL non-faces (nats)": head["kl_nonfaces"].map(_formatter("kl_nonfaces")),
            "faces / non-faces": head["kl_face_ratio"].map(_formatter("kl_face_ratio")),
            "fixed-readout accuracy": head["fixed_accuracy"].map(pct),
        }
    )
    kl_faces = single["kl_faces"].astype(float)
    return {
        "n": len(single),
        "median": kl_faces.median(),
        "min": kl_faces.min(),
        "max": kl_faces.max(),
        "sum": kl_faces.sum(),
        "set_kl": float(conditions.loc[conditions["condition"] == "lesion", "kl_faces"].iloc[0]),
        "n_head": len(head),
        "table": html_table(table, links={"channel": _unit_links(conditions.iloc[0], head.index)}),
    }


def _probes_context(probes: pd.DataFrame) -> dict:
    rows = pd.DataFrame(
        {
            "layer": probes["layer"],
            "channels": probes["n_channels"],
            "CV accuracy [95% Wilson]": [
                f"{pct(r.accuracy)} {ci([r.ci_low, r.ci_high], percent=True)}" for r in probes.itertuples()
            ],
            "fold SD": probes["fold_accuracy_sd"].map(lambda v: f"{100 * v:.1f} pts"),
        }
    )
    return {"n_images": int(probes["n_images"].iloc[0]), "chance": probes["chance"].iloc[0], "table": html_table(rows)}


def _categories_context(categories: pd.DataFrame, selectivity: pd.DataFrame) -> dict:
    chosen = categories[categories["channel_set"] == "selected"]
    rows = pd.DataFrame(
        {
            "dataset": chosen["dataset"],
            "images": chosen["n_images"],
            "mean of selected channels [95% bootstrap]": [
                f"{fixed(r.mean, MEAN_DIGITS)} {ci([r.ci_low, r.ci_high], digits=MEAN_DIGITS)}"
                for r in chosen.itertuples()
            ],
        }
    )
    return {
        "median_selected": selectivity.loc[selectivity["selected"], "selectivity_index"].median(),
        "median_all": selectivity["selectivity_index"].median(),
        "table": html_table(rows),
    }


def _heatmaps_context(heatmaps: pd.DataFrame) -> dict:
    return {
        "by_set": list(heatmaps.groupby("dataset", sort=False)["mean"].mean().items()),
        "n_images": heatmaps["image_id"].nunique(),
        "n_channels": heatmaps["channel"].nunique(),
        "map_height": int(heatmaps["map_height"].iloc[0]),
        "map_width": int(heatmaps["map_width"].iloc[0]),
    }


def body_html(
    *,
    selection: pd.DataFrame,
    pca: pd.DataFrame,
    conditions: pd.DataFrame,
    controls: pd.DataFrame,
    probes: pd.DataFrame,
    categories: pd.DataFrame,
    selectivity: pd.DataFrame,
    heatmaps: pd.DataFrame,
    settings: SectionSettings,
) -> str:
    """The section's body: `templates/faces.html.j2` on the numbers and tables of every stage."""
    first = conditions.iloc[0]
    return render(
        "faces.html.j2",
        STUDY_DIR,
        model=first["model"],
        layer=first["layer"],
        ablation=first["ablation"],
        n_channels=len(selection),
        n_faces=int(first["n_faces"]),
        n_nonfaces=int(first["n_nonfaces"]),
        percentile=settings.percentile,
        fdr=settings.fdr,
        face_dataset=settings.face_dataset,
        conclusion=conclusion_text(selection, conditions, controls, settings),
        selection=_selection_context(selection, first, settings),
        pca=_pca_context(pca, settings.pca_levels),
        interventions=_interventions_context(conditions, controls, settings.pca_levels),
        probes=_probes_context(probes),
        categories=_categories_context(categories, selectivity),
        heatmaps=_heatmaps_context(heatmaps),
    )


# ---------------------------------------------------------------------------------------------- summary, units


def _clean(value):
    return None if value is None or (isinstance(value, float) and not np.isfinite(value)) else value


def summary(
    selection: pd.DataFrame,
    pca: pd.DataFrame,
    conditions: pd.DataFrame,
    controls: pd.DataFrame,
    probes: pd.DataFrame,
    categories: pd.DataFrame,
    settings: SectionSettings,
) -> dict:
    """The study's headline numbers for results/summary.json."""
    first = conditions.iloc[0]
    agreement = rule_agreement(selection)
    judged = verdicts(conditions, controls, settings.alpha)
    named = _named_readouts(conditions)
    return {
        **_counts(first, selection),
        "selection": {
            "used": settings.rule,
            **agreement,
            "jaccard": _clean(agreement["jaccard"]),
            "channels": selected_channels(selection, settings.rule).tolist(),
        },
        "pca": {f"components_{round(100 * level)}": _components(pca, level) for level in settings.pca_levels}
        | {"pc1": float(pca["explained_variance_ratio"].iloc[0])},
        "interventions": {
            "ablation": first["ablation"],
            "set_size": int(conditions.set_index("condition").loc["lesion", "set_size"]),
            **{name: {metric: _clean(value) for metric, value in named[name].items()} for name in NAMED},
            "controls": [
                {k: _clean(v) for k, v in row.items()}
                for row in controls[controls["metric"].isin(READOUTS)].to_dict("records")
            ],
        },
        "single_lesions": _single_summary(conditions),
        "verdict": {k: v for k, v in judged.items() if k != "rows"},
        "probes": {
            row.layer: {"accuracy": row.accuracy, "ci": [row.ci_low, row.ci_high]} for row in probes.itertuples()
        },
        "categories": {
            row.dataset: {"mean": row.mean, "ci": [row.ci_low, row.ci_high], "n_images": int(row.n_images)}
            for row in categories[categories["channel_set"] == "selected"].itertuples()
        },
    }


def single_lesions(conditions: pd.DataFrame) -> pd.DataFrame:
    """One row per channel lesioned alone (family "single"), indexed by channel; empty if there are none."""
    single = conditions[conditions["family"] == "single"]
    return single.assign(channel=[int(c[0]) for c in single["channels"]]).set_index("channel")


def _single_facts(single: pd.DataFrame, intact: pd.Series, channel: int) -> dict:
    if channel not in single.index:
        return {}
    row = single.loc[channel]
    rank = int((single["kl_faces"] > row["kl_faces"]).sum()) + 1
    return {
        "lesioned alone: output KL on faces (nats)": round(float(row["kl_faces"]), 4),
        "lesioned alone: output KL on non-faces (nats)": round(float(row["kl_nonfaces"]), 4),
        "lesioned alone: rank by KL on faces": f"{rank} of {len(single)}",
        "lesioned alone: fixed-readout accuracy": (
            f"{pct(row['fixed_accuracy'])} (intact {pct(intact['fixed_accuracy'])})"
        ),
    }


def _single_summary(conditions: pd.DataFrame) -> dict:
    single = single_lesions(conditions)
    if single.empty:
        return {"n": 0}
    return {
        "n": len(single),
        "kl_faces_median": float(single["kl_faces"].median()),
        "kl_faces_max": float(single["kl_faces"].max()),
        "kl_faces_max_channel": int(single["kl_faces"].idxmax()),
        "kl_faces_sum": float(single["kl_faces"].sum()),
    }


def units(selection: pd.DataFrame, conditions: pd.DataFrame, rule: str) -> list[dict]:
    """The selected channels, each with the facts its unit page shows."""
    first = conditions.iloc[0]
    intact = conditions.set_index("condition").loc["intact"]
    single = single_lesions(conditions)
    rows = selection.set_index("channel")
    return [
        {
            "model": first["model"],
            "layer": first["layer"],
            "channel": int(channel),
            "facts": {
                "face rank": int(rows.loc[channel, "face_rank"]),
                "face mean": round(float(rows.loc[channel, "face_mean"]), 4),
                "non-face mean": round(float(rows.loc[channel, "nonface_mean"]), 4),
                "d' faces vs non-faces": round(float(rows.loc[channel, "d_nonface"]), 3),
                "face-selectivity index": round(float(rows.loc[channel, "selectivity_index"]), 3),
                "top-percentile rule": bool(rows.loc[channel, "top_percentile"]),
                "contrast rule": bool(rows.loc[channel, "contrast"]),
                **_single_facts(single, intact, int(channel)),
            },
        }
        for channel in selected_channels(selection, rule)
    ]


# ---------------------------------------------------------------------------------------------- claims

# Each verdict as a claim: (verdict, readout, mode, how the readout is shown, its claim's words)
CLAIMS = (
    (
        "specific",
        "kl_face_ratio",
        "lesion",
        "KL ratio faces / non-faces",
        "change the output more on faces than on non-faces",
    ),
    ("necessary", "fixed_accuracy", "lesion", "face / non-face accuracy", "are necessary to tell faces from non-faces"),
    (
        "sufficient",
        "retrained_accuracy",
        "keep_only",
        "face / non-face accuracy",
        "suffice alone to tell faces from non-faces",
    ),
)


def claims(conditions: pd.DataFrame, controls: pd.DataFrame, settings: SectionSettings) -> list[dict]:
    """The three verdicts as rows of the landing page's claims table: each readout of the selected set against
    its controls (accuracies also against the intact network's 95% interval)."""
    first, judged = conditions.iloc[0], verdicts(conditions, controls, settings.alpha)
    by_name = conditions.set_index("condition")
    size = int(by_name.loc["lesion", "set_size"])
    out = []
    for verdict, metric, mode, shown_as, words in CLAIMS:
        rows = [row for row in judged["rows"][verdict] if row is not None]
        value = by_name.loc[mode, metric]
        if metric == "kl_face_ratio":
            effect, n = (
                f"{shown_as} {fixed(value, RATIO_DIGITS)}",
                f"{first['n_faces']} faces, {first['n_nonfaces']} non-faces",
            )
        else:
            effect = f"{shown_as} {pct(value)} (intact {ci(intact_interval(conditions, metric), percent=True)})"
            n = f"{accuracy_n(conditions, metric)} held-out images"
        digits = RATIO_DIGITS if metric == "kl_face_ratio" else 3
        out.append(
            claim(
                study="faces",
                claim=f"The {size} selected channels of {first['layer']} {words}",
                intervention=f"{mode.replace('_', ' ')} ({first['ablation']}) of the set, {first['model']}",
                effect=effect,
                controls=", ".join(f"{r['control']} {fixed(r['null_mean'], digits)}" for r in rows) or "none drawn",
                p=", ".join(f"{r['control']} {p_value(r['p_value'])}" for r in rows) or "n/a",
                n=n,
                shown=judged[verdict],
            )
        )
    return out
