"""One layer dissected over the cached maps and labels (see `caches`): its thresholds, the tally streamed
over the images in batches, the unit table and the layer's summary (with bootstrap intervals over images),
each unit's top activating images, and the arrays the tallies file keeps for the figures. `dissect_network`
does it for any layers of any network (what the dissection stage runs once its model is built)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from unitscope.data.concepts import ConceptDataset
from unitscope.studies.dissection.caches import (
    LabelCache,
    batches,
    cache_activations,
    cache_labels,
    dissection_transform,
)
from unitscope.studies.dissection.dissect import (
    MAX_TALLY_BINS,
    BilinearGrid,
    Tally,
    bootstrap_layer,
    concept_lookup,
    label_units,
    layer_summary,
    mask_cutoffs,
    tally_batch,
    threshold_units,
)
from unitscope.studies.dissection.outputs import BOOTSTRAP_RESAMPLES


def dissect_layer(
    maps: np.ndarray,
    thresholds: np.ndarray,
    labels: LabelCache,
    n_codes: int,
    *,
    batch_size: int = 16,
    saturated: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> Tally:
    """Stream over the images in batches and tally one layer against the labels. `saturated` [K] (bool): the
    units whose mask is `>= T_k` (see `dissect.mask_cutoffs`; None: `> T_k` for every unit). Each batch's maps
    and labels are tallied on `device` (counts come back to the CPU): on CUDA the counts are those of CUDA's own
    bilinear upsampling, which may round a value that ties a threshold differently from the CPU's."""
    grid = BilinearGrid.build(tuple(maps.shape[2:]), labels.shape).to(device)
    n_images, n_units = maps.shape[:2]
    total = Tally.zeros(n_units, n_codes, labels.annotated.shape[1])
    cutoffs = np.array(mask_cutoffs(thresholds, saturated), dtype=np.float32)  # a copy
    thresholds_t = torch.from_numpy(cutoffs).to(device)
    bins = len(labels.combo_counts) if labels.combo_counts is not None else 0
    combined = 0 < bins and batch_size * n_units * bins <= MAX_TALLY_BINS
    for start, stop in batches(n_images, batch_size):
        batch = torch.from_numpy(np.array(maps[start:stop], dtype=np.float32)).to(device)
        batch_labels = labels.batch(start, stop, combined=combined).to(device)
        total.add(tally_batch(batch, thresholds_t, batch_labels, n_codes, grid))
    return total


def top_images(maps: np.ndarray, k: int, *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: the k images with the largest maximum activation [K, k], and those maxima."""
    n_images, n_units = maps.shape[:2]
    peak = np.concatenate(
        [np.asarray(maps[s:e]).reshape(e - s, n_units, -1).max(axis=2) for s, e in batches(n_images, batch_size)]
    )
    order = np.argsort(-peak, axis=0, kind="stable")[: min(k, n_images)].T
    return order, np.take_along_axis(peak.T, order, axis=1)


def unit_table(
    tally: Tally,
    lookup: tuple[np.ndarray, np.ndarray],
    categories: list[str],
    iou_threshold: float,
    thresholds: np.ndarray | None = None,
    saturated: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per unit: its labels (`label_units`), its threshold when given, whether that threshold is saturated
    (`saturated_threshold`: its mask is `>= T_k`) when given, and its mask pixels.
    `lookup`: (code -> category index, code -> name), from `concept_lookup`."""
    code_category, code_name = lookup
    units = label_units(tally.iou(code_category), code_category, code_name, categories, iou_threshold)
    if thresholds is not None:
        units["threshold"] = thresholds
    if saturated is not None:
        units["saturated_threshold"] = np.asarray(saturated, dtype=bool)
    units["mask_pixels"] = tally.unit_pixels
    return units


def summarise_layer(
    tally: Tally,
    concepts: ConceptDataset,
    thresholds: np.ndarray,
    iou_threshold: float,
    *,
    seed: int,
    saturated: np.ndarray | None = None,
) -> tuple[pd.DataFrame, dict]:
    """The unit table and the layer's summary (with bootstrap intervals when per-image counts exist)."""
    lookup = concept_lookup(concepts)
    units = unit_table(tally, lookup, concepts.categories, iou_threshold, thresholds, saturated)
    summary = layer_summary(units, concepts.categories, iou_threshold)
    summary["images"] = tally.images
    if tally.per_image is not None:
        intervals = bootstrap_layer(
            tally.per_image,
            lookup[0],
            concepts.categories,
            iou_threshold,
            resamples=BOOTSTRAP_RESAMPLES,
            seed=seed,
        )
        for name, (low, high) in intervals.items():
            summary[f"{name}_ci_low"], summary[f"{name}_ci_high"] = low, high
    return units, summary


@dataclass
class LayerDissection:
    """One layer's results: its rows of units.parquet, its row of layers.parquet, its arrays of tallies.npz."""

    units: pd.DataFrame
    row: dict
    arrays: dict[str, np.ndarray]


def dissect_cached_layer(
    maps: np.ndarray,
    labels: LabelCache,
    concepts: ConceptDataset,
    *,
    model_name: str,
    layer: str,
    depth: int,
    quantile: float,
    iou_threshold: float,
    top_k: int,
    seed: int,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> LayerDissection:
    """Thresholds, tally (on `device`), unit table and summary of one layer, and each unit's top-`top_k` images
    with their maps (for the figures)."""
    rule = threshold_units(maps, quantile)
    thresholds = rule.values
    tally = dissect_layer(
        maps, thresholds, labels, concepts.n_codes, batch_size=batch_size, saturated=rule.saturated, device=device
    )
    units, summary = summarise_layer(tally, concepts, thresholds, iou_threshold, seed=seed, saturated=rule.saturated)
    units.insert(0, "model", model_name)
    units.insert(1, "layer", layer)
    units.insert(2, "depth", depth)
    row = {"model": model_name, "layer": layer, "depth": depth, "map_shape": list(maps.shape[2:]), **summary}
    order, peaks = top_images(maps, top_k)
    arrays = {
        f"{layer}/intersection": tally.intersection,
        f"{layer}/unit_area": tally.unit_area,
        f"{layer}/label_area": tally.label_area,
        f"{layer}/thresholds": thresholds,
        f"{layer}/saturated": rule.saturated,
        f"{layer}/top_images": order,
        f"{layer}/top_peaks": peaks,
        f"{layer}/top_maps": maps[order, np.arange(order.shape[0])[:, None]],
    }
    print(
        f"{model_name} {layer}: {summary['detectors']}/{summary['units']} detectors, "
        f"{summary['unique_best']} unique concepts (best label), {summary['unique_per_category']} "
        f"(per-category sum), mean best IoU {summary['mean_best_iou']:.4f}; {summary['saturated_units']} units with "
        f"their threshold at their maximum activation (mask >= T), {summary['saturated_detectors']} of them detectors",
        flush=True,
    )
    return LayerDissection(units, row, arrays)


def dissect_network(
    network: torch.nn.Module,
    concepts: ConceptDataset,
    layers: Sequence[str],
    preprocessing: Mapping,
    *,
    model_name: str,
    shape: tuple[int, int],
    quantile: float,
    iou_threshold: float,
    top_k: int,
    seed: int,
    folder: Path,
    batch_size: int = 16,
) -> list[LayerDissection]:
    """Every one of `layers` (module paths of `network`, in order of depth) against the concepts, with masks of
    `shape`: one forward pass (images read as `preprocessing` says, see `caches`), maps and labels cached in
    memmaps under `folder` (which the caller removes); the tallies run on the network's device."""
    transform = dissection_transform(preprocessing, model_name)
    caches = cache_activations(
        network, concepts, list(layers), transform, Path(folder), model_name=model_name, batch_size=batch_size
    )
    labels = cache_labels(concepts, shape, Path(folder))
    return [
        dissect_cached_layer(
            caches[layer],
            labels,
            concepts,
            model_name=model_name,
            layer=layer,
            depth=depth,
            quantile=quantile,
            iou_threshold=iou_threshold,
            top_k=top_k,
            seed=seed,
            batch_size=batch_size,
            device=next(network.parameters(), torch.empty(0)).device,
        )
        for depth, layer in enumerate(layers)
    ]


def concept_arrays(concepts: ConceptDataset, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The tallies file's description of the images and concepts (shared by all its layers)."""
    return {
        "image_ids": np.asarray(concepts.image_ids),
        "concept_codes": concepts.concepts["code"].to_numpy(),
        "concept_names": concepts.concepts["name"].to_numpy().astype(str),
        "concept_categories": concepts.concepts["category"].to_numpy().astype(str),
        "categories": np.asarray(concepts.categories),
        "mask_shape": np.asarray(shape),
    }
