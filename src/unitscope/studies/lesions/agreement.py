"""Do the methods agree? Where two studies describe the same units, their agreement as Spearman's rho over units
with a 95% bootstrap interval (resampling units): a number, not a judgement. Each row names the model and layer,
the label (what one study says of the units) and the evidence it is set against (another study's measure, or the
units' own lesions)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from unitscope.stats import derived_rng, spearman

MIN_SHARED = 5  # fewer shared units than this: a label row gives their number and no rho


def rank_agreement(
    x: np.ndarray, y: np.ndarray, *, n_bootstrap: int, seed: int, purpose: str, min_units: int = 0
) -> dict:
    """rho of x and y [n] (pairs with a NaN left out), its 95% percentile-bootstrap interval, and n; with fewer than
    `min_units` pairs, n and NaN for the rest."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < min_units:
        return {"rho": np.nan, "low": np.nan, "high": np.nan, "n_units": int(len(x))}
    rng = derived_rng(seed, f"lesions/agreement/{purpose}")
    resampled = np.array([spearman(x[r], y[r]) for r in rng.integers(0, len(x), size=(n_bootstrap, len(x)))])
    resampled = resampled[np.isfinite(resampled)]
    low, high = np.percentile(resampled, [2.5, 97.5]) if len(resampled) else (np.nan, np.nan)
    return {"rho": spearman(x, y), "low": float(low), "high": float(high), "n_units": int(len(x))}


def class_agreement(units: pd.DataFrame, *, model: str, layer: str, n_bootstrap: int, seed: int) -> list[dict]:
    """nefesi's class index against the unit's measured importance for its top class (the evaluation half's
    accuracy drop when the unit alone is lesioned)."""
    own = units[units["class"] == units["top_class"]].sort_values("channel")
    row = rank_agreement(
        own["class_index"], own["accuracy_drop"], n_bootstrap=n_bootstrap, seed=seed, purpose="class-index"
    )
    return [
        {
            "model": model,
            "layer": layer,
            "label": "nefesi class index",
            "evidence": "own lesion's drop of its top class's accuracy",
            **row,
        }
    ]


def colour_agreement(
    nefesi: pd.DataFrame, dissection: pd.DataFrame, *, model: str, layer: str, n_bootstrap: int, seed: int
) -> dict:
    """nefesi's colour index of each unit of a layer against the dissection IoU of its best colour concept."""
    indexes = nefesi[nefesi["layer"] == layer][["channel", "color_index"]]
    ious = dissection[dissection["layer"] == layer][["unit", "color_iou"]].rename(columns={"unit": "channel"})
    merged = indexes.merge(ious, on="channel")
    row = rank_agreement(
        merged["color_index"],
        merged["color_iou"],
        n_bootstrap=n_bootstrap,
        seed=seed,
        purpose=f"colour/{model}/{layer}",
    )
    return {
        "model": model,
        "layer": layer,
        "label": "nefesi colour index",
        "evidence": "dissection IoU of the unit's best colour concept",
        **row,
    }


ACTMAX_LABEL = "actmax colour score (mean CIELAB chroma of its optimised images)"
PARTNERS = {
    "nefesi": ("color_index", "nefesi colour index"),
    "dissection": ("color_iou", "dissection IoU of the unit's best colour concept"),
}


def partner_units(partner: str, table: pd.DataFrame, layer: str) -> pd.DataFrame:
    """(channel, value) of a layer's units in another study's table: nefesi's indexes.parquet (color_index) or the
    dissection's units.parquet (color_iou, its `unit` is the channel)."""
    column, _ = PARTNERS[partner]
    rows = table[table["layer"] == layer].rename(columns={"unit": "channel"})
    return pd.DataFrame({"channel": rows["channel"].astype(np.int64), "value": rows[column].astype(np.float64)})


def actmax_colour_agreement(
    scores: pd.DataFrame, partner: str, table: pd.DataFrame, *, model: str, layer: str, n_bootstrap: int, seed: int
) -> dict:
    """The actmax colour score of each unit of `layer` (`scores`: channel, colour_score; see
    `actmax.image_metrics.unit_colour_scores`) against another study's colour label of the same unit (`partner`:
    "nefesi" or "dissection", `table` its table), over the units both describe; fewer than MIN_SHARED: N only."""
    merged = scores[["channel", "colour_score"]].merge(partner_units(partner, table, layer), on="channel")
    row = rank_agreement(
        merged["colour_score"],
        merged["value"],
        n_bootstrap=n_bootstrap,
        seed=seed,
        purpose=f"actmax-colour/{partner}/{model}/{layer}",
        min_units=MIN_SHARED,
    )
    return {"model": model, "layer": layer, "label": ACTMAX_LABEL, "evidence": PARTNERS[partner][1], **row}


def face_agreement(selection: pd.DataFrame, conditions: pd.DataFrame, *, n_bootstrap: int, seed: int) -> dict:
    """The faces study's selectivity index of each channel it lesioned alone against that lesion's face
    specificity (KL of the output on faces over KL on non-faces)."""
    single = conditions[conditions["family"] == "single"]
    effects = pd.DataFrame({"channel": [int(c[0]) for c in single["channels"]], "effect": single["kl_face_ratio"]})
    merged = effects.merge(selection[["channel", "selectivity_index"]], on="channel")
    row = rank_agreement(
        merged["selectivity_index"], merged["effect"], n_bootstrap=n_bootstrap, seed=seed, purpose="faces"
    )
    first = conditions.iloc[0]
    return {
        "model": first["model"],
        "layer": first["layer"],
        "label": "faces selectivity index (selected channels)",
        "evidence": "own lesion's KL ratio, faces / non-faces",
        **row,
    }
