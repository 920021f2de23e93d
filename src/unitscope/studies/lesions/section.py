"""The report section of the lesions study: its summary, claims, units, card on the landing page (`finding_of`)
and the context that templates/lesions*.j2 word.

Verdicts are decided here, by rules stated once: a set's effect is "shown" when its average over classes is
stronger than that of random sets and of activation-matched sets (one-sided empirical p < alpha against each);
selectivity "predicts" importance when the 95% interval of the mean Spearman rho lies wholly above zero. Where
several sets are tested at once the verdict reads Benjamini-Hochberg q-values instead of p: a concept's detectors
are shown when their KL difference's q (over the concepts tested against that control family) is below alpha
against every family; a layer's colour set weakens the shortcut when the gap's q (over the layers tested) is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from unitscope.report.render import ci, fixed, p_value, render, render_text
from unitscope.report.sections import claim, finding, finding_number, table_rows, unit_hrefs
from unitscope.studies.lesions.agreement import MIN_SHARED

STUDY = "lesions"
TITLE = "Interventions behind the labels"
STUDY_DIR = Path(__file__).resolve().parent
FIGURE = "figures/lesions/class_units.png"
PART_FIGURES = {"colour": "figures/lesions/colour_units.png", "concept": "figures/lesions/concept_units.png"}
QUESTION = "Does a unit's class selectivity predict how much its lesion hurts that class?"
KIND_TEXT = {"selective": "most selective for", "important": "most important for"}
MODE_TEXT = {"lesion": "lesioned", "keep_only": "kept alone"}


def points(x: float | None) -> str:
    """An accuracy change in percentage points: -0.123 -> '-12.3 pts'."""
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:+.1f} pts"


def points_range(low: float, high: float) -> str:
    return ci([100 * low, 100 * high], digits=1)


# ---------------------------------------------------------------------------------------------- verdicts


def rho_verdict(rho: dict) -> str:
    """ "predicts" (interval wholly above 0), "runs against" (wholly below) or "does not predict"."""
    if np.isfinite(rho["low"]) and rho["low"] > 0:
        return "predicts"
    if np.isfinite(rho["high"]) and rho["high"] < 0:
        return "runs against"
    return "does not predict"


def pooled_rows(pooled: pd.DataFrame, alpha: float) -> list[dict]:
    """One row per (set kind, k, mode): the average class-accuracy change with both controls and the verdict."""
    rows = []
    for (kind, k, mode), group in pooled.groupby(["kind", "k", "mode"], sort=False):
        by = {row["control"]: row for _, row in group.iterrows()}
        first = group.iloc[0]
        p = {family: by[family]["p_value"] if family in by and by[family]["n_draws"] else np.nan for family in by}
        tested = [value for value in p.values() if np.isfinite(value)]
        rows.append(
            {
                "kind": kind,
                "k": int(k),
                "mode": mode,
                "change": first["accuracy_change"],
                "interval": (first["change_low"], first["change_high"]),
                "specificity": first["specificity"],
                "n_classes": int(first["n_classes"]),
                "controls": {family: by[family] for family in by},
                "p": p,
                "shown": bool(tested) and all(value < alpha for value in tested),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------- tables


def pooled_table(rows: list[dict]) -> dict:
    """Per set kind, k and mode: the average change with its interval, specificity, each control and its p."""
    records = []
    for row in rows:
        record = {
            "set": f"{row['k']} most {row['kind']}",
            "mode": MODE_TEXT[row["mode"]],
            "change [95%]": f"{points(row['change'])} {points_range(*row['interval'])}",
            "specificity": points(row["specificity"]),
        }
        for family, control in row["controls"].items():
            record[f"{family} sets [95%]"] = (
                f"{points(control['null_mean'])} {points_range(control['null_low'], control['null_high'])}"
            )
            record[f"p ({family})"] = p_value(row["p"][family])
        records.append({**record, "shown": "yes" if row["shown"] else "no"})
    header, body = table_rows(pd.DataFrame(records))
    return {"header": header, "rows": body}


def top_units(sets: pd.DataFrame, kind: str) -> dict[int, int]:
    """{class: its first unit of `kind`}: the first channel of its smallest set (sets list units best first)."""
    rows = sets[(sets["kind"] == kind) & (sets["mode"] == "lesion")].sort_values("k")
    return {int(row.target): int(row.channels[0]) for row in rows.drop_duplicates("target").itertuples()}


def class_table(tables: dict, listed: list[dict]) -> dict:
    """Per class: intact accuracy, rho with interval, its most selective and its most important unit (the first of
    its sets), each linked to the unit's page (`listed`: the units that get one)."""
    info, units = tables["info"], tables["units"]
    per_class = tables["agreement"][tables["agreement"]["kind"] == "per class"].set_index("class_name")
    selective, important = top_units(tables["sets"], "selective"), top_units(tables["sets"], "important")
    rows = []
    for label, name in enumerate(info["class_names"]):
        of_class = units[units["class"] == label].set_index("channel")
        rho = per_class.loc[name] if name in per_class.index else None
        chosen = (selective.get(label), important.get(label))
        rows.append(
            {
                "class": name,
                "intact accuracy": f"{100 * info['intact_accuracy'][label]:.1f}%",
                "Spearman rho [95%]": "n/a" if rho is None else f"{fixed(rho['rho'])} {ci([rho['low'], rho['high']])}",
                "most selective unit": -1 if chosen[0] is None else chosen[0],
                "its share": "n/a" if chosen[0] is None else fixed(of_class.loc[chosen[0], "selectivity"]),
                "most important unit (ranking half)": -1 if chosen[1] is None else chosen[1],
                "its drop (evaluation half)": "n/a"
                if chosen[1] is None
                else points(of_class.loc[chosen[1], "accuracy_drop"]),
            }
        )
    frame = pd.DataFrame(rows)
    model, layer = [info["model"]] * len(frame), [info["layer"]] * len(frame)
    links = {
        column: unit_hrefs(model, layer, frame[column].tolist(), listed)
        for column in ("most selective unit", "most important unit (ranking half)")
    }
    header, body = table_rows(frame, links=links)
    return {"header": header, "rows": body}


def agreement_table(methods: pd.DataFrame) -> dict:
    """Each label against the other evidence on the same units: rho with its interval and the units it rests on."""
    frame = pd.DataFrame(
        {
            "model": methods["model"],
            "layer": methods["layer"],
            "label": methods["label"],
            "set against": methods["evidence"],
            "Spearman rho [95%]": [
                f"{fixed(r)} {ci([lo, hi])}" if np.isfinite(r) else "n/a"
                for r, lo, hi in zip(methods["rho"], methods["low"], methods["high"], strict=True)
            ],
            "units": methods["n_units"].astype(int),
        }
    )
    header, body = table_rows(frame)
    return {"header": header, "rows": body}


# ---------------------------------------------------------------------------------------------- colour units

COLOUR_MEASURES = {"biased": "biased", "conflicting": "conflicting", "gap": "gap (biased − conflicting)"}


def colour_rows(compared: pd.DataFrame | None, alpha: float) -> list[dict]:
    """One row per (layer, set kind): each measure's change with its interval, the random sets' mean change, p and
    q, and whether the set weakens the shortcut beyond random sets (the gap's q < alpha: its p adjusted over the
    layers tested, `colour_units.adjust_over_layers`)."""
    if compared is None or compared.empty:
        return []
    rows = []
    for (layer, kind), group in compared.groupby(["layer", "kind"], sort=False):
        by = group.set_index("measure")
        gap = by.loc["gap"]
        rows.append(
            {
                "layer": layer,
                "kind": kind,
                "k": int(gap["set_size"]),
                "channels": list(gap["channels"]),
                "n_images": int(gap["n_images"]),
                "n_distinct": int(gap["n_distinct"]),
                "measures": {m: by.loc[m].to_dict() for m in COLOUR_MEASURES if m in by.index},
                "n_tested": int(gap["n_tested"]),
                "shown": bool(np.isfinite(gap["q_value"]) and gap["q_value"] < alpha),
            }
        )
    return rows


def colour_table(rows: list[dict]) -> dict:
    records = []
    for row in rows:
        record = {"layer": row["layer"], "set": f"{row['k']} most {row['kind']}-coding"}
        for measure, label in COLOUR_MEASURES.items():
            m = row["measures"][measure]
            record[f"{label} [95%]"] = f"{points(m['change'])} {points_range(m['change_low'], m['change_high'])}"
        gap = row["measures"]["gap"]
        record["random sets: gap"] = points(gap["null_mean"])
        record["p (gap)"] = p_value(gap["p_value"])
        record["q (gap)"] = p_value(gap["q_value"])
        records.append({**record, "shortcut weakened": "yes" if row["shown"] else "no"})
    header, body = table_rows(pd.DataFrame(records))
    return {"header": header, "rows": body}


def colour_claims(rows: list[dict]) -> list[dict]:
    """Each layer's colour set: removing it weakens the colour shortcut more than random sets of its size."""
    out = []
    for row in (row for row in rows if row["kind"] == "colour"):
        gap = row["measures"]["gap"]
        out.append(
            claim(
                study=STUDY,
                claim=render_text("lesions_colour_claim.txt.j2", STUDY_DIR, row=row),
                intervention=f"lesion of the set, colored_mnist_cnn {row['layer']}",
                effect=f"gap {points(gap['change'])} {points_range(gap['change_low'], gap['change_high'])}",
                controls=f"random {points(gap['null_mean'])} ({row['n_distinct']} sets)",
                p=f"random p {p_value(gap['p_value'])}, q {p_value(gap['q_value'])} "
                f"(BH over {_count(row['n_tested'], 'layer')})",
                n=f"{row['n_images']} digits per evaluation set",
                shown=row["shown"],
            )
        )
    return out


# ---------------------------------------------------------------------------------------------- concept detectors


def concept_rows(compared: pd.DataFrame | None, alpha: float) -> list[dict]:
    """One row per concept: its detectors' KL on high and low frames, the difference, the related mass, and per
    control family the null, p and q; shown when the KL difference beats every control family after the adjustment
    over the concepts tested (q < alpha against each)."""
    if compared is None or compared.empty:
        return []
    rows = []
    for concept, group in compared.groupby("concept", sort=False):
        first = group.iloc[0]
        controls = {row["control"]: row for _, row in group.iterrows()}
        tested = [row["q_value"] for row in controls.values() if np.isfinite(row["q_value"])]
        rows.append(
            {
                "concept": concept,
                "first": first,
                "controls": controls,
                "shown": bool(tested) and all(value < alpha for value in tested),
            }
        )
    return rows


def _kl(value: float) -> str:
    return fixed(value, 4)


def _kl_difference(f: pd.Series) -> str:
    """'0.0870 [0.0700, 0.1030]': the KL difference with its 95% interval."""
    return f"{_kl(f['kl_difference'])} {ci([f['kl_difference_ci_low'], f['kl_difference_ci_high']], digits=4)}"


def concept_table(rows: list[dict]) -> dict:
    records = []
    for row in rows:
        f = row["first"]
        record = {
            "concept": f"{row['concept']} ({f['category']})",
            "detectors": int(f["set_size"]),
            "frames high / low": f"{int(f['n_high'])} / {int(f['n_low'])}",
            "KL high": _kl(f["kl_high"]),
            "KL low": _kl(f["kl_low"]),
            "KL high − low [95%]": _kl_difference(f),
            "related mass, high": "n/a" if not np.isfinite(f["mass_change_high"]) else points(f["mass_change_high"]),
        }
        for family, control in row["controls"].items():
            record[f"{family} sets: KL high − low"] = _kl(control["null_kl_difference_mean"])
            record[f"p ({family})"] = p_value(control["p_kl_difference"])
            record[f"q ({family})"] = p_value(control["q_value"])
        records.append({**record, "shown": "yes" if row["shown"] else "no"})
    header, body = table_rows(pd.DataFrame(records))
    return {"header": header, "rows": body}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _concept_p(row: dict) -> str:
    """'random p 0.010, q 0.020; matched p 0.030, q 0.045 (BH over 3 concepts)'."""
    families = [f"{k} p {p_value(c['p_kl_difference'])}, q {p_value(c['q_value'])}" for k, c in row["controls"].items()]
    tested = max(int(c["n_tested"]) for c in row["controls"].values())
    return f"{'; '.join(families)} (BH over {_count(tested, 'concept')})"


def concept_claims(rows: list[dict]) -> list[dict]:
    """Each tested concept: its detectors carry it (the output changes more where it is, and more than controls)."""
    out = []
    for row in rows:
        f = row["first"]
        out.append(
            claim(
                study=STUDY,
                claim=render_text("lesions_concept_claim.txt.j2", STUDY_DIR, row=row, f=f),
                intervention=f"lesion of the detectors, {f['model']} {f['layer']}",
                effect=f"KL high − low {_kl_difference(f)}",
                controls=", ".join(f"{k} {_kl(c['null_kl_difference_mean'])}" for k, c in row["controls"].items()),
                p=_concept_p(row),
                n=f"{int(f['n_high'])} high, {int(f['n_low'])} low frames of {int(f['n_frames'])}",
                shown=row["shown"],
            )
        )
    return out


# ---------------------------------------------------------------------------------------------- the section


def _context(tables: dict, alpha: float) -> dict:
    info, rows = tables["info"], pooled_rows(tables["pooled"], alpha)
    lesions = [row for row in rows if row["mode"] == "lesion"]
    largest = max(row["k"] for row in lesions) if lesions else None
    headline = {row["kind"]: row for row in lesions if row["k"] == largest}
    rho = info["spearman_mean"]
    return {
        "colour": colour_rows(tables.get("colour"), alpha),
        "colour_layers": tables.get("colour_layers"),
        "concept": concept_rows(tables.get("concept"), alpha),
        "concept_ran": tables.get("concept") is not None,
        "colour_tested": _tested(tables.get("colour")),
        "min_shared": MIN_SHARED,
        "concept_tested": _tested(tables.get("concept")),
        "info": info,
        "alpha": alpha,
        "rows": rows,
        "headline": headline,
        "k": largest,
        "rho": rho,
        "verdict": rho_verdict(rho),
        "n_classes": len(info["class_names"]),
    }


def _tested(compared: pd.DataFrame | None) -> int:
    """How many sets (layers, concepts) the q-values of a part's table adjust over: the largest family's count."""
    return 0 if compared is None or compared.empty else int(compared["n_tested"].max())


def conclusion_text(tables: dict, *, alpha: float) -> str:
    return render_text("lesions_conclusion.txt.j2", STUDY_DIR, c=_context(tables, alpha))


def finding_of(tables: dict, *, alpha: float) -> dict:
    """The card: the mean Spearman rho, and the largest selective and important sets' lesion effects."""
    c = _context(tables, alpha)
    info, rho = c["info"], c["rho"]
    numbers = [
        finding_number(
            "selectivity vs own lesion's drop, mean Spearman rho",
            fixed(rho["rho"]),
            interval=ci([rho["low"], rho["high"]]),
            n=f"{info['n_units']} units × {c['n_classes']} classes",
        )
    ]
    for kind in ("selective", "important"):
        row = c["headline"].get(kind)
        if row is not None:
            numbers.append(
                finding_number(
                    f"{row['k']} units {KIND_TEXT[kind]} a class lesioned: its accuracy",
                    points(row["change"]),
                    interval=points_range(*row["interval"]),
                    n=f"{row['n_classes']} classes, {info['n_evaluation']} held-out images",
                )
            )
    texts = figure_texts(c)
    return finding(
        question=QUESTION,
        answer=render_text("lesions_answer.txt.j2", STUDY_DIR, c=c),
        numbers=numbers,
        figure={"src": FIGURE, **texts},
        null=c["verdict"] == "does not predict",
    )


def figure_texts(c: dict) -> dict:
    return {
        part: render_text("lesions_figure_caption.txt.j2", STUDY_DIR, c=c, alt=part == "alt")
        for part in ("caption", "alt")
    }


def part_figure_texts(c: dict) -> dict:
    """{part: {src, caption, alt}} for the colour and concept figures of the parts with a set tested."""
    return {
        part: {
            "src": src,
            **{
                text: render_text(f"lesions_{part}_figure_caption.txt.j2", STUDY_DIR, c=c, alt=text == "alt")
                for text in ("caption", "alt")
            },
        }
        for part, src in PART_FIGURES.items()
        if c[part]
    }


def body_html(tables: dict, *, alpha: float) -> str:
    c = _context(tables, alpha)
    return render(
        "lesions.html.j2",
        STUDY_DIR,
        c=c,
        conclusion=conclusion_text(tables, alpha=alpha),
        figure_src=FIGURE,
        texts=figure_texts(c),
        part_figures=part_figure_texts(c),
        pooled_table=pooled_table(c["rows"]),
        class_table=class_table(tables, units(tables)),
        agreement_table=agreement_table(tables["methods"]),
        colour_table=colour_table(c["colour"]) if c["colour"] else None,
        colour_untested=_untested_layers(c["colour_layers"]),
        concept_table=concept_table(c["concept"]) if c["concept"] else None,
    )


def _untested_layers(layers: pd.DataFrame | None) -> list[str]:
    """Layers of the colour units without a colour unit (nothing to lesion there)."""
    return [] if layers is None else layers.loc[~layers["lesioned"], "layer"].tolist()


def summary(tables: dict, *, alpha: float) -> dict:
    """Headline numbers for results/summary.json."""
    c = _context(tables, alpha)
    info = c["info"]
    return {
        "class_units": {
            "model": info["model"],
            "layer": info["layer"],
            "dataset": info["dataset"],
            "n_units": info["n_units"],
            "n_images": info["n_images"],
            "n_evaluation": info["n_evaluation"],
            "spearman_mean": c["rho"],
            "selectivity_predicts_importance": c["verdict"],
            "sets": [
                {
                    "kind": row["kind"],
                    "k": row["k"],
                    "mode": row["mode"],
                    "accuracy_change": row["change"],
                    "interval": list(row["interval"]),
                    "p": row["p"],
                    "shown": row["shown"],
                }
                for row in c["rows"]
            ],
        },
        "colour_units": [
            {
                "layer": row["layer"],
                "kind": row["kind"],
                "k": row["k"],
                "channels": row["channels"],
                **{f"{m}_change": row["measures"][m]["change"] for m in COLOUR_MEASURES},
                "gap_interval": [row["measures"]["gap"]["change_low"], row["measures"]["gap"]["change_high"]],
                "gap_p": row["measures"]["gap"]["p_value"],
                "gap_q": row["measures"]["gap"]["q_value"],
                "n_layers_tested": row["n_tested"],
                "shortcut_weakened": row["shown"],
            }
            for row in c["colour"]
        ],
        "methods_agreement": [
            {key: row[key] for key in ("model", "layer", "label", "evidence", "rho", "low", "high", "n_units")}
            for row in tables["methods"].to_dict("records")
        ],
        "concept_units": [
            {
                "concept": row["concept"],
                "layer": row["first"]["layer"],
                "detectors": list(row["first"]["channels"]),
                **{key: row["first"][key] for key in ("kl_high", "kl_low", "kl_difference", "mass_change_high")},
                "p_kl_difference": {k: c["p_kl_difference"] for k, c in row["controls"].items()},
                "q_kl_difference": {k: c["q_value"] for k, c in row["controls"].items()},
                "n_concepts_tested": {k: int(c["n_tested"]) for k, c in row["controls"].items()},
                "shown": row["shown"],
            }
            for row in c["concept"]
        ],
    }


def claims(tables: dict, *, alpha: float) -> list[dict]:
    """The claims the section makes about unit sets, each with the intervention behind it (lesions only)."""
    c = _context(tables, alpha)
    info, out = c["info"], []
    for row in (row for row in c["rows"] if row["mode"] == "lesion"):
        null = {family: points(control["null_mean"]) for family, control in row["controls"].items()}
        out.append(
            claim(
                study=STUDY,
                claim=render_text("lesions_claim.txt.j2", STUDY_DIR, row=row, kind=KIND_TEXT[row["kind"]], info=info),
                intervention=f"lesion ({info['ablation']}) of each class's set, {info['model']} {info['layer']}",
                effect=f"{points(row['change'])} {points_range(*row['interval'])}",
                controls=", ".join(f"{family} {value}" for family, value in null.items()),
                p=", ".join(f"{family} {p_value(value)}" for family, value in row["p"].items()),
                n=f"{row['n_classes']} classes, {info['n_evaluation']} held-out images",
                shown=row["shown"],
            )
        )
    return out + colour_claims(c["colour"]) + concept_claims(c["concept"])


def units(tables: dict) -> list[dict]:
    """Every unit of a labelled set, with its selectivity and its own lesion's largest class effect."""
    info, table, sets = tables["info"], tables["units"], tables["sets"]
    members: dict[int, list[str]] = {}
    for row in sets[(sets["mode"] == "lesion") & (sets["control"] == "random")].itertuples():
        for channel in row.channels:
            members.setdefault(int(channel), []).append(f"{row.k} {KIND_TEXT[row.kind]} {row.class_name}")
    out = []
    for channel, labels in sorted(members.items()):
        rows = table[table["channel"] == channel]
        top = rows.sort_values("selectivity", ascending=False).iloc[0]
        hurt = rows.sort_values("accuracy_drop", ascending=False).iloc[0]
        facts = {
            "class selectivity (nefesi share)": f"{top['class_name']} {fixed(top['selectivity'])}",
            "own lesion: largest class-accuracy drop": f"{hurt['class_name']} {points(hurt['accuracy_drop'])}",
            "in the lesioned sets": f"{len(labels)} (e.g. {labels[0]})",
        }
        out.append({"model": info["model"], "layer": info["layer"], "channel": channel, "facts": facts})
    return out
