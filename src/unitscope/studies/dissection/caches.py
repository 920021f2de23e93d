"""The dissection stages' inputs, read once into disk caches: the model and the concept dataset, every
layer's activation maps and every image's labels at mask resolution, in memmaps in a temporary folder
(memory stays bounded by a batch of images).

Input geometry (a choice, stated): each image is resized as the model's `preprocessing.resize` says (an int:
the shorter side; [H, W]: exactly that size, as `build_transform` does), the scale at which the model sees
objects, and is not cropped, so the feature map covers the whole frame and is upsampled onto the whole label
image (an h x w map onto H x W masks, each axis on its own: neither needs to be square). The crop
(`input_size`) is left out on purpose: a convolutional layer's maps need no fixed input size. Images are read
with the model's `input_channels` (1: grayscale, 3: RGB); the concept masks do not depend on the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from unitscope.data.concepts import ConceptDataset, open_concepts
from unitscope.hooks import ActivationRecorder, HookError
from unitscope.models.preprocessing import ImageTransform, input_channels
from unitscope.models.registry import load_model, resolve_layer
from unitscope.runtime import channels_last, inference_copy
from unitscope.settings import ModelRef
from unitscope.studies.dissection.dissect import MAX_COMBINATIONS, DissectionError, LabelBatch
from unitscope.studies.dissection.plan import ConceptSource


def batches(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of each batch of `batch_size` items out of n."""
    for start in range(0, n, batch_size):
        yield start, min(n, start + batch_size)


def dissection_transform(preprocessing: Mapping, model_name: str = "model"):
    """[grayscale] -> `preprocessing.resize` (bilinear, antialiased; the shorter side, or [H, W]), no crop,
    then normalise. Concept images are RGB; a 1-channel model reads them as grayscale (PIL's "L")."""
    channels = input_channels(preprocessing)
    if channels not in (1, 3) or len(preprocessing["std"]) != channels:
        raise DissectionError(
            f"model {model_name}: preprocessing has {channels} means and {len(preprocessing['std'])} stds; "
            "dissection expects one of each per input channel, 1 (grayscale) or 3 (RGB)"
        )
    resize = preprocessing["resize"]
    if isinstance(resize, list | tuple):
        if len(resize) != 2:
            raise DissectionError(f"model {model_name}: preprocessing.resize {resize!r} is not an int or [H, W]")
        resize = [int(resize[0]), int(resize[1])]
    else:
        resize = int(resize)
    mode = "L" if channels == 1 else None
    return ImageTransform(mode=mode, resize=resize, crop=None, mean=preprocessing["mean"], std=preprocessing["std"])


def open_concept_source(source: ConceptSource, seed: int) -> ConceptDataset:
    """The concept dataset of `source`, its images drawn with `seed`."""
    return open_concepts(source.spec, data_dir=source.data_dir, resources_dir=source.resources_dir, seed=seed)


def open_inputs(model_ref: ModelRef, layers: Sequence[str], source: ConceptSource, seed: int):
    """The concept dataset and the model, with every layer checked (one-line errors)."""
    concepts = open_concept_source(source, seed)
    model = load_model(model_ref)
    for layer in layers:
        resolve_layer(model, layer, model_ref.name)
    return concepts, inference_copy(model, keep=set(layers))  # BatchNorm folded: the same maps, to float rounding


# ------------------------------------------------------------------------------------------------
# activations


def cache_activations(
    model: torch.nn.Module,
    concepts: ConceptDataset,
    layers: list[str],
    transform,
    folder: Path,
    *,
    model_name: str = "model",
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, np.memmap]:
    """One forward pass over the concept images for all `layers` (any module paths of any graph), on the model's
    device; maps go to float32 memmaps [N, C, h, w] under `folder`. A layer whose output is not one [N, C, h, w]
    tensor, or a forward pass that fails (an input too small for the network, the wrong channels), is a one-line
    DissectionError naming `model_name` (and the layer)."""
    caches: dict[str, np.memmap] = {}
    n = len(concepts)
    model = channels_last(model)  # faster CPU convolutions, the same maps to float rounding
    device = next(model.parameters(), torch.empty(0)).device  # the images go where the model is
    bar = tqdm(total=n, desc="activations", unit="img", disable=not progress, mininterval=2)
    with (
        ActivationRecorder(model, layers, keep_maps=True, maps_dtype=torch.float32, stop_early=True) as rec,
        torch.inference_mode(),
    ):
        for start, stop in batches(n, batch_size):
            images = _image_batch(concepts, transform, start, stop)
            try:
                rec(channels_last(images.to(device)))
            except HookError as error:
                raise DissectionError(f"model {model_name}: {error}") from error
            except RuntimeError as error:  # e.g. the input too small for the network, or its channels wrong
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise DissectionError(
                    f"model {model_name}: the forward pass on images {list(images.shape)} failed: {first_line}"
                ) from error
            for layer in layers:
                _store_maps(caches, layer, rec.maps[layer], folder, n, start, stop, model_name=model_name)
            bar.update(stop - start)
    bar.close()
    return caches


def _image_batch(concepts: ConceptDataset, transform, start: int, stop: int) -> torch.Tensor:
    """Images start..stop - 1, preprocessed, as one batch (they must share one size)."""
    images = [transform(concepts.image(i)) for i in range(start, stop)]
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) != 1:
        raise DissectionError(
            f"{concepts.name}: images {start}..{stop - 1} differ in size after preprocessing "
            f"({sorted(shapes)}); dissection needs one image size"
        )
    return torch.stack(images)


def _store_maps(
    caches: dict[str, np.memmap],
    layer: str,
    maps: torch.Tensor,
    folder: Path,
    n: int,
    start: int,
    stop: int,
    *,
    model_name: str,
) -> None:
    """Check one batch of a layer's maps and write it into the layer's memmap (created on the first batch)."""
    where = f"model {model_name} layer {layer!r}"
    if maps.dim() != 4:
        raise DissectionError(
            f"{where}: output shape {list(maps.shape)} is not [N, C, h, w]; dissection needs a layer whose output "
            "is one map per channel (a convolutional layer or block, before global pooling and flattening)"
        )
    if layer not in caches:
        caches[layer] = np.lib.format.open_memmap(
            folder / f"{layer}.npy", mode="w+", dtype=np.float32, shape=(n, *maps.shape[1:])
        )
    if tuple(maps.shape[1:]) != caches[layer].shape[1:]:
        raise DissectionError(f"{where}: map shape changed between images")
    if not torch.isfinite(maps).all():
        raise DissectionError(f"{where}: NaN or infinite activations on images {start}..{stop - 1}")
    caches[layer][start:stop] = maps.cpu().numpy()


# ------------------------------------------------------------------------------------------------
# labels


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
    for start, stop in batches(n, block):
        keys = (np.asarray(pixels[start:stop], dtype=np.int64) * radix).sum(axis=1)
        distinct = np.union1d(distinct, np.unique(keys))
        if len(distinct) > MAX_COMBINATIONS:
            return None, None
    combined = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(n, pixels.shape[2]))
    for start, stop in batches(n, block):
        keys = (np.asarray(pixels[start:stop], dtype=np.int64) * radix).sum(axis=1)
        combined[start:stop] = np.searchsorted(distinct, keys)
    codes = (distinct[:, None] // radix[0, :, 0][None, :]) % n_codes  # [n_combos, L]
    counts = np.zeros((len(distinct), n_codes), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(distinct)), n_layers), codes.reshape(-1)), 1)
    return combined, counts
