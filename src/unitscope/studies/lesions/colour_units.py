"""Colour units on Biased Colored-MNIST: does lesioning the units the actmax study judged colour-coding weaken the
colour shortcut (accuracy on conflicting digits up, on biased digits down), or does colour live elsewhere?

The judgement (`colour_sets`), from the actmax probe (`actmax.color_shape.color_shape_probe`): a channel's colour
index is its activation change when only a digit's colour changes over that change plus the change when only the
digit changes (1 = colour only, 0 = digit only). The actmax study says a layer codes colour when the 95% interval
of its median colour index lies above 0.5 and counts a channel as colour-dominated when its index exceeds 0.5; the
rule here is that per-unit count: a channel is a colour unit when `color_index > COLOUR_THRESHOLD` (0.5, strictly).
A channel with no index (NaN: it does not respond to the probe images) is in neither set. The colour set of a
layer is its colour units, highest index first (at most `max_units` of them when given). The shape set holds the
most shape-coding units: as many units as the colour set, those with the lowest indexes outside it (lowest first;
fewer if fewer are left). "Most shape-coding" is relative: in a layer where nearly every channel codes colour (as
in a CNN trained briefly on biased data), its units may have indexes above 0.5 too; each set carries its units'
indexes and `layer_summary` gives the shape set's largest. A layer without a colour unit gets neither set: no shape
set is invented to stand against a colour set that does not exist (`layer_summary` still reports the layer). Ties
are broken by the lower channel.

The lesion (`lesion_layer`): the network after the layer (`interventions.tail`) runs on the layer's maps of the
three evaluation sets (biased, unbiased, conflicting: the same digits coloured three ways, so the same image index
is the same digit in every set and changes are paired across sets). Conditions: intact; each set lesioned (its
channels set to zero, or to their mean over the unbiased images); and per set `n_random` random sets of its size
drawn without its units. All conditions go through the tail in one streamed pass over the three sets at once.

The readout: accuracy per set, and the shortcut gap (biased minus conflicting accuracy). `compare_sets` gives each
set's change from intact with a paired 95% bootstrap interval over images, the random sets' null and one-sided
empirical p-values in the direction of the shortcut claim (`DIRECTIONS`; the same directions for the shape set, so
its p-values ask whether removing shape units weakens the shortcut too). With several layers tested, each p gets a
Benjamini-Hochberg q-value over the layers tested with the same set kind and measure (`adjust_over_layers`); a
layer's colour set weakens the shortcut when the gap's q is below alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from unitscope.interventions.conditions import ConditionBuilder, Conditions, ablation_fill
from unitscope.interventions.controls import random_sets
from unitscope.interventions.tail import Tail, build_tail
from unitscope.stats import bootstrap_interval, derived_rng, empirical_p
from unitscope.studies.actmax.activations import layer_activations
from unitscope.studies.actmax.colored_mnist import EVAL_SETS, ColoredMnist
from unitscope.studies.lesions.class_units import evaluate
from unitscope.studies.lesions.inputs import LesionsError
from unitscope.studies.lesions.multiplicity import family_q_values

MODEL_NAME = "colored_mnist_cnn"
COLOUR_THRESHOLD = 0.5  # a colour unit: color_index > 0.5 (its colour change exceeds its digit change)
SET_KINDS = ("colour", "shape")
GAP = "gap"  # the shortcut gap: accuracy on biased digits minus accuracy on conflicting digits
MEASURES = (*EVAL_SETS, GAP)
# The shortcut claim: removing colour units weakens the shortcut. Its one-sided directions: conflicting accuracy up,
# biased accuracy down, the gap down. Unbiased accuracy has no predicted direction (colour helps on the tenth of its
# digits drawn in their class colour and misleads on the rest): two-sided.
DIRECTIONS = {"biased": "lower", "unbiased": "two-sided", "conflicting": "higher", GAP: "lower"}
PROBE_COLUMNS = ("layer", "kind", "channel", "color_index")


# ---------------------------------------------------------------------------------------------- the sets


def _layer_channels(probe: pd.DataFrame, layer: str) -> pd.DataFrame:
    """The probe's channel rows of one layer (neuron rows left out), one per channel; a layer it lacks is an error."""
    missing = [column for column in PROBE_COLUMNS if column not in probe.columns]
    if missing:
        raise LesionsError(f"colour probe table: missing columns {', '.join(missing)} (actmax probe.parquet)")
    rows = probe[(probe["layer"] == layer) & (probe["kind"] == "channel")]
    if rows.empty:
        known = ", ".join(map(str, probe.loc[probe["kind"] == "channel", "layer"].unique())) or "none"
        raise LesionsError(f"colour probe table: no channel rows for layer {layer!r} (layers: {known})")
    if rows["channel"].duplicated().any():
        raise LesionsError(f"colour probe table: layer {layer!r} lists a channel twice")
    return rows


def colour_sets(probe: pd.DataFrame, layers, *, max_units: int | None = None) -> list[dict]:
    """Per layer with a colour unit, two sets (module docstring): {layer, kind "colour" | "shape", channels
    (np.int64, best first: colour highest index first, shape lowest first), color_index (theirs, same order),
    threshold}; at most `max_units` colour units when given. A layer without a colour unit gets none."""
    sets = []
    for layer in layers:
        rows = _layer_channels(probe, layer)
        channel, index = rows["channel"].to_numpy(dtype=np.int64), rows["color_index"].to_numpy(dtype=np.float64)
        responsive = np.isfinite(index)
        colour = np.flatnonzero(responsive & (index > COLOUR_THRESHOLD))
        colour = colour[np.lexsort((channel[colour], -index[colour]))][:max_units]
        if len(colour) == 0:
            continue
        others = np.setdiff1d(np.flatnonzero(responsive), colour)
        shape = others[np.lexsort((channel[others], index[others]))][: len(colour)]
        for kind, chosen in (("colour", colour), ("shape", shape)):
            if len(chosen):
                sets.append(
                    {
                        "layer": layer,
                        "kind": kind,
                        "channels": channel[chosen],
                        "color_index": index[chosen],
                        "threshold": COLOUR_THRESHOLD,
                    }
                )
    return sets


def layer_summary(probe: pd.DataFrame, layers, sets: list[dict]) -> pd.DataFrame:
    """One row per layer: layer, n_channels, n_responsive (with a colour index), n_colour (index above the
    threshold), median_color_index, colour_size / shape_size (units lesioned; 0: no such set),
    colour_mean_index / shape_mean_index and shape_max_index (NaN without the set), lesioned (the layer got a
    colour set)."""
    rows = []
    for layer in layers:
        index = _layer_channels(probe, layer)["color_index"].to_numpy(dtype=np.float64)
        finite = index[np.isfinite(index)]
        row = {
            "layer": layer,
            "n_channels": len(index),
            "n_responsive": len(finite),
            "n_colour": int((finite > COLOUR_THRESHOLD).sum()),
            "median_color_index": float(np.median(finite)) if len(finite) else float("nan"),
        }
        for kind in SET_KINDS:
            chosen = [s for s in sets if s["layer"] == layer and s["kind"] == kind]
            row[f"{kind}_size"] = len(chosen[0]["channels"]) if chosen else 0
            row[f"{kind}_mean_index"] = float(np.mean(chosen[0]["color_index"])) if chosen else float("nan")
        shape = [s["color_index"] for s in sets if s["layer"] == layer and s["kind"] == "shape"]
        row["shape_max_index"] = float(np.max(shape[0])) if shape else float("nan")
        row["lesioned"] = row["colour_size"] > 0
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- the images


@dataclass(frozen=True)
class EvaluationImages:
    """The evaluation digits in each colouring: image i is the same digit in every set."""

    images: dict[str, torch.Tensor]  # set -> float [N, 3, 28, 28] in [0, 1]
    labels: np.ndarray  # [N] the digits' classes (= logit indexes)
    colors: dict[str, np.ndarray]  # set -> [N] colour index
    index: np.ndarray  # [N] positions in the evaluation split

    @property
    def n_images(self) -> int:
        return len(self.labels)


def evaluation_images(data: ColoredMnist, *, max_images: int | None = None, seed: int = 0) -> EvaluationImages:
    """The three evaluation sets, or the same seeded draw of `max_images` digits from each (in split order)."""
    labels = data.labels[EVAL_SETS[0]]
    for name in EVAL_SETS[1:]:
        if not np.array_equal(data.labels[name], labels):
            raise LesionsError(f"Colored-MNIST sets {EVAL_SETS[0]!r} and {name!r} hold different digits")
    index = np.arange(len(labels))
    if max_images is not None and max_images < len(labels):
        index = np.sort(derived_rng(seed, "lesions/colour/images").choice(len(labels), size=max_images, replace=False))
    images = {name: data.tensors(name)[0][torch.from_numpy(index)] for name in EVAL_SETS}
    colors = {name: data.colors[name][index] for name in EVAL_SETS}
    return EvaluationImages(images, labels[index], colors, index)


def layer_inputs(
    model: nn.Module, tail: Tail, evaluation: EvaluationImages, *, batch_size: int = 500, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the conditions act on, channel means [S*N, C]) for the three sets concatenated in EVAL_SETS order, one
    batched pass each: the layer's maps (their channel means when the tail starts with the global pool), or the
    images themselves when every condition re-runs the model."""
    images = torch.cat([evaluation.images[name] for name in EVAL_SETS]).to(device)
    maps = layer_activations(model, images, [tail.layer], batch_size=batch_size)[tail.layer].cpu()
    if maps.dim() < 3:
        raise LesionsError(f"layer {tail.layer!r} outputs {list(maps.shape)}: no channel maps to lesion")
    means = maps.flatten(2).mean(2)
    if tail.rerun:
        return images.cpu(), means
    return (means if tail.pool_first else maps), means


# ---------------------------------------------------------------------------------------------- the conditions


def random_controls(n_channels: int, channels: np.ndarray, n_random: int, rng: np.random.Generator) -> np.ndarray:
    """[n_random, |set|] random sets drawn without the set's units; none ([0, |set|]) when fewer units than the set
    holds are left outside it (said in one printed line)."""
    if n_channels - len(channels) < len(channels):
        print(f"no random controls: {len(channels)} units, {n_channels - len(channels)} left outside", flush=True)
        return np.zeros((0, len(channels)), dtype=np.int64)
    return random_sets(n_channels, len(channels), n_random, rng, exclude=channels)


def build_conditions(sets: list[dict], layer: str, n_channels: int, *, n_random: int, seed: int) -> Conditions:
    """intact; each set of `layer` lesioned; its random controls (seeded `lesions/colour/<layer>/<kind>`). Table
    columns: condition, family (intact | set | random), layer, kind, draw, mode, set_size, n_ablated."""
    conditions = ConditionBuilder(n_channels)
    conditions.add("intact", [], family="intact", layer=layer, kind="", draw=-1, mode="none")
    kinds = [labelled["kind"] for labelled in sets]
    if len(set(kinds)) < len(kinds) or any(labelled["layer"] != layer for labelled in sets):
        raise LesionsError(f"colour sets for layer {layer!r}: one set per kind, all of that layer (got {kinds})")
    for labelled in sets:
        kind, channels = labelled["kind"], np.asarray(labelled["channels"], dtype=np.int64)
        if len(channels) and (channels.min() < 0 or channels.max() >= n_channels):
            raise LesionsError(f"{kind} set of layer {layer!r}: channels outside 0..{n_channels - 1}")
        conditions.add(f"{kind}_lesion", channels, family="set", layer=layer, kind=kind, draw=-1, mode="lesion")
        rng = derived_rng(seed, f"lesions/colour/{layer}/{kind}")
        for draw, control in enumerate(random_controls(n_channels, channels, n_random, rng)):
            conditions.add(
                f"{kind}_random_{draw:03d}", control, family="random", layer=layer, kind=kind, draw=draw, mode="lesion"
            )
    return conditions.build()


@dataclass
class LayerLesions:
    """One layer's conditions and, per evaluation set, which images each condition gets right."""

    layer: str
    tail_path: str
    conditions: Conditions
    correct: dict[str, np.ndarray]  # set -> [K conditions, N images] bool


def lesion_layer(
    model: nn.Module,
    layer: str,
    sets: list[dict],
    evaluation: EvaluationImages,
    *,
    n_random: int,
    seed: int,
    ablation: str = "zero",
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    model_name: str = MODEL_NAME,
) -> LayerLesions:
    """The layer's tail, the cache of the three sets (computed once), and every condition of the layer's `sets`
    (those of `colour_sets` naming it) scored on every image in one streamed pass. `ablation`: "zero", or "mean"
    (each channel's mean over the unbiased images and positions). The model is moved to `device`, in eval mode,
    frozen."""
    model = model.to(device).eval().requires_grad_(False)
    tail = build_tail(model, layer, model_name)
    cache, means = layer_inputs(model, tail, evaluation, batch_size=batch_size, device=device)
    n = evaluation.n_images
    unbiased = EVAL_SETS.index("unbiased")
    fill = ablation_fill(ablation, means[unbiased * n : (unbiased + 1) * n], "lesions.colour_units.ablation")
    conditions = build_conditions(
        [s for s in sets if s["layer"] == layer], layer, means.shape[1], n_random=n_random, seed=seed
    )
    labels = np.tile(evaluation.labels, len(EVAL_SETS))
    correct, _ = evaluate(tail, cache, conditions.ablate, fill, labels, device=device)
    by_set = {name: correct[:, i * n : (i + 1) * n] for i, name in enumerate(EVAL_SETS)}
    return LayerLesions(layer, tail.path, conditions, by_set)


# ---------------------------------------------------------------------------------------------- the readout


def _value_column(measure: str) -> str:
    return GAP if measure == GAP else f"accuracy_{measure}"


def _intact_row(table: pd.DataFrame) -> int:
    return int(np.flatnonzero(table["family"].to_numpy() == "intact")[0])


def score_conditions(lesions: LayerLesions) -> pd.DataFrame:
    """The conditions table plus, per condition: accuracy_<set> for each evaluation set, gap (biased minus
    conflicting accuracy), change_<set> and change_gap (minus intact's), channels (the set lesioned)."""
    table = lesions.conditions.table.copy()
    intact = _intact_row(table)
    for name in EVAL_SETS:
        table[f"accuracy_{name}"] = lesions.correct[name].mean(axis=1)
    table[GAP] = table["accuracy_biased"] - table["accuracy_conflicting"]
    for measure in MEASURES:
        values = table[_value_column(measure)].to_numpy()
        table[f"change_{measure}"] = values - values[intact]
    table["channels"] = [channels.tolist() for channels in lesions.conditions.sets]
    return table


def paired_change(correct: dict[str, np.ndarray], row: int, intact: int, measure: str) -> np.ndarray:
    """[N] per image (= per digit): the condition's correctness minus intact's on one set; for the gap, that change
    on the biased digit minus the change on the same digit in conflicting colours (their mean is the gap's change)."""
    if measure == GAP:
        return paired_change(correct, row, intact, "biased") - paired_change(correct, row, intact, "conflicting")
    return correct[measure][row].astype(np.float64) - correct[measure][intact]


def compare_sets(scored: pd.DataFrame, lesions: LayerLesions, *, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """One row per (layer, kind, measure: an evaluation set's accuracy or the gap): layer, kind, measure, direction
    (DIRECTIONS), set_size, channels, intact, value, change (value - intact), change_low/high (paired 95% bootstrap
    over images), null_mean/low/high (the distinct random sets' changes: mean, 2.5 and 97.5 percentiles), p_value
    (one-sided empirical p in `direction`), n_images, n_draws, n_distinct (NaN null and p without random sets)."""
    rows = []
    intact = _intact_row(scored)
    random = scored[scored["family"] == "random"]
    for row, chosen in scored[scored["family"] == "set"].iterrows():
        drawn = random[random["kind"] == chosen["kind"]]
        distinct = drawn[~drawn["channels"].map(lambda c: tuple(sorted(c))).duplicated()]
        for measure in MEASURES:
            paired = paired_change(lesions.correct, row, intact, measure)
            rng = derived_rng(seed, f"lesions/colour/bootstrap/{chosen['layer']}/{chosen['kind']}/{measure}")
            interval = bootstrap_interval(paired, rng, resamples=n_bootstrap)
            rows.append(_comparison(chosen, scored.loc[intact], distinct, measure, interval, len(paired), len(drawn)))
    return pd.DataFrame(rows)


def _comparison(chosen, intact, null: pd.DataFrame, measure: str, interval, n_images: int, n_draws: int) -> dict:
    change, null_changes = chosen[f"change_{measure}"], null[f"change_{measure}"].to_numpy(dtype=np.float64)
    empty = len(null_changes) == 0
    return {
        "layer": chosen["layer"],
        "kind": chosen["kind"],
        "measure": measure,
        "direction": DIRECTIONS[measure],
        "set_size": int(chosen["set_size"]),
        "channels": chosen["channels"],
        "intact": float(intact[_value_column(measure)]),
        "value": float(chosen[_value_column(measure)]),
        "change": float(change),
        "change_low": interval[0],
        "change_high": interval[1],
        "null_mean": np.nan if empty else float(null_changes.mean()),
        "null_low": np.nan if empty else float(np.percentile(null_changes, 2.5)),
        "null_high": np.nan if empty else float(np.percentile(null_changes, 97.5)),
        "p_value": np.nan if empty else empirical_p(change, null_changes, DIRECTIONS[measure]),
        "n_images": n_images,
        "n_draws": n_draws,
        "n_distinct": len(null_changes),
    }


def adjust_over_layers(compared: pd.DataFrame) -> pd.DataFrame:
    """`compared` (every layer's `compare_sets` rows) with q_value: each p_value adjusted by Benjamini-Hochberg over
    the layers tested with the same set kind and measure (with one layer, q = p), and n_tested, those layers."""
    q, tested = family_q_values(compared, "p_value", ["kind", "measure"])
    return compared.assign(q_value=q, n_tested=tested)


def shortcut_summary(compared: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, kind) for the headline: set_size, and per measure m (biased, unbiased, conflicting,
    gap) m_intact, m_value, m_change, m_low, m_high, m_null_mean, m_p; plus n_images and n_distinct."""
    rows = []
    for (layer, kind), group in compared.groupby(["layer", "kind"], sort=False):
        by_measure = group.set_index("measure")
        first = group.iloc[0]
        row = {"layer": layer, "kind": kind, "set_size": int(first["set_size"])}
        for measure in MEASURES:
            if measure not in by_measure.index:
                continue
            line = by_measure.loc[measure]
            row.update(
                {
                    f"{measure}_intact": line["intact"],
                    f"{measure}_value": line["value"],
                    f"{measure}_change": line["change"],
                    f"{measure}_low": line["change_low"],
                    f"{measure}_high": line["change_high"],
                    f"{measure}_null_mean": line["null_mean"],
                    f"{measure}_p": line["p_value"],
                }
            )
        row.update({"n_images": int(first["n_images"]), "n_distinct": int(first["n_distinct"])})
        rows.append(row)
    return pd.DataFrame(rows)
