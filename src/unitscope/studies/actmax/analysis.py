"""What the actmax images and the units' responses to data say: unit choice, colour vs shape, polysemanticity.

- `select_units`: per layer, the channels whose spatial-mean activation varies most over the evaluation images
  (plus any requested by index), three spatial neurons per channel (highest mean activation, kept apart), and
  a target class for the class-conditional objective.
- Colour vs shape, two ways. From synthesised images (`image_color_shape`): colour concentration (saturation
  times the concentration of hue) against stroke structure (edge energy of the brightness). From data
  (`color_shape_probe`): each channel's activation change when only the colour of a digit changes against
  when only the digit changes (colour fixed), in a fully crossed design of digits x colours.
- Polysemanticity (`seed_similarities`, `polysemanticity`): the seed images of one unit compared pairwise in
  pixel space, in colour (hue histogram) and in the unit's own layer; each pair is ranked against pairs of
  images of different units, and a unit is flagged when its seeds give unrelated patterns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from unitscope.hooks import hooked, spatial_mean
from unitscope.stats import bootstrap_interval, wilson_interval
from unitscope.studies.actmax.colored_mnist import NUM_CLASSES, colorize
from unitscope.studies.actmax.render import frozen

__all__ = [
    "color_shape_probe",
    "color_shape_table",
    "hue_histograms",
    "image_color_shape",
    "layer_activations",
    "pairwise_similarity",
    "polysemanticity",
    "rgb_to_hsv",
    "seed_similarities",
    "select_units",
]

# ----------------------------------------------------------------------------------------------
# forward passes


@torch.no_grad()
def layer_activations(
    model: nn.Module, images: torch.Tensor, layers: Sequence[str], *, batch_size: int = 500, reduce=None
) -> dict[str, torch.Tensor]:
    """{layer: outputs of all images} (or `reduce(output)` per batch, e.g. spatial_mean), in one pass per batch."""
    collected: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}

    def keep(layer):
        def hook(_module, _inputs, output):
            collected[layer].append((reduce(output) if reduce else output).detach().float().clone())

        return hook

    with frozen(model), hooked(model, {layer: keep(layer) for layer in layers}):
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    return {layer: torch.cat(values) for layer, values in collected.items()}


# ----------------------------------------------------------------------------------------------
# unit selection


def _spread_positions(score_map: torch.Tensor, count: int, min_distance: int) -> list[tuple[int, int]]:
    """Greedy: the highest positions of `score_map` at least `min_distance` apart (Chebyshev); relaxed if needed."""
    height, width = score_map.shape
    order = torch.argsort(score_map.flatten(), descending=True).tolist()
    for distance in range(min_distance, -1, -1):
        chosen: list[tuple[int, int]] = []
        for flat in order:
            y, x = divmod(flat, width)
            if all(max(abs(y - cy), abs(x - cx)) >= max(distance, 1) for cy, cx in chosen):
                chosen.append((y, x))
            if len(chosen) == count:
                return chosen
    return chosen


@torch.no_grad()
def _activation_moments(model: nn.Module, images: torch.Tensor, layers: Sequence[str], batch_size: int = 500):
    """Per layer, streamed over batches: variance over images of each channel's spatial mean [C] and of each
    position's value [C, H, W] (float64 sums, so no [N, C, H, W] array is kept)."""
    sums: dict[str, list] = {}

    def keep(layer):
        def hook(_module, _inputs, output):
            if output.dim() != 4:
                raise ValueError(f"actmax.units.layers: layer {layer!r} outputs {list(output.shape)}, not a conv map")
            maps = output.detach().double()
            means = maps.mean(dim=(2, 3))
            update = [means.sum(0), means.pow(2).sum(0), maps.sum(0), maps.pow(2).sum(0)]
            if layer not in sums:
                sums[layer] = update
            else:
                sums[layer] = [a + b for a, b in zip(sums[layer], update, strict=True)]

        return hook

    with frozen(model), hooked(model, {layer: keep(layer) for layer in layers}):
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    n = len(images)
    moments = {}
    for layer, (s1, s2, m1, m2) in sums.items():
        channel_variance = (s2 - s1 * s1 / n) / max(n - 1, 1)
        position_variance = (m2 - m1 * m1 / n) / max(n - 1, 1)
        moments[layer] = (channel_variance.float(), position_variance.float())
    return moments


def select_units(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[str],
    *,
    channels_per_layer: int = 5,
    extra_channels: Mapping[str, Sequence[int]] | None = None,
    neurons_per_channel: int = 3,
    target_images: torch.Tensor | None = None,
    target_labels: torch.Tensor | None = None,
) -> dict:
    """The units to visualise, per layer, with the numbers behind each choice.

    Channels: the `channels_per_layer` highest variances of the spatial-mean activation over `images`, then
    `extra_channels[layer]`. Neurons: by the same rule, the positions where the channel's value varies most over
    `images`, at least map_size / 7 apart (4 px on 28x28, 2 on 14x14, 1 on 7x7). Target class (objective D):
    the label whose `target_images` give the channel's highest mean activation.
    """
    extra_channels = dict(extra_channels or {})
    moments = _activation_moments(model, images, layers)
    if target_images is not None:
        target_means = layer_activations(model, target_images, layers, reduce=spatial_mean)
    selection = {}
    for layer in layers:
        variance, variance_maps = moments[layer]
        n_channels, height, width = variance_maps.shape
        ranked = torch.argsort(variance, descending=True).tolist()
        channels = ranked[: min(channels_per_layer, n_channels)]
        for channel in extra_channels.get(layer, []):
            if not 0 <= int(channel) < n_channels:
                raise ValueError(f"actmax.units.extra_channels.{layer}: channel {channel} outside 0..{n_channels - 1}")
            if int(channel) not in channels:
                channels.append(int(channel))
        min_distance = max(1, math.ceil(height / 7))
        units = []
        for channel in channels:
            positions = _spread_positions(variance_maps[channel], neurons_per_channel, min_distance)
            target = None
            if target_images is not None:
                per_class = torch.stack(
                    [target_means[layer][target_labels == k, channel].mean() for k in range(NUM_CLASSES)]
                )
                target = int(per_class.argmax())
            units.append(
                {
                    "channel": int(channel),
                    "variance": float(variance[channel]),
                    "variance_rank": ranked.index(channel) + 1,
                    "requested": channel in extra_channels.get(layer, []),
                    "neurons": [[int(y), int(x)] for y, x in positions],
                    "target_class": target,
                }
            )
        selection[layer] = {
            "n_channels": int(n_channels),
            "map_size": [int(height), int(width)],
            "neuron_min_distance": min_distance,
            "n_images": int(len(images)),
            "units": units,
        }
    return selection


# ----------------------------------------------------------------------------------------------
# colour and shape in images


def rgb_to_hsv(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, 3, H, W] in [0, 1] -> hue (radians, 0..2pi), saturation, value, each [B, H, W]."""
    r, g, b = images[:, 0], images[:, 1], images[:, 2]
    value, _ = images.max(dim=1)
    minimum, _ = images.min(dim=1)
    delta = value - minimum
    saturation = torch.where(value > 0, delta / value.clamp(min=1e-8), torch.zeros_like(value))
    safe = delta.clamp(min=1e-8)
    hue = torch.where(
        value == r,
        ((g - b) / safe) % 6,
        torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue)) * (math.pi / 3)
    return hue, saturation, value


def hue_histograms(images: torch.Tensor, bins: int = 12) -> torch.Tensor:
    """[B, bins + 1]: hue histogram weighted by saturation x value, plus one achromatic bin weighted by
    (1 - saturation) x value; rows sum to 1 (an all-black image is all achromatic)."""
    hue, saturation, value = rgb_to_hsv(images)
    index = (hue / (2 * math.pi) * bins).long().clamp(0, bins - 1).flatten(1)
    chroma = (saturation * value).flatten(1)
    histogram = torch.zeros(len(images), bins + 1)
    histogram[:, :bins].scatter_add_(1, index, chroma)
    histogram[:, bins] = ((1 - saturation) * value).flatten(1).sum(dim=1)
    total = histogram.sum(dim=1, keepdim=True)
    histogram[total[:, 0] == 0, bins] = 1.0
    return histogram / histogram.sum(dim=1, keepdim=True)


def image_color_shape(images: torch.Tensor) -> pd.DataFrame:
    """Per image: colour concentration versus stroke structure.

    saturation: value-weighted mean saturation; hue_concentration: resultant length of the hue angles
    weighted by saturation x value (1 = one hue); color_concentration: their product; edge_energy: mean
    Sobel gradient magnitude of the value (brightness) channel, i.e. strokes on a dark background;
    color_edge_energy: the same over the R, G, B gradients together (also counts edges between equally bright
    hues, e.g. yellow on green, which brightness misses); dark_fraction: pixels with value < 0.25.
    """
    images = images.float()
    hue, saturation, value = rgb_to_hsv(images)
    flat_value = value.flatten(1)
    saturation_mean = (saturation.flatten(1) * flat_value).sum(1) / flat_value.sum(1).clamp(min=1e-8)
    weight = (saturation * value).flatten(1)
    resultant = torch.sqrt(
        (weight * torch.cos(hue.flatten(1))).sum(1) ** 2 + (weight * torch.sin(hue.flatten(1))).sum(1) ** 2
    )
    concentration = resultant / weight.sum(1).clamp(min=1e-8)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4
    kernels = torch.stack([sobel, sobel.T])[:, None]
    gradients = nn.functional.conv2d(value[:, None], kernels)
    edge_energy = gradients.pow(2).sum(dim=1).sqrt().flatten(1).mean(1)
    color_gradients = nn.functional.conv2d(images.flatten(0, 1)[:, None], kernels).view(len(images), 3, 2, -1)
    color_edge_energy = color_gradients.pow(2).sum(dim=(1, 2)).sqrt().mean(1)
    mean_hue = torch.atan2((weight * torch.sin(hue.flatten(1))).sum(1), (weight * torch.cos(hue.flatten(1))).sum(1))
    return pd.DataFrame(
        {
            "saturation": saturation_mean.numpy(),
            "hue_concentration": concentration.numpy(),
            "color_concentration": (saturation_mean * concentration).numpy(),
            "mean_hue_deg": (torch.rad2deg(mean_hue) % 360).numpy(),
            "edge_energy": edge_energy.numpy(),
            "color_edge_energy": color_edge_energy.numpy(),
            "dark_fraction": (flat_value < 0.25).float().mean(1).numpy(),
            "brightness": flat_value.mean(1).numpy(),
        }
    )


# ----------------------------------------------------------------------------------------------
# colour and shape in data


def _mean_pairwise_abs(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean |a_i - a_j| over pairs i != j along `dim` (that dim removed)."""
    values = values.movedim(dim, -1)
    n = values.shape[-1]
    differences = (values[..., :, None] - values[..., None, :]).abs().sum(dim=(-1, -2))
    return differences / (n * (n - 1))


def color_shape_probe(
    model: nn.Module,
    digits: np.ndarray,
    labels: np.ndarray,
    layers: Sequence[str],
    *,
    groups: int = 50,
    seed: int = 0,
    target: str = "stroke",
    neurons: Mapping[str, Sequence[tuple[int, int, int]]] | None = None,
) -> pd.DataFrame:
    """Per channel (spatial mean) and per listed neuron (channel, y, x): activation change under a colour swap
    (digit fixed) and under a digit swap (colour fixed).

    `groups` sets of ten evaluation digits (one per class, drawn with `seed`) are each drawn in all ten
    colours: A[g, digit, colour]. color_change = mean |A[g, d, c] - A[g, d, c']| over c != c';
    shape_change = mean |A[g, d, c] - A[g, d', c]| over d != d'; color_index = color / (color + shape).
    """
    rng = np.random.default_rng([seed, 4, 2])
    chosen = np.stack(
        [rng.choice(np.flatnonzero(labels == k), size=groups, replace=False) for k in range(NUM_CLASSES)], axis=1
    )  # [G, 10]
    picked = digits[chosen.reshape(-1)]  # [G*10, 28, 28]
    repeated = np.repeat(picked, NUM_CLASSES, axis=0)  # [G*10*10]: colour varies fastest
    colors = np.tile(np.arange(NUM_CLASSES), len(picked))
    images = torch.from_numpy(colorize(repeated, colors, target=target)).float().div_(255.0)
    outputs = layer_activations(model, images, layers)
    rows = []
    for layer in layers:
        output = outputs[layer]
        units = [("channel", c, -1, -1, output[:, c].mean(dim=(1, 2))) for c in range(output.shape[1])]
        for channel, y, x in (neurons or {}).get(layer, []):
            units.append(("neuron", channel, y, x, output[:, channel, y, x]))
        values = torch.stack([u[4] for u in units], dim=1).view(groups, NUM_CLASSES, NUM_CLASSES, len(units))
        color_change = _mean_pairwise_abs(values, dim=2).mean(dim=(0, 1))
        shape_change = _mean_pairwise_abs(values, dim=1).mean(dim=(0, 1))
        spread = values.flatten(0, 2).std(dim=0)
        for i, (kind, channel, y, x, _) in enumerate(units):
            total = float(color_change[i] + shape_change[i])
            rows.append(
                {
                    "layer": layer,
                    "kind": kind,
                    "channel": int(channel),
                    "y": int(y),
                    "x": int(x),
                    "color_change": float(color_change[i]),
                    "shape_change": float(shape_change[i]),
                    "color_index": float(color_change[i]) / total if total > 0 else float("nan"),
                    "activation_std": float(spread[i]),
                    "n_images": int(values.shape[0] * values.shape[1] * values.shape[2]),
                }
            )
    return pd.DataFrame(rows)


def color_shape_table(probe: pd.DataFrame, image_metrics: pd.DataFrame | None = None, *, seed: int = 0) -> pd.DataFrame:
    """Per layer: the data-based colour index of its channels (median with bootstrap 95% CI, share of channels
    whose colour change exceeds their digit change with a Wilson CI), and, given image metrics of synthesised
    images, their median colour concentration and edge energy."""
    rng = np.random.default_rng([seed, 4, 3])
    rows = []
    channels = probe[probe["kind"] == "channel"]
    for layer, group in channels.groupby("layer", sort=False):
        index = group["color_index"].dropna().to_numpy()
        color_dominated = int((index > 0.5).sum())
        row = {
            "layer": layer,
            "n_channels": int(len(group)),
            "n_responsive": int(len(index)),
            "median_color_index": float(np.median(index)) if len(index) else float("nan"),
            "median_color_index_ci95": list(bootstrap_interval(index, rng, statistic=np.median))
            if len(index) >= 2
            else [float("nan"), float("nan")],
            "color_dominated": color_dominated,
            "color_dominated_fraction": color_dominated / len(index) if len(index) else float("nan"),
            "color_dominated_ci95": list(wilson_interval(color_dominated, len(index))),
        }
        if image_metrics is not None:
            metrics = image_metrics[image_metrics["layer"] == layer]
            row.update(
                {
                    "n_images": int(len(metrics)),
                    "median_color_concentration": float(metrics["color_concentration"].median()),
                    "median_edge_energy": float(metrics["edge_energy"].median()),
                    "median_color_edge_energy": float(metrics["color_edge_energy"].median()),
                    "median_dark_fraction": float(metrics["dark_fraction"].median()),
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# polysemanticity


def pairwise_similarity(features: torch.Tensor, kind: str) -> torch.Tensor:
    """[N, D] -> [N, N]: `rms` (1 - root-mean-square difference, for values in [0, 1]), `pearson` (correlation
    of the centred vectors), `cosine`, or `intersection` (histogram intersection of rows that sum to 1)."""
    features = features.double()
    if kind == "intersection":
        return torch.minimum(features[:, None, :], features[None, :, :]).sum(-1)
    if kind == "rms":
        squared = features.pow(2).sum(1)
        distance = (squared[:, None] + squared[None, :] - 2 * features @ features.T).clamp(min=0) / features.shape[1]
        return 1 - distance.sqrt()
    if kind == "pearson":
        features = features - features.mean(dim=1, keepdim=True)
    elif kind != "cosine":
        raise ValueError(f"similarity kind {kind!r} is not rms, pearson, cosine or intersection")
    norms = features.norm(dim=1, keepdim=True).clamp(min=1e-12)
    unit = features / norms
    return unit @ unit.T


SPACES = ("pixel", "color", "activation")


def seed_similarities(images: torch.Tensor, activations: torch.Tensor, hue_bins: int = 12) -> dict[str, torch.Tensor]:
    """Similarity matrices of images [N, 3, H, W] in the three spaces: pixel (1 - RMS difference: two flat fields
    of one colour are alike, which a correlation would miss), colour (hue-histogram intersection), activation
    (cosine of the rectified layer output [N, ...] the images produce)."""
    return {
        "pixel": pairwise_similarity(images.flatten(1), "rms"),
        "color": pairwise_similarity(hue_histograms(images, hue_bins), "intersection"),
        "activation": pairwise_similarity(activations.flatten(1).clamp(min=0), "cosine"),
    }


def polysemanticity(
    table: pd.DataFrame,
    similarities: Mapping[str, torch.Tensor],
    *,
    group_columns: Sequence[str],
    unit_columns: Sequence[str] = ("layer", "channel", "y", "x"),
    flag_fraction: float = 0.4,
    converged_fraction: float = 0.5,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score each unit-run (rows of `table` sharing `group_columns`, one row per seed) from the similarity
    matrices over all rows (same order as `table`).

    Each seed pair's similarity is ranked, per space, among the similarities of pairs of images of different
    units (differing in `unit_columns`: another channel or neuron, not merely another init) in the same layer
    and objective (the 'unrelated' reference); a pair whose mean rank over the three
    spaces falls below the median of that reference is 'unrelated'. score = share of unrelated seed pairs.
    A unit is flagged polysemantic when score >= flag_fraction (0.4 = 4 of 10 pairs for 5 seeds: as many as
    when one seed's image is unrelated to all the others) and every seed reached at least `converged_fraction`
    of the best seed's final activation (so a run that failed to climb is not read as a second meaning).
    Returns (per-unit table, per-pair table).
    """
    table = table.reset_index(drop=True)
    keys = table[list(group_columns)].astype(str).agg("|".join, axis=1).to_numpy()
    identity_columns = [column for column in unit_columns if column in table.columns]
    identities = table[identity_columns].astype(str).agg("|".join, axis=1).to_numpy()
    context = (table["layer"].astype(str) + "|" + table["objective"].astype(str)).to_numpy()
    n = len(table)
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    same_unit = keys[:, None] == keys[None, :]
    same_identity = identities[:, None] == identities[None, :]
    same_context = context[:, None] == context[None, :]
    matrices = {space: similarities[space].numpy() for space in SPACES}
    pair_rows = []
    for ctx in np.unique(context):
        in_ctx = context == ctx
        reference_mask = upper & same_context & ~same_identity & in_ctx[:, None]
        within_mask = upper & same_unit & in_ctx[:, None]
        references = {space: np.sort(matrices[space][reference_mask]) for space in SPACES}
        for i, j in zip(*np.nonzero(within_mask), strict=True):
            row = {"key": keys[i], "i": int(i), "j": int(j), "seed_i": int(table.at[i, "seed"])}
            row["seed_j"] = int(table.at[j, "seed"])
            ranks = []
            for space in SPACES:
                value = matrices[space][i, j]
                row[f"{space}_similarity"] = float(value)
                reference = references[space]
                if len(reference):  # mid-rank: ties count half, so a value shared by many references sits mid-way
                    below = np.searchsorted(reference, value, side="left")
                    rank = (below + 0.5 * (np.searchsorted(reference, value, side="right") - below)) / len(reference)
                else:
                    rank = np.nan
                row[f"{space}_rank"] = float(rank)
                ranks.append(rank)
            row["mean_rank"] = float(np.mean(ranks))
            row["unrelated"] = bool(row["mean_rank"] < 0.5)
            row["n_reference_pairs"] = int(len(references["pixel"]))
            pair_rows.append(row)
    pairs = pd.DataFrame(pair_rows)
    unit_rows = []
    for key, group in table.groupby(keys, sort=False):
        first = group.iloc[0]
        unit_pairs = pairs[pairs["key"] == key] if len(pairs) else pairs
        activation = group["final_activation"].to_numpy()
        best = float(activation.max())
        converged = bool(best > 0 and (activation >= converged_fraction * best).all())
        row = {column: first[column] for column in group_columns}
        score = float(unit_pairs["unrelated"].mean()) if len(unit_pairs) else float("nan")
        row.update(
            {
                "key": key,
                "n_seeds": int(len(group)),
                "n_pairs": int(len(unit_pairs)),
                "score": score,
                "unrelated_pairs": int(unit_pairs["unrelated"].sum()) if len(unit_pairs) else 0,
                **{
                    f"{space}_similarity": float(unit_pairs[f"{space}_similarity"].mean())
                    if len(unit_pairs)
                    else np.nan
                    for space in SPACES
                },
                "min_final_activation": float(activation.min()),
                "max_final_activation": best,
                "converged": converged,
                "flagged": bool(converged and len(unit_pairs) and score >= flag_fraction),
                "rows": [int(i) for i in group.index],
            }
        )
        unit_rows.append(row)
    return pd.DataFrame(unit_rows), pairs
