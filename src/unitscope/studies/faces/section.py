"""The faces study's report section: sentences built from its tables, never canned.

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

import html
import os

import numpy as np
import pandas as pd

from unitscope.report.sections import html_table, unit_hrefs, write_section
from unitscope.stats import wilson_interval
from unitscope.studies.faces.selection import jaccard, selected_channels

TITLE = "Face-selective units"
RULE_NAMES = {"top_percentile": "top-percentile", "contrast": "contrast"}


def _pct(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def _num(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def _p(x: float) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.3f}" if x >= 0.001 else (f"{x:.1e}" if x > 0 else "<1e-300")


def _figure(src: str, caption: str) -> str:
    return (
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption[:80])}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _control(controls: pd.DataFrame, mode: str, control: str, metric: str) -> dict | None:
    rows = controls[(controls["mode"] == mode) & (controls["control"] == control) & (controls["metric"] == metric)]
    return rows.iloc[0].to_dict() if len(rows) else None


def _null_phrase(row: dict | None, fmt, what: str) -> str:
    if row is None:
        return f"no {what} control could be drawn"
    return (
        f"{row['n_distinct']} {what} sets gave {fmt(row['null_mean'])} "
        f"[95% {fmt(row['null_low'])}, {fmt(row['null_high'])}] (p = {_p(row['p_value'])})"
    )


def _compact(row: dict | None, fmt, what: str) -> str:
    """'random: 0.02 [95% 0.01, 0.04], p = 0.010' (the control's mean and interval, the selected set's p)."""
    if row is None:
        return f"{what}: none drawn"
    interval = f"[95% {fmt(row['null_low'])}, {fmt(row['null_high'])}]"
    return f"{what}: {fmt(row['null_mean'])} {interval}, p = {_p(row['p_value'])}"


def _beats(rows: list[dict | None], alpha: float) -> bool:
    present = [row for row in rows if row is not None]
    return bool(present) and all(row["p_value"] < alpha for row in present)


def _wilson_of(accuracy: float, n: int) -> tuple[float, float]:
    return wilson_interval(round(accuracy * n), n)


def verdicts(conditions: pd.DataFrame, controls: pd.DataFrame, alpha: float) -> dict:
    """The three verdicts and the numbers they rest on."""
    by_name = conditions.set_index("condition")
    n_images = int(conditions["n_faces"].iloc[0] + conditions["n_nonfaces"].iloc[0])
    n_test = int(conditions["fixed_n_test"].iloc[0]) if "fixed_n_test" in conditions else n_images
    fixed_low, fixed_high = _wilson_of(float(by_name.loc["intact", "fixed_accuracy"]), n_test)
    retrained_low, retrained_high = _wilson_of(float(by_name.loc["intact", "retrained_accuracy"]), n_images)
    necessary_rows = [_control(controls, "lesion", c, "fixed_accuracy") for c in ("random", "matched")]
    sufficient_rows = [_control(controls, "keep_only", c, "retrained_accuracy") for c in ("random", "matched")]
    specific_rows = [_control(controls, "lesion", c, "kl_face_ratio") for c in ("random", "matched")]
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


def _interval(bounds) -> str:
    return f"[{_pct(bounds[0])}, {_pct(bounds[1])}]"


def _necessity_phrase(judged: dict) -> str:
    interval, alpha = _interval(judged["intact_fixed_ci"]), judged["alpha"]
    if judged["necessary"]:
        return f"necessary: below the intact 95% interval {interval} and below every control (p < {alpha:g})"
    if judged["necessary_vs_controls"]:
        return (
            f"a larger drop than the controls' (p < {alpha:g}) but within the intact 95% interval {interval}: "
            "not necessary for telling faces from non-faces"
        )
    if judged["necessary_absolute"]:
        return f"below the intact 95% interval {interval}, but not more than the controls at p < {alpha:g}"
    return f"not necessary (within the intact 95% interval {interval}, not below the controls at p < {alpha:g})"


def _sufficiency_phrase(judged: dict) -> str:
    interval, alpha = _interval(judged["intact_retrained_ci"]), judged["alpha"]
    if judged["sufficient"]:
        return f"sufficient: within the intact 95% interval {interval} and above every control (p < {alpha:g})"
    if judged["sufficient_absolute"]:
        return (
            f"sufficient in absolute terms (within the intact 95% interval {interval}) but not more than the "
            f"controls at p < {alpha:g}"
        )
    if judged["sufficient_vs_controls"]:
        return f"above the controls (p < {alpha:g}) but below the intact 95% interval {interval}: not sufficient"
    return f"not sufficient (below the intact 95% interval {interval}, not above the controls at p < {alpha:g})"


def conclusion_text(selection: pd.DataFrame, conditions: pd.DataFrame, controls: pd.DataFrame, settings: dict) -> str:
    by_name = conditions.set_index("condition")
    first = conditions.iloc[0]
    rule, alpha = settings["rule"], settings["alpha"]
    top, contrast = selected_channels(selection, "top_percentile"), selected_channels(selection, "contrast")
    size = int(by_name.loc["lesion", "set_size"])
    judged = verdicts(conditions, controls, alpha)
    rows = judged["rows"]
    intact_fixed, lesion_fixed = by_name.loc["intact", "fixed_accuracy"], by_name.loc["lesion", "fixed_accuracy"]
    kl_rows = {
        (control, metric): _control(controls, "lesion", control, metric)
        for control in ("random", "matched")
        for metric in ("kl_faces", "kl_nonfaces")
    }
    sentences = [
        f"At {first['model']} {first['layer']} ({len(selection)} channels; {int(first['n_faces'])} faces, "
        f"{int(first['n_nonfaces'])} non-faces), the top-{settings['percentile']:g}% rule picked {len(top)} channels "
        f"and the contrast rule (faces above every non-face set, BH q < {settings['fdr']:g}) {len(contrast)}; "
        f"they share {len(set(top) & set(contrast))} (Jaccard {_num(jaccard(top, contrast), 2)}).",
        f"{'Lesioning' if size else 'With no channel selected, lesioning'} the {size} {RULE_NAMES[rule]} channels "
        f"({first['ablation']} ablation) "
        + (
            f"left the fixed-readout accuracy at {_pct(intact_fixed)}"
            if _pct(intact_fixed) == _pct(lesion_fixed)
            else f"moved the fixed-readout accuracy from {_pct(intact_fixed)} to {_pct(lesion_fixed)}"
        )
        + f" (N = {int(first['fixed_n_test'])} held-out images); {_null_phrase(rows['necessary'][0], _pct, 'random')}, "
        f"{_null_phrase(rows['necessary'][1], _pct, 'activation-matched')}: {_necessity_phrase(judged)}.",
        f"A probe retrained after the lesion reached {_pct(by_name.loc['lesion', 'retrained_accuracy'])} "
        f"(intact {_pct(by_name.loc['intact', 'retrained_accuracy'])}).",
        f"Keeping only them, a retrained probe reached {_pct(by_name.loc['keep_only', 'retrained_accuracy'])}; "
        f"{_null_phrase(rows['sufficient'][0], _pct, 'random keep-only')}, "
        f"{_null_phrase(rows['sufficient'][1], _pct, 'matched keep-only')}: {_sufficiency_phrase(judged)}.",
        f"The lesion changed the model's output distribution by a mean KL of "
        f"{_num(by_name.loc['lesion', 'kl_faces'])} nats on faces ("
        + "; ".join(_compact(kl_rows[(c, "kl_faces")], _num, f"{c} lesions") for c in ("random", "matched"))
        + f") and {_num(by_name.loc['lesion', 'kl_nonfaces'])} on non-faces ("
        + "; ".join(_compact(kl_rows[(c, "kl_nonfaces")], _num, f"{c} lesions") for c in ("random", "matched"))
        + f"), a faces / non-faces ratio of {_num(by_name.loc['lesion', 'kl_face_ratio'])} ("
        + "; ".join(
            _compact(row, _num, f"{c} lesions") for row, c in zip(rows["specific"], ("random", "matched"), strict=True)
        )
        + ("): face-specific." if judged["specific"] else f"): not shown to be face-specific at p < {alpha:g}."),
    ]
    floors = sorted({(row["control"], int(row["n_distinct"])) for row in controls.to_dict("records")})
    limited = [(control, n) for control, n in floors if 1 / (n + 1) >= alpha]
    if limited:
        sentences.append(
            "With "
            + " and ".join(f"{n} distinct {control} draws" for control, n in limited)
            + f", no p-value can fall below {', '.join(_p(1 / (n + 1)) for _, n in limited)}, so a verdict against "
            f"{'that control' if len(limited) == 1 else 'those controls'} cannot be positive at p < {alpha:g}."
        )
    return " ".join(sentences)


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
    settings: dict,
) -> str:
    first = conditions.iloc[0]
    face_dataset = settings["face_dataset"]
    nonface_sets = [c.removeprefix("q_") for c in selection.columns if c.startswith("q_")]
    top, contrast = selected_channels(selection, "top_percentile"), selected_channels(selection, "contrast")
    chosen = selected_channels(selection, settings["rule"])
    parts = [
        f"<p>Which channels of {html.escape(first['model'])} <code>{html.escape(first['layer'])}</code> respond most "
        f"to faces, and are they necessary, sufficient and specific for telling faces ({int(first['n_faces'])} images "
        f"of <i>{html.escape(face_dataset)}</i>) from non-faces ({int(first['n_nonfaces'])} images of "
        f"{', '.join(f'<i>{html.escape(s)}</i>' for s in nonface_sets)})? "
        f"{html.escape(conclusion_text(selection, conditions, controls, settings))}</p>"
    ]
    # selection
    overview = pd.DataFrame(
        [
            [f"top {settings['percentile']:g}% by mean face activation", len(top)],
            [f"contrast: Welch t faces > each of {', '.join(nonface_sets)}, BH q < {settings['fdr']:g}", len(contrast)],
            ["in both", len(set(top) & set(contrast))],
            ["Jaccard index", _num(jaccard(top, contrast), 3)],
        ],
        columns=["selection rule", "channels"],
    )
    head = selection.set_index("channel").loc[chosen[:10]].reset_index()
    columns = {
        "channel": head["channel"],
        "face rank": head["face_rank"],
        "face mean": head["face_mean"].map(lambda v: f"{v:.3f}"),
        **{f"{s} mean": head[f"{s}_mean"].map(lambda v: f"{v:.3f}") for s in nonface_sets},
        "d' (vs non-faces)": head["d_nonface"].map(lambda v: f"{v:.2f}"),
        **{f"q ({s})": head[f"q_{s}"].map(_p) for s in nonface_sets},
        "selectivity index": head["selectivity_index"].map(lambda v: f"{v:.2f}"),
    }
    parts += [
        "<h3>Selection</h3>",
        html_table(overview),
        f"<p>First {len(head)} of the {len(chosen)} channels the interventions use "
        f"({RULE_NAMES[settings['rule']]} rule):</p>",
        html_table(
            pd.DataFrame(columns),
            links={"channel": unit_hrefs([first["model"]] * len(head), [first["layer"]] * len(head), head["channel"])},
        ),
        _figure(
            "figures/faces/selection.png",
            f"Left: the {len(selection)} channels by mean face activation (N = {int(first['n_faces'])} faces), "
            "top-percentile ones in red, with their mean over the non-face sets. Right: smallest d' against the "
            "largest BH q of the one-sided Welch tests, coloured by which rule selects the channel.",
        ),
    ]
    # PCA
    levels = settings["pca_levels"]
    needed = [int(pca.loc[pca["cumulative"] >= level - 1e-12, "component"].iloc[0]) for level in levels]
    parts += [
        "<h3>PCA of the faces' activations</h3>",
        f"<p>PC1 explains {_pct(pca['explained_variance_ratio'].iloc[0])} of the variance of the "
        f"{int(pca['n_images'].iloc[0])} faces' {int(pca['n_channels'].iloc[0])}-channel means; "
        + "; ".join(f"{_pct(level)} needs {n} components" for level, n in zip(levels, needed, strict=True))
        + ".</p>",
        _figure(
            "figures/faces/pca.png",
            f"Cumulative explained variance of PCA on the faces' [N, C] means (N = {int(pca['n_images'].iloc[0])}).",
        ),
    ]
    # interventions
    named = conditions[conditions["family"].isin(["intact", "selected"])]
    metric_columns = {
        "fixed_accuracy": "fixed readout",
        "retrained_accuracy": "retrained probe (CV)",
        "downstream_fixed_accuracy": "downstream fixed",
        "downstream_retrained_accuracy": "downstream retrained",
        "kl_faces": "KL faces",
        "kl_nonfaces": "KL non-faces",
        "pca_pc1": "PC1 share",
        f"pca_n{round(100 * levels[-1])}": f"PCs for {_pct(levels[-1])}",
    }
    metric_columns = {k: v for k, v in metric_columns.items() if k in named and named[k].notna().any()}
    shown = pd.DataFrame({"condition": named["condition"], "channels ablated": named["n_ablated"]})
    for key, label in metric_columns.items():
        fmt = _pct if "accuracy" in key or key == "pca_pc1" else _num
        shown[label] = named[key].map(fmt)
    headline = [m for m in metric_columns if "accuracy" in m or m.startswith("kl_")] + ["kl_face_ratio"]
    control_rows = controls[controls["metric"].isin(headline)].copy()
    formats = [_pct if "accuracy" in r.metric else _num for r in control_rows.itertuples()]
    control_rows = pd.DataFrame(
        {
            "mode": control_rows["mode"],
            "control": control_rows["control"],
            "metric": control_rows["metric"],
            "selected": [fmt(r.selected) for fmt, r in zip(formats, control_rows.itertuples(), strict=True)],
            "control mean [95%]": [
                f"{fmt(r.null_mean)} [{fmt(r.null_low)}, {fmt(r.null_high)}]"
                for fmt, r in zip(formats, control_rows.itertuples(), strict=True)
            ],
            "distinct draws": control_rows["n_distinct"],
            "stronger if": control_rows["direction"],
            "p": control_rows["p_value"].map(_p),
        }
    )
    matched = conditions[conditions["family"] == "matched"]
    selected_activation = float(conditions.loc[conditions["condition"] == "lesion", "set_mean_activation"].iloc[0])
    matching = (
        f"Matched draws' mean activation {_num(matched['set_mean_activation'].mean())} "
        f"(range {_num(matched['set_mean_activation'].min())}–{_num(matched['set_mean_activation'].max())}) versus "
        f"{_num(selected_activation)} for the selected set and "
        f"{_num(conditions.loc[conditions['family'] == 'random', 'set_mean_activation'].mean())} for random draws."
        if len(matched)
        else "No activation-matched control could be drawn (more selected than unselected channels)."
    )
    downstream = first["downstream"] or (
        "none: the layer feeds the global pool directly, so the pooled features are the layer's own means"
    )
    parts += [
        "<h3>Interventions</h3>",
        f"<p>Ablation: {html.escape(first['ablation'])}. Readouts: a logistic probe retrained on each condition "
        f"(stratified CV on all {int(first['n_faces'] + first['n_nonfaces'])} images), a probe fit on intact "
        f"activations of a training split and scored on the condition's held-out split (N = "
        f"{int(first['fixed_n_test'])}), the output KL divergence, and PCA of the faces' activations. Downstream "
        f"layer: {html.escape(downstream)}. {matching}</p>",
        html_table(shown),
        html_table(control_rows),
        _figure(
            "figures/faces/interventions.png",
            "Per readout (rows) and mode (columns): the distribution over random and activation-matched control "
            "draws, the selected set (red) and the intact network (dashed); p is the one-sided empirical p-value "
            "of the selected set against each control (over distinct draws). Last row: the faces' cumulative and "
            "per-component explained variance under intact, lesion and keep-only "
            "(results/faces/condition_pca.parquet).",
        ),
    ]
    parts += _single_lesion_html(conditions)
    # probes
    probe_rows = pd.DataFrame(
        {
            "layer": probes["layer"],
            "channels": probes["n_channels"],
            "CV accuracy [95%]": [
                f"{_pct(r.accuracy)} [{_pct(r.ci_low)}, {_pct(r.ci_high)}]" for r in probes.itertuples()
            ],
            "fold SD": probes["fold_accuracy_sd"].map(lambda v: f"{100 * v:.1f} pts"),
        }
    )
    parts += [
        "<h3>Probes per layer</h3>",
        f"<p>Face-vs-non-face logistic probes on each layer's channel means ({int(probes['n_images'].iloc[0])} images, "
        f"majority class {_pct(probes['chance'].iloc[0])}); coefficients are in "
        "results/faces/probe_coefficients.parquet.</p>",
        html_table(probe_rows),
        _figure("figures/faces/probes.png", "Cross-validated accuracy per layer with 95% Wilson intervals and folds."),
    ]
    # categories
    chosen_rows = categories[categories["channel_set"] == "selected"]
    category_rows = pd.DataFrame(
        {
            "dataset": chosen_rows["dataset"],
            "images": chosen_rows["n_images"],
            "mean of selected channels [95% bootstrap]": [
                f"{_num(r.mean)} [{_num(r.ci_low)}, {_num(r.ci_high)}]" for r in chosen_rows.itertuples()
            ],
        }
    )
    picked = selectivity[selectivity["selected"]]
    parts += [
        "<h3>Category comparison</h3>",
        f"<p>Face-selectivity index of the selected channels: median {_num(picked['selectivity_index'].median(), 2)} "
        f"(all channels: {_num(selectivity['selectivity_index'].median(), 2)}).</p>",
        html_table(category_rows),
        _figure(
            "figures/faces/categories.png",
            "Mean activation of the selected channels (and of all channels) per image set with 95% bootstrap "
            "intervals over images; right: per-channel face-selectivity index.",
        ),
    ]
    # heatmaps
    by_set = heatmaps.groupby("dataset", sort=False)["mean"].mean()
    parts += [
        "<h3>Where the top channels fire</h3>",
        "<p>Mean activation of the shown channels over the example images: "
        + ", ".join(f"{html.escape(str(k))} {_num(v)}" for k, v in by_set.items())
        + f" ({heatmaps['image_id'].nunique()} images, seeded draw).</p>",
        _figure(
            "figures/faces/heatmaps.png",
            f"Maps of the first {heatmaps['channel'].nunique()} selected channels "
            f"({int(heatmaps['map_height'].iloc[0])}x{int(heatmaps['map_width'].iloc[0])}, bilinearly upsampled) "
            "over example images of each set.",
        ),
    ]
    return "\n".join(parts)


def _single_lesion_html(conditions: pd.DataFrame, shown: int = 10) -> list[str]:
    single = single_lesions(conditions)
    if single.empty:
        return []
    first = conditions.iloc[0]
    set_kl = float(conditions.loc[conditions["condition"] == "lesion", "kl_faces"].iloc[0])
    ranked = single.sort_values("kl_faces", ascending=False)
    head = ranked.head(shown)
    table = pd.DataFrame(
        {
            "channel": head.index,
            "KL faces (nats)": head["kl_faces"].map(lambda v: f"{v:.4f}"),
            "KL non-faces (nats)": head["kl_nonfaces"].map(lambda v: f"{v:.4f}"),
            "faces / non-faces": head["kl_face_ratio"].map(lambda v: _num(v, 2)),
            "fixed-readout accuracy": head["fixed_accuracy"].map(_pct),
        }
    )
    links = unit_hrefs([first["model"]] * len(head), [first["layer"]] * len(head), head.index)
    return [
        f"<p>Each of the {len(single)} selected channels lesioned alone ({html.escape(first['ablation'])} "
        f"ablation): output KL on faces median {_num(float(single['kl_faces'].median()), 4)} nats (range "
        f"{_num(float(single['kl_faces'].min()), 4)}–{_num(float(single['kl_faces'].max()), 4)}); the sum over "
        f"channels, {_num(float(single['kl_faces'].sum()), 4)}, against {_num(set_kl, 4)} for the whole set "
        f"lesioned together. The {len(head)} largest (each channel's page lists its own):</p>",
        html_table(table, links={"channel": links}),
    ]


def summary(
    selection: pd.DataFrame,
    pca: pd.DataFrame,
    conditions: pd.DataFrame,
    controls: pd.DataFrame,
    probes: pd.DataFrame,
    categories: pd.DataFrame,
    settings: dict,
) -> dict:
    first = conditions.iloc[0]
    by_name = conditions.set_index("condition")
    top, contrast = selected_channels(selection, "top_percentile"), selected_channels(selection, "contrast")
    judged = verdicts(conditions, controls, settings["alpha"])
    readouts = [c for c in ("fixed_accuracy", "retrained_accuracy", "kl_faces", "kl_nonfaces", "kl_face_ratio")]

    def clean(value):
        return None if value is None or (isinstance(value, float) and not np.isfinite(value)) else value

    return {
        "model": first["model"],
        "layer": first["layer"],
        "n_channels": len(selection),
        "n_faces": int(first["n_faces"]),
        "n_nonfaces": int(first["n_nonfaces"]),
        "selection": {
            "used": settings["rule"],
            "top_percentile": len(top),
            "contrast": len(contrast),
            "overlap": len(set(top) & set(contrast)),
            "jaccard": clean(jaccard(top, contrast)),
            "channels": selected_channels(selection, settings["rule"]).tolist(),
        },
        "pca": {
            f"components_{round(100 * level)}": int(pca.loc[pca["cumulative"] >= level - 1e-12, "component"].iloc[0])
            for level in settings["pca_levels"]
        }
        | {"pc1": float(pca["explained_variance_ratio"].iloc[0])},
        "interventions": {
            "ablation": first["ablation"],
            "set_size": int(by_name.loc["lesion", "set_size"]),
            **{
                name: {metric: clean(float(by_name.loc[name, metric])) for metric in readouts}
                for name in ("intact", "lesion", "keep_only")
            },
            "controls": [
                {k: clean(v) for k, v in row.items()}
                for row in controls[controls["metric"].isin(readouts)].to_dict("records")
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
            f"{_pct(row['fixed_accuracy'])} (intact {_pct(intact['fixed_accuracy'])})"
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


def run_section(
    *,
    selection: str,
    pca: str,
    conditions: str,
    controls: str,
    probes: str,
    categories: str,
    selectivity: str,
    heatmaps: str,
    settings: dict,
    out_path: str | os.PathLike,
) -> dict:
    tables = {
        "selection": pd.read_parquet(selection),
        "pca": pd.read_parquet(pca),
        "conditions": pd.read_parquet(conditions),
        "controls": pd.read_parquet(controls),
        "probes": pd.read_parquet(probes),
        "categories": pd.read_parquet(categories),
    }
    body = body_html(
        **tables, selectivity=pd.read_parquet(selectivity), heatmaps=pd.read_parquet(heatmaps), settings=settings
    )
    return write_section(
        out_path,
        study="faces",
        title=TITLE,
        conclusion=conclusion_text(tables["selection"], tables["conditions"], tables["controls"], settings),
        body_html=body,
        summary=summary(**tables, settings=settings),
        units=units(tables["selection"], tables["conditions"], settings["rule"]),
    )
