"""Concept detectors: do the units dissection labels with a concept matter where that concept is in the image?

Sets: per concept with at least `min_detectors` detector units at a layer (dissection's `detector` flag: best IoU
above its threshold), those units, best IoU first (`detector_sets`).

Frames: dissection's own concept images (`data.concepts`), read and preprocessed as dissection reads them (the
model's `preprocessing.resize`, no crop: `dissection.caches.dissection_transform`). A frame's coverage of a concept
is the share of its annotated pixels of the concept's category that carry the concept (`concept_coverage`): void
pixels (no code of that category) are left out of the share, an image-level concept (Broden scenes) covers the
whole frame, and a frame not annotated for the category has none (NaN, in neither group). Frames are split by
coverage per concept (`coverage_split`, `fraction`, default a third): "high" frames are the top `fraction` by
coverage, "low" frames the bottom `fraction`; frames tied with the low cut all count as low (e.g. every frame
without the concept), and a high frame always covers more than every low frame, so with many ties there may be
fewer high frames than `fraction` asks (the table states both counts and both cuts).

Conditions (one streamed pass through the network after the layer, `interventions.tail.condition_outputs`): intact;
per concept its detectors lesioned, `n_random` random sets of the same size drawn without the detectors and
`n_matched` sets matched to them on mean activation (`interventions.controls.draw_controls`, seeded by
`derived_rng(seed, "lesions/concept/<layer>/<concept>/random" | ".../matched")`).

Readouts per condition and frame (`evaluate`): KL(intact || lesioned) of the softmax outputs, and the probability
mass of the concept's `related` output classes (e.g. ImageNet's car classes for `car`). Per condition and concept
(`score_conditions`), on its high and on its low frames: the mean KL and the mean change of the related mass. The
claim under test (`compare_concepts`): the detectors' lesion changes the output more on high frames than on low
ones, and more than control sets do. It is scored by the KL on high frames and by the difference KL high - KL low
(the difference, not the ratio, is tested: the ratio explodes when a lesion barely moves the low frames; the ratio
is reported alongside), and by the change of the related mass on high frames (lower = the lesion removes more of
the related classes); each against every control family with a one-sided empirical p-value over distinct sets.
Several concepts are tested at once: the verdict's p (the KL difference's) gets a Benjamini-Hochberg q-value over
the concepts tested against the same control family (`q_value`, `n_tested`), and a concept is shown by its q.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from unitscope.data.concepts import ConceptDataset
from unitscope.interventions.conditions import ConditionBuilder, Conditions
from unitscope.interventions.controls import draw_controls
from unitscope.interventions.tail import Tail, condition_outputs
from unitscope.stats import bootstrap_interval, derived_rng, empirical_p
from unitscope.studies.dissection.caches import batches, cache_activations, dissection_transform
from unitscope.studies.dissection.dissect import LabelBatch, concept_lookup, label_batch
from unitscope.studies.lesions.class_units import SetDraws
from unitscope.studies.lesions.inputs import LesionsError
from unitscope.studies.lesions.multiplicity import family_q_values

CHUNK_BYTES = 1 << 26  # logits of ~64 MiB per step: their float64 softmax is several times that
HIGH_LOW_FRACTION = 1 / 3  # default: high frames are the top third by coverage, low frames the bottom third
UNIT_COLUMNS = ("layer", "unit", "concept", "category", "iou", "detector")
FAMILIES = ("random", "matched")
# The statistics tested against the controls, and which side is "stronger" (the lesion's claim); the verdict is the
# KL difference's, its p adjusted over the concepts (`q_value`). The KL on low frames gets its null described only.
TESTED = {"kl_high": "higher", "kl_difference": "higher", "mass_change_high": "lower"}
VERDICT = "kl_difference"
DESCRIBED = ("kl_low",)

COMPARISON_COLUMNS = {
    "layer": "the layer whose units are lesioned",
    "concept": "the concept (dissection's best label of the detectors)",
    "category": "the concept's category (object, color, ...)",
    "control": "the control family compared against: random (drawn without the detectors) or matched (on mean "
    "activation)",
    "set_size": "number of detectors lesioned (= the size of every control set)",
    "channels": "the detectors, best IoU first",
    "fraction": "share of the frames in each group: high = top fraction by coverage, low = bottom fraction",
    "high_cut": "lowest coverage among the high frames",
    "low_cut": "highest coverage among the low frames",
    "n_high": "frames in the high group",
    "n_low": "frames in the low group",
    "kl_high": "mean KL(intact || detectors lesioned) of the softmax outputs over the high frames (nats)",
    "kl_high_ci_low": "95% bootstrap interval of kl_high over frames, lower end",
    "kl_high_ci_high": "95% bootstrap interval of kl_high over frames, upper end",
    "kl_low": "mean KL(intact || detectors lesioned) over the low frames (nats)",
    "kl_low_ci_low": "95% bootstrap interval of kl_low over frames, lower end",
    "kl_low_ci_high": "95% bootstrap interval of kl_low over frames, upper end",
    "kl_difference": "kl_high - kl_low: how much more the lesion changes the output where the concept is",
    "kl_difference_ci_low": "95% bootstrap interval of kl_difference (high and low frames resampled apart), lower end",
    "kl_difference_ci_high": "95% bootstrap interval of kl_difference, upper end",
    "kl_ratio": "kl_high / kl_low (descriptive; inf when the lesion leaves the low frames unchanged)",
    "mass_change_high": "mean change of the related classes' probability mass on the high frames (NaN: no related "
    "classes)",
    "mass_change_high_ci_low": "95% bootstrap interval of mass_change_high over frames, lower end",
    "mass_change_high_ci_high": "95% bootstrap interval of mass_change_high over frames, upper end",
    "mass_change_low": "mean change of the related classes' probability mass on the low frames",
    "intact_mass_high": "the intact network's mean related mass on the high frames",
    "intact_mass_low": "the intact network's mean related mass on the low frames",
    "null_kl_high_mean": "mean of kl_high over the family's distinct control sets",
    "null_kl_high_low": "2.5th percentile of the controls' kl_high",
    "null_kl_high_high": "97.5th percentile of the controls' kl_high",
    "p_kl_high": "one-sided empirical p: controls with kl_high at least the detectors'",
    "null_kl_low_mean": "mean of kl_low over the distinct control sets (described, not tested)",
    "null_kl_low_low": "2.5th percentile of the controls' kl_low",
    "null_kl_low_high": "97.5th percentile of the controls' kl_low",
    "null_kl_difference_mean": "mean of kl_difference over the distinct control sets",
    "null_kl_difference_low": "2.5th percentile of the controls' kl_difference",
    "null_kl_difference_high": "97.5th percentile of the controls' kl_difference",
    "p_kl_difference": "one-sided empirical p: controls with kl_difference at least the detectors'",
    "null_mass_change_high_mean": "mean of mass_change_high over the distinct control sets",
    "null_mass_change_high_low": "2.5th percentile of the controls' mass_change_high",
    "null_mass_change_high_high": "97.5th percentile of the controls' mass_change_high",
    "p_mass_change_high": "one-sided empirical p: controls lowering the related mass on high frames at least as "
    "much as the detectors (NaN: no related classes)",
    "q_value": "p_kl_difference adjusted by Benjamini-Hochberg over the concepts tested against the same control "
    "family (the verdict's statistic)",
    "n_tested": "concepts the q-value adjusts over (those with a p_kl_difference against this family)",
    "n_draws": "control sets drawn in the family",
    "n_distinct": "distinct control sets among them (the null's size)",
}


# ---------------------------------------------------------------------------------------------- sets


def detector_sets(units: pd.DataFrame, layer: str, min_detectors: int = 3) -> list[dict]:
    """Per concept with at least `min_detectors` detectors at `layer` in dissection's unit table: {concept,
    category, channels (np.int64, highest IoU first, ties: lower unit), iou}; most detectors first, then by name."""
    missing = [column for column in UNIT_COLUMNS if column not in units.columns]
    if missing:
        raise LesionsError(f"dissection units table: missing columns {', '.join(missing)} (units.parquet)")
    if layer not in set(units["layer"]):
        known = ", ".join(sorted(map(str, units["layer"].unique())))
        raise LesionsError(f"dissection units table: no layer {layer!r} (layers: {known})")
    detectors = units[(units["layer"] == layer) & units["detector"].astype(bool)]
    ordered = detectors.sort_values(["iou", "unit"], ascending=[False, True], kind="stable")
    sets = [
        {
            "concept": str(concept),
            "category": str(category),
            "channels": np.array(group["unit"], dtype=np.int64),
            "iou": np.array(group["iou"], dtype=np.float64),
        }
        for (concept, category), group in ordered.groupby(["concept", "category"], sort=False)
        if len(group) >= min_detectors
    ]
    return sorted(sets, key=lambda s: (-len(s["channels"]), s["concept"]))


# ---------------------------------------------------------------------------------------------- coverage


def concept_code(concepts: ConceptDataset, concept: str, category: str) -> int:
    """The concept's code in the concept dataset (what its label maps hold)."""
    table = concepts.concepts
    rows = table[(table["name"] == concept) & (table["category"] == category)]
    if rows.empty:
        raise LesionsError(f"concept {concept!r} ({category}) is not among the concepts of {concepts.name}")
    return int(rows["code"].iloc[0])


def concept_coverage(labels: LabelBatch, code: int, code_category: np.ndarray) -> np.ndarray:
    """[N] per image, the share of its pixels annotated for the concept's category (any layer holds a code of that
    category: void is left out) that carry the concept (in any layer); 1 or 0 for an image-level concept of that
    category; NaN for an image not annotated for the category or with no annotated pixel."""
    code_category = np.asarray(code_category)
    category = int(code_category[code])
    pixels, scalars = labels.pixels.numpy(), labels.scalars.numpy()
    concept_pixels = (pixels == code).any(axis=1).sum(axis=1)
    category_pixels = (code_category[pixels] == category).any(axis=1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(category_pixels > 0, concept_pixels / np.maximum(category_pixels, 1), np.nan)
    image_level = ((code_category[scalars] == category) & (scalars > 0)).any(axis=1)
    share = np.where(image_level, (scalars == code).any(axis=1).astype(np.float64), share)
    return np.where(labels.annotated.numpy()[:, category], share, np.nan)


def set_coverage(concepts: ConceptDataset, sets: list[dict], shape: tuple[int, int], *, block: int = 32) -> np.ndarray:
    """[N, S] each image's coverage of each set's concept, from the concept dataset's labels at mask `shape` (the
    masks dissection counts), read in blocks of images."""
    code_category, _ = concept_lookup(concepts)
    codes = [concept_code(concepts, s["concept"], s["category"]) for s in sets]
    coverage = np.empty((len(concepts), len(sets)))
    for start, stop in batches(len(concepts), block):
        labels = label_batch([concepts.annotation(i, shape) for i in range(start, stop)], concepts.categories, shape)
        for column, code in enumerate(codes):
            coverage[start:stop, column] = concept_coverage(labels, code, code_category)
    return coverage


@dataclass(frozen=True)
class Split:
    """One concept's frames by coverage: `high` and `low` [N] bool, and the cuts (lowest high, highest low)."""

    high: np.ndarray
    low: np.ndarray
    high_cut: float
    low_cut: float
    fraction: float


def coverage_split(coverage: np.ndarray, fraction: float = HIGH_LOW_FRACTION) -> Split:
    """High frames: the top `fraction` by coverage; low: the bottom `fraction`, with every frame tied with the
    low cut; a high frame always covers more than the low cut (see the module docstring). NaN: in neither."""
    if not 0 < fraction <= 0.5:
        raise LesionsError(f"concept frames: fraction {fraction} must be in (0, 0.5] (high and low apart)")
    valid = np.isfinite(coverage)
    ordered = np.sort(coverage[valid])
    count = int(np.floor(fraction * len(ordered)))
    if count == 0:
        empty = np.zeros(len(coverage), dtype=bool)
        return Split(empty, empty, np.nan, np.nan, fraction)
    low_cut, high_cut = float(ordered[count - 1]), float(ordered[len(ordered) - count])
    low = valid & (coverage <= low_cut)
    high = valid & (coverage >= high_cut) & (coverage > low_cut)
    return Split(high, low, float(coverage[high].min()) if high.any() else np.nan, low_cut, fraction)


# ---------------------------------------------------------------------------------------------- the layer's cache


def concept_layer_cache(
    model: nn.Module,
    tail: Tail,
    concepts: ConceptDataset,
    preprocessing: dict,
    folder: str | Path,
    *,
    model_name: str = "model",
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the conditions act on, channel means [N, C]) for the concept images: one batched pass up to the layer
    with dissection's reading of the images (`cache_activations`: maps in a memmap under `folder`, which the
    caller removes; the model must be on the CPU, as there). The cache is the channel means when the tail pools
    first, the maps for an exact tail, else the preprocessed images for the re-runs."""
    transform = dissection_transform(preprocessing, model_name)
    Path(folder).mkdir(parents=True, exist_ok=True)
    maps = cache_activations(
        model, concepts, [tail.layer], transform, Path(folder), model_name=model_name, batch_size=batch_size
    )[tail.layer]
    means = torch.cat([torch.from_numpy(np.asarray(maps[a:b]).mean(axis=(2, 3))) for a, b in batches(len(maps), 64)])
    if tail.pool_first:
        print(f"{tail.layer} is followed by the global pool: conditions act on channel means", flush=True)
        return means, means
    if tail.rerun:
        images = torch.stack([transform(concepts.image(i)) for i in range(len(concepts))])
        return images, means
    return torch.from_numpy(np.array(maps)), means


# ---------------------------------------------------------------------------------------------- conditions


def build_concept_conditions(sets: list[dict], channel_mean: np.ndarray, draws: SetDraws, layer: str) -> Conditions:
    """intact; per set (`set` = its position) its detectors lesioned (family "detectors"), and its random (drawn
    without the detectors) and activation-matched control sets, lesioned."""
    conditions = ConditionBuilder(len(channel_mean))
    conditions.add("intact", [], family="intact", mode="none", set=-1, concept="", category="", draw=-1)
    for number, chosen in enumerate(sets):
        labels = {"set": number, "concept": chosen["concept"], "category": chosen["category"]}
        random_draws, matched_draws = draw_controls(
            channel_mean,
            chosen["channels"],
            n_random=draws.n_random,
            n_matched=draws.n_matched,
            candidates=draws.matched_candidates,
            seed=draws.seed,
            purpose=f"lesions/concept/{layer}/{chosen['concept']}",
            random_without_chosen=True,
        )
        conditions.add(
            f"set{number:03d}_detectors", chosen["channels"], family="detectors", mode="lesion", **labels, draw=-1
        )
        for family, drawn in zip(FAMILIES, (random_draws, matched_draws), strict=True):
            for draw, channels in enumerate(drawn):
                conditions.add(
                    f"set{number:03d}_{family}_{draw:03d}", channels, family=family, mode="lesion", **labels, draw=draw
                )
    return conditions.build()


def related_indexes(sets: list[dict], related: dict[str, list[int]], n_classes: int) -> list[np.ndarray]:
    """Per set, the output classes whose probability mass is read for its concept (empty: none configured)."""
    out = []
    for chosen in sets:
        indexes = np.asarray(related.get(chosen["concept"], []), dtype=np.int64)
        bad = indexes[(indexes < 0) | (indexes >= n_classes)]
        if len(bad):
            raise LesionsError(
                f"related classes of concept {chosen['concept']!r}: index {bad[0]} is not among the model's "
                f"{n_classes} outputs"
            )
        out.append(np.unique(indexes))
    return out


# ---------------------------------------------------------------------------------------------- readouts


@dataclass(frozen=True)
class Readouts:
    """Per condition and frame: KL(intact || condition) [K, N], and the related mass of the condition's set [K, N]
    (NaN for intact and sets without related classes); the intact related mass of every set [S, N]."""

    kl: np.ndarray
    mass: np.ndarray
    intact_mass: np.ndarray


def evaluate(
    tail: Tail,
    cache: torch.Tensor,
    conditions: Conditions,
    fill: torch.Tensor,
    related: list[np.ndarray],
    *,
    device: torch.device | str = "cpu",
) -> Readouts:
    """The readouts of every condition on every frame, in one streamed pass (the first condition must be intact;
    `related`: one array of class indexes per set, `related_indexes`)."""
    if conditions.ablate.shape[0] == 0 or bool(conditions.ablate[0].any()):
        raise LesionsError("concept conditions: the first condition must be the intact network")
    set_of_row = conditions.table["set"].to_numpy()
    if len(related) != set_of_row.max() + 1:
        raise LesionsError(f"concept conditions: {set_of_row.max() + 1} sets, related classes given for {len(related)}")
    has_related = np.array([len(indexes) > 0 for indexes in related] + [False])  # [S + 1]: the last is "no set"
    n_conditions, n_images = conditions.ablate.shape[0], cache.shape[0]
    kl = np.empty((n_conditions, n_images), dtype=np.float64)
    mass = np.full((n_conditions, n_images), np.nan)
    intact_log_p, selector = None, None
    outputs = condition_outputs(
        tail, cache, conditions.ablate, fill, device=device, with_pooled=False, progress=True, chunk_bytes=CHUNK_BYTES
    )
    for rows, _, logits in outputs:
        log_p = torch.log_softmax(logits.double(), dim=-1)  # [k, N, L]
        if intact_log_p is None:
            intact_log_p, selector = log_p[0], _related_matrix(related, logits.shape[-1])
            intact_mass = (intact_log_p.exp() @ selector).T.numpy()  # [S, N]
        kl[rows] = (intact_log_p.exp() * (intact_log_p - log_p)).sum(-1).clamp(min=0).numpy()
        sets = np.where(set_of_row[rows] >= 0, set_of_row[rows], len(related))  # intact -> "no set"
        picked = (log_p.exp() @ selector).numpy()[np.arange(len(sets)), :, np.minimum(sets, selector.shape[1] - 1)]
        mass[rows] = np.where(has_related[sets][:, None], picked, np.nan)
    return Readouts(kl, mass, intact_mass)


def _related_matrix(related: list[np.ndarray], n_classes: int) -> torch.Tensor:
    """[L, S] float64: column s is 1 at set s's related classes."""
    selector = torch.zeros(n_classes, max(1, len(related)), dtype=torch.float64)
    beyond = [int(i) for indexes in related for i in indexes if not 0 <= i < n_classes]
    if beyond:
        raise LesionsError(f"related class index {beyond[0]} is not among the model's {n_classes} outputs")
    for column, indexes in enumerate(related):
        selector[torch.from_numpy(indexes), column] = 1.0
    return selector


# ---------------------------------------------------------------------------------------------- scores


def score_conditions(conditions: Conditions, readouts: Readouts, splits: list[Split]) -> pd.DataFrame:
    """The conditions table (intact left out) with, on its set's high and low frames, the mean KL, their
    difference and ratio, and the mean change of the related mass; `channels` holds each condition's set."""
    table = conditions.table.copy()
    table["channels"] = [s.tolist() for s in conditions.sets]
    table = table[table["set"] >= 0].copy()
    for column in ("kl_high", "kl_low", "mass_change_high", "mass_change_low"):
        table[column] = np.nan
    for number, split in enumerate(splits):
        rows = table.index[table["set"] == number].to_numpy()
        change = readouts.mass[rows] - readouts.intact_mass[number]  # [r, N]
        for group, frames in (("high", split.high), ("low", split.low)):
            table.loc[rows, f"kl_{group}"] = _row_means(readouts.kl[rows][:, frames])
            table.loc[rows, f"mass_change_{group}"] = _row_means(change[:, frames])
    table["kl_difference"] = table["kl_high"] - table["kl_low"]
    with np.errstate(divide="ignore", invalid="ignore"):
        table["kl_ratio"] = table["kl_high"].to_numpy(dtype=np.float64) / table["kl_low"].to_numpy(dtype=np.float64)
    return table


def _row_means(values: np.ndarray) -> np.ndarray:
    """[r] mean of each row of [r, n] (NaN when n is 0 or a value is NaN)."""
    return values.mean(axis=1) if values.shape[1] else np.full(values.shape[0], np.nan)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) and np.isfinite(values).all() else np.nan


# ---------------------------------------------------------------------------------------------- comparison


def compare_concepts(
    scored: pd.DataFrame,
    readouts: Readouts,
    splits: list[Split],
    *,
    layer: str,
    n_bootstrap: int,
    seed: int,
) -> pd.DataFrame:
    """One row per (concept, control family), columns as `COMPARISON_COLUMNS` documents: the detectors' effects
    with 95% bootstrap intervals over frames, the family's null over distinct sets, one-sided p-values."""
    rows = []
    for _, chosen in scored[scored["family"] == "detectors"].iterrows():
        number, split = int(chosen["set"]), splits[int(chosen["set"])]
        rng = derived_rng(seed, f"lesions/concept/{layer}/{chosen['concept']}/bootstrap")
        intervals = _intervals(readouts, chosen.name, number, split, rng, n_bootstrap)
        for family in FAMILIES:
            drawn = scored[(scored["set"] == number) & (scored["family"] == family)]
            distinct = drawn[~drawn["channels"].map(lambda c: tuple(sorted(c))).duplicated()]
            row = _described(chosen, split, readouts, number, layer, family)
            row.update(intervals)
            row.update(_null(chosen, distinct))
            row.update(n_draws=len(drawn), n_distinct=len(distinct))
            rows.append(row)
    table = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    table["q_value"], table["n_tested"] = family_q_values(table, f"p_{VERDICT}", ["control"])
    return table


def _described(chosen: pd.Series, split: Split, readouts: Readouts, number: int, layer: str, family: str) -> dict:
    intact = readouts.intact_mass[number]
    has_mass = np.isfinite(chosen["mass_change_high"])
    return {
        "layer": layer,
        "concept": chosen["concept"],
        "category": chosen["category"],
        "control": family,
        "set_size": int(chosen["set_size"]),
        "channels": chosen["channels"],
        "fraction": split.fraction,
        "high_cut": split.high_cut,
        "low_cut": split.low_cut,
        "n_high": int(split.high.sum()),
        "n_low": int(split.low.sum()),
        "kl_high": chosen["kl_high"],
        "kl_low": chosen["kl_low"],
        "kl_difference": chosen["kl_difference"],
        "kl_ratio": chosen["kl_ratio"],
        "mass_change_high": chosen["mass_change_high"],
        "mass_change_low": chosen["mass_change_low"],
        "intact_mass_high": _mean(intact[split.high]) if has_mass else np.nan,
        "intact_mass_low": _mean(intact[split.low]) if has_mass else np.nan,
    }


def _frame_values(readouts: Readouts, row: int, number: int, frames: np.ndarray) -> dict[str, np.ndarray]:
    """One condition's per-frame KL and related-mass change on the given frames of its set."""
    return {
        "kl": readouts.kl[row, frames],
        "mass_change": readouts.mass[row, frames] - readouts.intact_mass[number, frames],
    }


def _intervals(readouts: Readouts, row: int, number: int, split: Split, rng, n_bootstrap: int) -> dict:
    """95% bootstrap intervals over frames of the detectors' KL (high, low, their difference) and mass change."""
    high = _frame_values(readouts, row, number, split.high)
    low = _frame_values(readouts, row, number, split.low)
    intervals = {
        "kl_high": bootstrap_interval(high["kl"], rng, resamples=n_bootstrap),
        "kl_low": bootstrap_interval(low["kl"], rng, resamples=n_bootstrap),
        "kl_difference": difference_interval(high["kl"], low["kl"], rng, n_bootstrap),
        "mass_change_high": (np.nan, np.nan),
    }
    if np.isfinite(high["mass_change"]).all() and len(high["mass_change"]):
        intervals["mass_change_high"] = bootstrap_interval(high["mass_change"], rng, resamples=n_bootstrap)
    return {
        f"{name}_ci_{end}": pair[side] for name, pair in intervals.items() for side, end in enumerate(("low", "high"))
    }


def difference_interval(high: np.ndarray, low: np.ndarray, rng: np.random.Generator, resamples: int):
    """95% percentile-bootstrap interval of mean(high) - mean(low), the two groups resampled apart."""
    if len(high) == 0 or len(low) == 0:
        return np.nan, np.nan
    high_means = high[rng.integers(0, len(high), size=(resamples, len(high)))].mean(axis=1)
    low_means = low[rng.integers(0, len(low), size=(resamples, len(low)))].mean(axis=1)
    lower, upper = np.percentile(high_means - low_means, [2.5, 97.5])
    return float(lower), float(upper)


def _null(chosen: pd.Series, distinct: pd.DataFrame) -> dict:
    """The family's null of each tested statistic (mean, 2.5 and 97.5 percentiles) and the one-sided p-value; of a
    described one, the null only."""
    out = {}
    for name in (*DESCRIBED, *TESTED):
        null = distinct[name].to_numpy(dtype=np.float64)
        usable = len(null) > 0 and np.isfinite(null).all() and (name in DESCRIBED or np.isfinite(chosen[name]))
        out[f"null_{name}_mean"] = float(null.mean()) if usable else np.nan
        out[f"null_{name}_low"] = float(np.percentile(null, 2.5)) if usable else np.nan
        out[f"null_{name}_high"] = float(np.percentile(null, 97.5)) if usable else np.nan
        if name in TESTED:
            out[f"p_{name}"] = empirical_p(chosen[name], null, TESTED[name]) if usable else np.nan
    return out
