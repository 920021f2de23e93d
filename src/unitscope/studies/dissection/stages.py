"""The dissection stages: activations and labels streamed to disk caches, then tallied per layer.

`run_dissection` (one model, all its configured layers) and `run_rotation` (one layer, rotated units)
are what the workflow scripts call. Both make one forward pass over the concept images for all
their layers (hooks via `ActivationRecorder`), keep the float32 maps and the labels at mask
resolution in memmaps in a temporary folder beside their outputs (memory stays bounded by a batch
of images), and remove the folder when done, also on failure.

Input geometry (a choice, stated): each image is resized so that its shorter side equals the
model's `preprocessing.resize` (the scale at which the model sees objects) and is not cropped, so
the feature map covers the whole frame and is upsampled onto the whole label image.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision import transforms
from tqdm import tqdm

from unitscope.data.concepts import ConceptDataset, mask_shape, open_concepts
from unitscope.fsutil import atomic_path
from unitscope.hooks import ActivationRecorder
from unitscope.models.registry import build_model, resolve_layer
from unitscope.studies.dissection.dissect import (
    MAX_COMBINATIONS,
    MAX_TALLY_BINS,
    BilinearGrid,
    DissectionError,
    FractionalRotation,
    LabelBatch,
    Tally,
    bootstrap_layer,
    concept_lookup,
    label_units,
    layer_summary,
    random_rotation,
    rotate_maps,
    tally_batch,
    unit_thresholds,
)

BOOTSTRAP_RESAMPLES = 200


def dissection_transform(preprocessing: dict):
    """Shorter side to `preprocessing.resize` (bilinear, antialiased), no crop, then normalise."""
    return transforms.Compose(
        [
            transforms.Resize(int(preprocessing["resize"]), antialias=True),
            transforms.ToTensor(),
            transforms.Normalize([float(m) for m in preprocessing["mean"]], [float(s) for s in preprocessing["std"]]),
        ]
    )


def _batches(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, batch_size):
        yield start, min(n, start + batch_size)


# ------------------------------------------------------------------------------------------------
# caches


def cache_activations(
    model: torch.nn.Module,
    concepts: ConceptDataset,
    layers: list[str],
    transform,
    folder: Path,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, np.memmap]:
    """One forward pass over the concept images for all `layers`; maps go to float32 memmaps
    [N, K, h, w] under `folder`."""
    caches: dict[str, np.memmap] = {}
    n = len(concepts)
    bar = tqdm(total=n, desc="activations", unit="img", disable=not progress, mininterval=2)
    with (
        ActivationRecorder(model, layers, keep_maps=True, maps_dtype=torch.float32, stop_early=True) as rec,
        torch.inference_mode(),
    ):
        for start, stop in _batches(n, batch_size):
            images = [transform(concepts.image(i)) for i in range(start, stop)]
            shapes = {tuple(x.shape) for x in images}
            if len(shapes) != 1:
                raise DissectionError(
                    f"{concepts.name}: images {start}..{stop - 1} differ in size after preprocessing "
                    f"({sorted(shapes)}); dissection needs one image size"
                )
            rec(torch.stack(images))
            for layer in layers:
                maps = rec.maps[layer]
                if maps.dim() != 4:
                    raise DissectionError(f"layer {layer!r}: output shape {list(maps.shape)} is not [N, C, H, W]")
                if layer not in caches:
                    caches[layer] = np.lib.format.open_memmap(
                        folder / f"{layer}.npy", mode="w+", dtype=np.float32, shape=(n, *maps.shape[1:])
                    )
                if tuple(maps.shape[1:]) != caches[layer].shape[1:]:
                    raise DissectionError(f"layer {layer!r}: map shape changed between images")
                if not torch.isfinite(maps).all():
                    raise DissectionError(f"layer {layer!r}: NaN or infinite activations on images {start}..{stop - 1}")
                caches[layer][start:stop] = maps.numpy()
            bar.update(stop - start)
    bar.close()
    return caches


@dataclass
class LabelCache:
    """All annotations of a concept dataset at mask resolution, in memmaps (read once per stage)."""

    pixels: np.memmap  # uint16/int32 [N, L, P]
    scalars: np.ndarray  # int64 [N, S]
    annotated: np.ndarray  # bool [N, n_categories]
    shape: tuple[int, int]
    combined: np.memmap | None = None  # int32 [N, P]: each pixel's code combination (see LabelBatch)
    combo_counts: np.ndarray | None = None  # [n_combos, n_codes]

    def batch(self, start: int, stop: int, *, combined: bool = True) -> LabelBatch:
        use = combined and self.combined is not None
        return LabelBatch(
            torch.from_numpy(np.asarray(self.pixels[start:stop], dtype=np.int32)),
            torch.from_numpy(self.scalars[start:stop]),
            torch.from_numpy(self.annotated[start:stop]),
            self.shape,
            torch.from_numpy(np.asarray(self.combined[start:stop])) if use else None,
            torch.from_numpy(self.combo_counts) if use else None,
        )


def cache_labels(
    concepts: ConceptDataset, shape: tuple[int, int], folder: Path, *, progress: bool = True
) -> LabelCache:
    """Read every annotation once, at mask resolution, into a memmap [N, L, H * W] under `folder`."""
    n = len(concepts)
    dtype = np.uint16 if concepts.n_codes <= np.iinfo(np.uint16).max else np.int32
    n_layers = max(1, concepts.max_layers)
    pixels = np.lib.format.open_memmap(
        folder / "labels.npy", mode="w+", dtype=dtype, shape=(n, n_layers, math.prod(shape))
    )
    scalar_rows, annotated = [], np.zeros((n, len(concepts.categories)), dtype=bool)
    for i in tqdm(range(n), desc="labels", unit="img", disable=not progress, mininterval=2):
        a = concepts.annotation(i, shape)
        if a.pixels.shape[0] > n_layers:
            raise DissectionError(f"{concepts.name}: image {i} has {a.pixels.shape[0]} label layers, > {n_layers}")
        pixels[i, : a.pixels.shape[0]] = a.pixels.reshape(a.pixels.shape[0], math.prod(shape))
        scalar_rows.append(a.scalars)
        annotated[i] = [c in a.categories for c in concepts.categories]
    scalars = np.zeros((n, max([len(r) for r in scalar_rows] + [1])), dtype=np.int64)
    for i, row in enumerate(scalar_rows):
        scalars[i, : len(row)] = row
    combined, combo_counts = combine_layers(pixels, concepts.n_codes, folder / "combined.npy")
    return LabelCache(pixels, scalars, annotated, tuple(shape), combined, combo_counts)


def combine_layers(pixels: np.ndarray, n_codes: int, path: Path, *, block: int = 32):
    """Each pixel's tuple of codes over the label layers as one id, when there are few distinct tuples.

    Returns (ids memmap [N, P] int32 at `path`, counts [n_combos, n_codes]: how often each code occurs
    in each tuple), or (None, None) for a single layer or too many tuples.
    """
    n, n_layers = pixels.shape[:2]
    if n_layers < 2 or n_layers * math.log2(max(n_codes, 2)) > 62:
        return None, None
    radix = (n_codes ** np.arange(n_layers, dtype=np.int64))[None, :, None]
    distinct = np.zeros(0, dtype=np.int64)
    for start, stop in _batches(n, block):
        keys = (np.asarray(pixels[start:stop], dtype=np.int64) * radix).sum(axis=1)
        distinct = np.union1d(distinct, np.unique(keys))
        if len(distinct) > MAX_COMBINATIONS:
            return None, None
    combined = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(n, pixels.shape[2]))
    for start, stop in _batches(n, block):
        keys = (np.asarray(pixels[start:stop], dtype=np.int64) * radix).sum(axis=1)
        combined[start:stop] = np.searchsorted(distinct, keys)
    codes = (distinct[:, None] // radix[0, :, 0][None, :]) % n_codes  # [n_combos, L]
    counts = np.zeros((len(distinct), n_codes), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(distinct)), n_layers), codes.reshape(-1)), 1)
    return combined, counts


def rotated_cache(maps: np.ndarray, rotation: np.ndarray, path: Path, *, batch_size: int = 32) -> np.memmap:
    """The maps with their unit axis multiplied by `rotation`, as a float32 memmap at `path`."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=maps.shape)
    rotation_t = torch.from_numpy(np.asarray(rotation, dtype=np.float32))
    for start, stop in _batches(maps.shape[0], batch_size):
        out[start:stop] = rotate_maps(torch.from_numpy(np.array(maps[start:stop])), rotation_t).numpy()
    return out


# ------------------------------------------------------------------------------------------------
# one layer


def dissect_layer(
    maps: np.ndarray, thresholds: np.ndarray, labels: LabelCache, n_codes: int, *, batch_size: int = 16
) -> Tally:
    """Stream over the images in batches and tally one layer against the labels."""
    grid = BilinearGrid.build(tuple(maps.shape[2:]), labels.shape)
    n_images, n_units = maps.shape[:2]
    total = Tally.zeros(n_units, n_codes, labels.annotated.shape[1])
    thresholds_t = torch.from_numpy(np.asarray(thresholds, dtype=np.float32))
    bins = len(labels.combo_counts) if labels.combo_counts is not None else 0
    combined = 0 < bins and batch_size * n_units * bins <= MAX_TALLY_BINS
    for start, stop in _batches(n_images, batch_size):
        batch = torch.from_numpy(np.array(maps[start:stop], dtype=np.float32))
        total.add(tally_batch(batch, thresholds_t, labels.batch(start, stop, combined=combined), n_codes, grid))
    return total


def top_images(maps: np.ndarray, k: int, *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: the k images with the largest maximum activation [K, k], and those maxima."""
    n_images, n_units = maps.shape[:2]
    peak = np.concatenate(
        [np.asarray(maps[s:e]).reshape(e - s, n_units, -1).max(axis=2) for s, e in _batches(n_images, batch_size)]
    )
    order = np.argsort(-peak, axis=0, kind="stable")[: min(k, n_images)].T
    return order, np.take_along_axis(peak.T, order, axis=1)


def summarise_layer(
    tally: Tally, concepts: ConceptDataset, thresholds: np.ndarray, iou_threshold: float, *, seed: int
) -> tuple[pd.DataFrame, dict]:
    """The unit table and the layer's summary (with bootstrap intervals when per-image counts exist)."""
    code_category, code_name = concept_lookup(concepts)
    units = label_units(tally.iou(code_category), code_category, code_name, concepts.categories, iou_threshold)
    units["threshold"] = thresholds
    units["mask_pixels"] = tally.unit_pixels
    summary = layer_summary(units, concepts.categories, iou_threshold)
    summary["images"] = tally.images
    if tally.per_image is not None:
        intervals = bootstrap_layer(
            tally.per_image,
            code_category,
            concepts.categories,
            iou_threshold,
            resamples=BOOTSTRAP_RESAMPLES,
            seed=seed,
        )
        for name, (low, high) in intervals.items():
            summary[f"{name}_ci_low"], summary[f"{name}_ci_high"] = low, high
    return units, summary


# ------------------------------------------------------------------------------------------------
# stages


def open_stage(model_name: str, model_spec: dict, layers: list[str], concepts_config: dict, **where):
    """The concept dataset and the model, with every layer checked (one-line errors)."""
    concepts = open_concepts(
        concepts_config, data_dir=where["data_dir"], resources_dir=where["resources_dir"], seed=where["seed"]
    )
    model = build_model(model_name, model_spec, data_dir=where["data_dir"], torch_home=where["torch_home"])
    for layer in layers:
        resolve_layer(model, layer, model_name)
    return concepts, model


def run_dissection(
    *,
    model_name: str,
    model_spec: dict,
    layers: list[str],
    concepts_config: dict,
    mask_size: int | None,
    quantile: float,
    iou_threshold: float,
    top_k: int,
    seed: int,
    data_dir,
    torch_home,
    resources_dir,
    units_path,
    layers_path,
    tallies_path,
    batch_size: int = 16,
) -> pd.DataFrame:
    """The dissection stage for one model: every configured layer against the concept dataset.

    Writes the unit table and the layer table (parquet) and an npz holding, per layer, the summed
    counts, the thresholds, and each unit's top-`top_k` images with their activation maps (figures).
    """
    where = {"data_dir": data_dir, "resources_dir": resources_dir, "torch_home": torch_home, "seed": seed}
    concepts, model = open_stage(model_name, model_spec, layers, concepts_config, **where)
    shape = mask_shape(concepts.label_size, mask_size)
    print(f"dissecting {model_name} {layers} on {concepts.describe()}; masks {shape[0]}x{shape[1]}", flush=True)
    units_path = Path(units_path)
    units_path.parent.mkdir(parents=True, exist_ok=True)
    tables, rows, arrays = [], [], {}
    with tempfile.TemporaryDirectory(dir=units_path.parent, prefix=".cache-") as tmp:
        transform = dissection_transform(model_spec["preprocessing"])
        caches = cache_activations(model, concepts, layers, transform, Path(tmp), batch_size=batch_size)
        labels = cache_labels(concepts, shape, Path(tmp))
        for depth, layer in enumerate(layers):
            maps = caches[layer]
            thresholds = unit_thresholds(maps, quantile)
            tally = dissect_layer(maps, thresholds, labels, concepts.n_codes, batch_size=batch_size)
            units, summary = summarise_layer(tally, concepts, thresholds, iou_threshold, seed=seed)
            units.insert(0, "model", model_name)
            units.insert(1, "layer", layer)
            units.insert(2, "depth", depth)
            tables.append(units)
            rows.append(
                {"model": model_name, "layer": layer, "depth": depth, "map_shape": list(maps.shape[2:]), **summary}
            )
            order, peaks = top_images(maps, top_k)
            arrays.update(
                {
                    f"{layer}/intersection": tally.intersection,
                    f"{layer}/unit_area": tally.unit_area,
                    f"{layer}/label_area": tally.label_area,
                    f"{layer}/thresholds": thresholds,
                    f"{layer}/top_images": order,
                    f"{layer}/top_peaks": peaks,
                    f"{layer}/top_maps": maps[order, np.arange(order.shape[0])[:, None]],
                }
            )
            print(
                f"{model_name} {layer}: {summary['detectors']}/{summary['units']} detectors, "
                f"{summary['unique_best']} unique concepts (best label), {summary['unique_per_category']} "
                f"(per-category sum), mean best IoU {summary['mean_best_iou']:.4f}",
                flush=True,
            )
        del caches, labels
    arrays.update(
        {
            "image_ids": np.asarray(concepts.image_ids),
            "concept_codes": concepts.concepts["code"].to_numpy(),
            "concept_names": concepts.concepts["name"].to_numpy().astype(str),
            "concept_categories": concepts.concepts["category"].to_numpy().astype(str),
            "categories": np.asarray(concepts.categories),
            "mask_shape": np.asarray(shape),
        }
    )
    units = pd.concat(tables, ignore_index=True)
    _write_parquet(units, units_path)
    _write_parquet(pd.DataFrame(rows), layers_path)
    with atomic_path(tallies_path) as temp, open(temp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return units


def run_rotation(
    *,
    model_name: str,
    model_spec: dict,
    layer: str,
    alphas: list[float],
    seeds: int,
    concepts_config: dict,
    mask_size: int | None,
    quantile: float,
    iou_threshold: float,
    seed: int,
    data_dir,
    torch_home,
    resources_dir,
    out_path,
    batch_size: int = 16,
) -> pd.DataFrame:
    """The rotation experiment: dissect the units Q^alpha A of one layer, per alpha and seed.

    Q^0 is the identity for every seed, so alpha = 0 is dissected once and shared by the seeds.
    Seed s draws Q from numpy's generator seeded with (config seed, s).
    """
    where = {"data_dir": data_dir, "resources_dir": resources_dir, "torch_home": torch_home, "seed": seed}
    concepts, model = open_stage(model_name, model_spec, [layer], concepts_config, **where)
    shape = mask_shape(concepts.label_size, mask_size)
    code_category, code_name = concept_lookup(concepts)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".cache-") as tmp:
        transform = dissection_transform(model_spec["preprocessing"])
        maps = cache_activations(model, concepts, [layer], transform, Path(tmp), batch_size=batch_size)[layer]
        labels = cache_labels(concepts, shape, Path(tmp))
        n_units = maps.shape[1]
        print(
            f"rotation: {model_name} {layer} ({n_units} units) on {concepts.describe()}; masks {shape[0]}x{shape[1]}; "
            f"alphas {alphas}, {seeds} seeds",
            flush=True,
        )
        unrotated = None
        bar = tqdm(total=len(alphas) * seeds, desc="rotations", unit="dissection", mininterval=2)
        for s in range(seeds):
            rotation = FractionalRotation.of(random_rotation(n_units, np.random.default_rng([seed, s])))
            for alpha in alphas:
                if alpha == 0 and unrotated is not None:
                    summary = unrotated
                else:
                    rotated = maps if alpha == 0 else rotated_cache(maps, rotation.power(alpha), Path(tmp) / "rot.npy")
                    thresholds = unit_thresholds(rotated, quantile)
                    tally = dissect_layer(rotated, thresholds, labels, concepts.n_codes, batch_size=batch_size)
                    units = label_units(
                        tally.iou(code_category), code_category, code_name, concepts.categories, iou_threshold
                    )
                    units["mask_pixels"] = tally.unit_pixels
                    summary = layer_summary(units, concepts.categories, iou_threshold)
                    unrotated = summary if alpha == 0 else unrotated
                    del rotated
                rows.append({"model": model_name, "layer": layer, "alpha": float(alpha), "seed": s, **summary})
                bar.update(1)
        bar.close()
        del maps, labels
    table = pd.DataFrame(rows)
    _write_parquet(table, out_path)
    return table


def _write_parquet(table: pd.DataFrame, path) -> None:
    with atomic_path(path) as temp:
        table.to_parquet(temp, index=False)
