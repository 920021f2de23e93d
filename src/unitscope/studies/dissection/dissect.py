"""Network Dissection (Bau et al., CVPR 2017): unit-concept IoU, detectors per layer.

For a layer with K units (channels) over a concept dataset:

- threshold T_k: the top `quantile` (0.005) quantile of unit k's activations over every spatial
  position of every image, computed exactly: `np.quantile` (linear interpolation, in float64) over
  all N * h * w values of the unit, read in blocks of units, then stored as float32
  (`threshold_units`). NetDissect-Lite estimates it instead, with a streaming randomized quantile
  sketch (`util/vecquantile.QuantileVector`, after Karnin, Lang and Liberty's KLL; its
  `np.percentile` line is commented out) read out at 1,000 evenly spaced quantiles, of which it
  takes entry int(1000 * (1 - quantile)) - 1: the 994/999 (about 0.99499) quantile for 0.005;
- unit mask M_k = up(A_k) > T_k, where up is torch's bilinear upsampling (align_corners=False)
  of the h x w map to the H x W mask resolution. Ties at a saturated threshold: when T_k equals
  unit k's largest activation (a ReLU6 unit at 6.0 on at least `quantile` of its positions) and
  the unit is not constant, `> T_k` holds nowhere and the unit could never be a detector, so its
  mask is up(A_k) >= T_k instead, values within float32 rounding of T_k (ROUNDING_MARGIN) counting
  as T_k (`saturated` in `UnitThresholds`; every other unit keeps `>`, and a constant unit, such
  as one that is 0 everywhere, keeps its empty mask). The mask of a saturated unit is where its
  upsampled map is at its ceiling: between neighbouring cells at T_k, and at a lone such cell only
  where an output pixel takes it with weight 1 along both axes (its centre, when that axis's scale
  is an odd integer, or the clamped border rows and columns). NetDissect-Lite uses `>` for every
  unit. The tallies take the rule as a per-unit cutoff (`mask_cutoffs`);
- IoU_{k,c} = sum_images |M_k ∩ L_c| / sum_images |M_k ∪ L_c|, sums over the whole dataset, and for
  concept c only over images annotated for c's category (|M_k| is counted on those images only).
  An image-level concept (Broden scene, texture) covers its whole image.
- unit k detects its best concept if that IoU exceeds `iou_threshold` (0.04).

How the tally stays cheap without changing a single count (`tally_batch`): bilinear upsampling
makes every output pixel a convex combination of the (at most) 2 x 2 source values around it.
The output grid splits into tiles of about 12 x 12 pixels that all interpolate the same 2 x 2
source block. A block whose maximum is below T_k cannot produce a mask pixel, and within a tile
the value is linear in each axis's interpolation weight, so its largest value is at one of the
tile's four corner pixels: tiles failing either test are skipped. The remaining tiles (a few % of
the mask area at the 0.005 quantile) are evaluated with the interpolation weights torch uses;
pixels whose value lies within a rounding margin of T_k are re-evaluated with torch's own
`F.interpolate`, so the masks are those of the direct way (`tally_direct`: upsample every channel
of every image, threshold, intersect), bit for bit. All units of a layer go through together as
tensors; there is no loop over units or concepts.

Intervals: per-image counts are kept (when small enough) so that layer-level numbers get 95%
bootstrap intervals over images (`bootstrap_layer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from unitscope.errors import UnitscopeError

if TYPE_CHECKING:
    from unitscope.data.concepts import ConceptDataset

# Pixels whose value is within ROUNDING_MARGIN * max(|corner|, |T_k|) of the threshold are re-evaluated
# with torch's own interpolation. Torch's kernel and ours evaluate the same weighted sum of 4 corners in
# float32 with 3 roundings each, so they differ by at most about 8 * 2^-24 * max|corner| (tests measure
# under 4); 2^-19 is 32 * 2^-24.
ROUNDING_MARGIN = 2.0**-19
TILE_PIXELS_PER_CHUNK = 1 << 22  # active-tile pixels evaluated at once (bounds memory)
BAND_TARGET = 12  # outputs per band: tiles are about BAND_TARGET^2 pixels (pruning is per tile)
MAX_COMBINATIONS = 1 << 16  # distinct per-pixel code tuples beyond which label layers are looked up one by one
MAX_TALLY_BINS = 1 << 26  # bins of one bincount (images x units x labels)
MAX_PER_IMAGE = 1 << 26  # per-image counts (images x units x concepts) kept for bootstrap intervals


class DissectionError(UnitscopeError, ValueError):
    """Dissection input is unusable (shapes, layers, settings); the message is one line."""


# ------------------------------------------------------------------------------------------------
# thresholds


@dataclass(frozen=True)
class UnitThresholds:
    """Each unit's threshold T_k and whether it is saturated: T_k is the unit's largest activation and the unit
    is not constant, so `> T_k` would leave its mask empty everywhere and its mask is `>= T_k` instead
    (`mask_cutoffs`)."""

    values: np.ndarray  # float32 [K]: T_k
    saturated: np.ndarray  # bool [K]


def threshold_units(maps: np.ndarray, quantile: float, *, chunk_values: int = 1 << 24) -> UnitThresholds:
    """T_k = the (1 - quantile) quantile of unit k's values over all images and positions, exactly, and which
    units are saturated (T_k equals the unit's maximum, which is above its minimum).

    `maps` is [N, K, h, w] (a numpy array or memmap); read in blocks of units so memory stays bounded.
    """
    if not 0 < quantile < 1:
        raise DissectionError(f"dissection.quantile must be in (0, 1), got {quantile}")
    n_images, n_units = maps.shape[:2]
    per_unit = int(np.prod(maps.shape[2:])) * n_images
    block = max(1, chunk_values // max(per_unit, 1))
    thresholds = np.empty(n_units, dtype=np.float32)
    highest, lowest = np.empty(n_units, dtype=np.float32), np.empty(n_units, dtype=np.float32)
    for start in range(0, n_units, block):
        stop = min(n_units, start + block)
        values = np.asarray(maps[:, start:stop], dtype=np.float64).swapaxes(0, 1).reshape(stop - start, -1)
        thresholds[start:stop] = np.quantile(values, 1.0 - quantile, axis=1)
        highest[start:stop], lowest[start:stop] = values.max(axis=1), values.min(axis=1)
    return UnitThresholds(thresholds, (thresholds >= highest) & (highest > lowest))


def unit_thresholds(maps: np.ndarray, quantile: float, *, chunk_values: int = 1 << 24) -> np.ndarray:
    """T_k [K] alone (`threshold_units`)."""
    return threshold_units(maps, quantile, chunk_values=chunk_values).values


def mask_cutoffs(thresholds, saturated=None):
    """Per unit, the value its upsampled map must exceed to be in its mask: T_k, or for a saturated unit the float32
    just below T_k - ROUNDING_MARGIN * |T_k|, so that `value > cutoff` is `value >= T_k` with values within rounding
    of T_k counting as T_k. The margin is needed: torch's bilinear upsampling of a constant map is not always exact
    (5 x 7 -> 45 x 60: 8% of a constant 6.0 map comes out 6.0 +- 1 ulp, in a pattern that changes with the number of
    maps upsampled together), so a literal `>= T_k` would keep an arbitrary part of a unit's plateau at T_k. One
    tensor op over all units; `thresholds` and the result are a float32 numpy array or torch tensor alike;
    `saturated` None: every unit keeps `> T_k`."""
    if saturated is None:
        return thresholds
    if isinstance(thresholds, torch.Tensor):
        values = thresholds.float()
        lowest = torch.tensor(-math.inf, device=values.device)
        below = torch.nextafter(values - ROUNDING_MARGIN * values.abs(), lowest)
        return torch.where(torch.as_tensor(saturated, dtype=torch.bool, device=values.device), below, values)
    values = np.asarray(thresholds, dtype=np.float32)
    below = np.nextafter(values - np.float32(ROUNDING_MARGIN) * np.abs(values), np.float32(-np.inf))
    return np.where(saturated, below, values)


# ------------------------------------------------------------------------------------------------
# bilinear geometry


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index along one axis: the first source index a and the weights of a and a + 1,
    read from torch's own bilinear upsampling (align_corners=False) of one-hot inputs."""
    probe = torch.eye(n_in, dtype=torch.float32, device="cpu").reshape(n_in, 1, n_in, 1)  # read back as numpy
    weights = F.interpolate(probe, size=(n_out, 1), mode="bilinear", align_corners=False)[:, 0, :, 0].numpy()
    nonzero = weights != 0
    if not nonzero.any(axis=0).all():
        raise DissectionError(f"bilinear {n_in} -> {n_out}: an output takes no source value")
    first = nonzero.argmax(axis=0)
    last = n_in - 1 - nonzero[::-1].argmax(axis=0)
    if (last - first > 1).any() or (np.diff(first) < 0).any():
        raise DissectionError(f"bilinear {n_in} -> {n_out}: unexpected interpolation footprint")
    columns = np.arange(n_out)
    w0 = weights[first, columns]
    w1 = np.where(first + 1 < n_in, weights[np.minimum(first + 1, n_in - 1), columns], 0.0).astype(np.float32)
    return first, w0.astype(np.float32), w1


@dataclass(frozen=True)
class Bands:
    """One axis of the output grid cut into bands: contiguous runs of outputs that interpolate the
    same two source indices (a, a + 1), each at most `width` long (runs are split so that padding
    them to a common width wastes little)."""

    source: torch.Tensor  # [nb] source index a of each band
    start: torch.Tensor  # [nb] first output index
    length: torch.Tensor  # [nb]
    w0: torch.Tensor  # [nb, width] weight of source a; NaN beyond the band, so padding never fires
    w1: torch.Tensor  # [nb, width] weight of source a + 1 (NaN beyond the band)
    end_w0: torch.Tensor  # [2, nb] weight of source a at the first and at the last output of each band
    end_w1: torch.Tensor  # [2, nb] weight of source a + 1 there

    @classmethod
    def of(cls, n_in: int, n_out: int) -> Bands:
        first, w0, w1 = _axis_weights(n_in, n_out)
        runs = np.bincount(first, minlength=n_in)
        runs = runs[runs > 0]
        sources = np.unique(first)
        # bands of about BAND_TARGET outputs: among widths BAND_TARGET / 2 .. BAND_TARGET, the one that
        # pads least (ties: the wider)
        widths = np.arange(max(1, min(BAND_TARGET // 2, runs.max())), min(BAND_TARGET, runs.max()) + 1)
        cost = np.array([(np.ceil(runs / w) * w).sum() for w in widths])
        width = int(widths[np.flatnonzero(cost == cost.min()).max()])
        source, start, length = [], [], []
        offset = 0
        for a, run in zip(sources, runs, strict=True):
            for piece in range(0, run, width):
                source.append(a)
                start.append(offset + piece)
                length.append(min(width, run - piece))
            offset += run
        source, start, length = (np.asarray(x, dtype=np.int64) for x in (source, start, length))
        offsets = np.arange(width)
        valid = offsets[None, :] < length[:, None]
        index = np.where(valid, start[:, None] + offsets[None, :], 0)
        ends = np.stack([start, start + length - 1])  # first and last output of each band
        return cls(
            torch.from_numpy(source),
            torch.from_numpy(start),
            torch.from_numpy(length),
            torch.from_numpy(np.where(valid, w0[index], np.nan).astype(np.float32)),
            torch.from_numpy(np.where(valid, w1[index], np.nan).astype(np.float32)),
            torch.from_numpy(w0[ends]),
            torch.from_numpy(w1[ends]),
        )

    def to(self, device: torch.device) -> Bands:
        return Bands(*(getattr(self, field.name).to(device) for field in fields(self)))


@dataclass(frozen=True)
class BilinearGrid:
    """How torch's bilinear upsampling maps an h x w map onto H x W: row bands and column bands."""

    in_shape: tuple[int, int]
    out_shape: tuple[int, int]
    rows: Bands
    cols: Bands

    @classmethod
    def build(cls, in_shape: tuple[int, int], out_shape: tuple[int, int]) -> BilinearGrid:
        in_shape, out_shape = tuple(int(x) for x in in_shape), tuple(int(x) for x in out_shape)
        return cls(in_shape, out_shape, Bands.of(in_shape[0], out_shape[0]), Bands.of(in_shape[1], out_shape[1]))

    def to(self, device: torch.device) -> BilinearGrid:
        return BilinearGrid(self.in_shape, self.out_shape, self.rows.to(device), self.cols.to(device))


def upsample(maps: torch.Tensor, out_shape: tuple[int, int]) -> torch.Tensor:
    """The reference upsampling: torch's bilinear, align_corners=False. [..., h, w] -> [..., H, W].

    Maps go through as the channels of one [1, n, h, w] tensor (the layout of a layer's output, so
    torch takes the same kernel as for `F.interpolate(activations)`; one map is doubled so that
    torch does not read a [1, 1, h, w] tensor as channels-last).
    """
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    flat = maps.reshape(1, -1, h, w).float()
    n = flat.shape[1]
    if n == 1:
        flat = flat.expand(1, 2, h, w).contiguous()
    out = F.interpolate(flat, size=tuple(out_shape), mode="bilinear", align_corners=False)[:, :n]
    return out.reshape(*lead, *out_shape)


# ------------------------------------------------------------------------------------------------
# tallies


@dataclass
class Tally:
    """Counts for one layer, summed over images: intersections [K, n_codes], each unit's mask area on
    images annotated for each category [K, n_categories], each concept's label area [n_codes], each
    unit's mask pixels [K]; optionally the same per image (`per_image`) for bootstrap intervals."""

    intersection: np.ndarray
    unit_area: np.ndarray
    label_area: np.ndarray
    unit_pixels: np.ndarray
    images: int = 0
    per_image: PerImage | None = None

    @classmethod
    def zeros(cls, n_units: int, n_codes: int, n_categories: int) -> Tally:
        return cls(
            np.zeros((n_units, n_codes), np.int64),
            np.zeros((n_units, n_categories), np.int64),
            np.zeros(n_codes, np.int64),
            np.zeros(n_units, np.int64),
        )

    @classmethod
    def of(cls, part: PerImage) -> Tally:
        sums = part.sums()
        return cls(*sums, images=len(part.area), per_image=part)

    def add(self, other: Tally, *, keep_images: bool = True) -> None:
        """Add another batch's counts; per-image counts are kept while below MAX_PER_IMAGE values."""
        first = self.images == 0
        self.intersection += other.intersection
        self.unit_area += other.unit_area
        self.label_area += other.label_area
        self.unit_pixels += other.unit_pixels
        self.images += other.images
        if keep_images and other.per_image is not None and (first or self.per_image is not None):
            merged = other.per_image if first else PerImage.concat([self.per_image, other.per_image])
            self.per_image = merged if merged.intersection.size <= MAX_PER_IMAGE else None
        else:
            self.per_image = None

    def iou(self, code_category: np.ndarray) -> np.ndarray:
        """IoU [K, n_codes]; `code_category[c]` is the category index of code c (-1: not a concept)."""
        return iou_from_counts(self.intersection, self.unit_area, self.label_area, code_category)


def iou_from_counts(intersection, unit_area, label_area, code_category: np.ndarray) -> np.ndarray:
    """IoU [..., K, n_codes] from summed counts (leading axes allowed, e.g. bootstrap resamples)."""
    category = np.maximum(code_category, 0)
    union = unit_area[..., category] + label_area[..., None, :] - intersection
    iou = np.where(union > 0, intersection / np.maximum(union, 1), 0.0)
    iou[..., code_category < 0] = 0.0
    return iou


@dataclass
class PerImage:
    """Counts per image: intersection [N, K, n_codes], mask area [N, K], label area [N, n_codes],
    annotated categories [N, n_categories]."""

    intersection: np.ndarray
    area: np.ndarray
    label_area: np.ndarray
    annotated: np.ndarray

    @classmethod
    def concat(cls, parts: list[PerImage]) -> PerImage:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))

    def sums(self, weights: np.ndarray | None = None):
        """(intersection [K, C], unit area [K, n_cat], label area [C], unit pixels [K]), summed over
        images with `weights` [N] (or [R, N] for R resamples: every result gains a leading R axis)."""
        w = np.ones(len(self.area)) if weights is None else np.asarray(weights, dtype=np.float64)
        integer = weights is None
        intersection = np.tensordot(w, self.intersection, axes=([-1], [0]))
        unit_area = np.einsum("...n,nk,nc->...kc", w, self.area, self.annotated)
        label_area = np.tensordot(w, self.label_area, axes=([-1], [0]))
        unit_pixels = np.tensordot(w, self.area, axes=([-1], [0]))
        out = (intersection, unit_area, label_area, unit_pixels)
        return tuple(np.rint(x).astype(np.int64) for x in out) if integer else out


@dataclass
class LabelBatch:
    """Annotations of a batch of images at mask resolution, as tensors."""

    pixels: torch.Tensor  # int32 [B, L, P], concept codes (0 none), P = H * W
    scalars: torch.Tensor  # int64 [B, S], image-level codes (0 padding)
    annotated: torch.Tensor  # bool [B, n_categories]
    shape: tuple[int, int]
    # Optional: each pixel's combination of codes across layers as one id (one lookup per mask pixel
    # instead of one per layer): combined [B, P] int32 indexes combo_counts [n_combos, n_codes].
    combined: torch.Tensor | None = None
    combo_counts: torch.Tensor | None = None

    def to(self, device: torch.device) -> LabelBatch:
        def move(tensor):
            return None if tensor is None else tensor.to(device)

        return LabelBatch(
            move(self.pixels), move(self.scalars), move(self.annotated), self.shape,
            move(self.combined), move(self.combo_counts),
        )  # fmt: skip


def label_batch(annotations, categories: list[str], shape: tuple[int, int]) -> LabelBatch:
    """Stack `Annotation`s (same mask shape) into a LabelBatch."""
    n_layers = max([a.pixels.shape[0] for a in annotations] + [1])
    n_scalars = max([len(a.scalars) for a in annotations] + [1])
    pixels = np.zeros((len(annotations), n_layers, shape[0] * shape[1]), dtype=np.int32)
    scalars = np.zeros((len(annotations), n_scalars), dtype=np.int64)
    annotated = np.zeros((len(annotations), len(categories)), dtype=bool)
    for i, a in enumerate(annotations):
        if a.pixels.shape[0] and a.pixels.shape[1:] != tuple(shape):
            raise DissectionError(f"annotation {i}: mask shape {a.pixels.shape[1:]} is not {tuple(shape)}")
        pixels[i, : a.pixels.shape[0]] = a.pixels.reshape(a.pixels.shape[0], shape[0] * shape[1])
        scalars[i, : len(a.scalars)] = a.scalars
        annotated[i] = [c in a.categories for c in categories]
    return LabelBatch(torch.from_numpy(pixels), torch.from_numpy(scalars), torch.from_numpy(annotated), tuple(shape))


def _label_area(labels: LabelBatch, n_codes: int) -> torch.Tensor:
    """[B, n_codes]: pixels of each concept per image (an image-level concept covers the image)."""
    n_images, n_layers, n_pixels = labels.pixels.shape
    offsets = torch.arange(n_images, device=labels.pixels.device) * n_codes
    keys = labels.pixels.long() + offsets[:, None, None]
    area = torch.bincount(keys.reshape(-1), minlength=n_images * n_codes).reshape(n_images, n_codes)
    scalar_keys = labels.scalars + offsets[:, None]
    area += torch.bincount(scalar_keys.reshape(-1), minlength=n_images * n_codes).reshape(n_images, n_codes) * (
        n_pixels
    )
    area[:, 0] = 0
    return area


def _finish(labels: LabelBatch, n_units: int, n_codes: int, keys: torch.Tensor, area: torch.Tensor) -> Tally:
    """From mask pixels' ((image * K + unit) * n_bins + label) keys and mask areas [B, K] to a Tally.

    Labels are concept codes (n_bins = n_codes) or, with `labels.combined`, code combinations.
    """
    n_images = labels.pixels.shape[0]
    if labels.combined is not None:
        n_combos = labels.combo_counts.shape[0]
        counts = torch.bincount(keys, minlength=n_images * n_units * n_combos).reshape(-1, n_combos)
        intersection = (counts.double() @ labels.combo_counts.double()).round().long()
    else:
        intersection = torch.bincount(keys, minlength=n_images * n_units * n_codes)
    intersection = intersection.reshape(n_images, n_units, n_codes)
    area = area.round().long().reshape(n_images, n_units)
    if labels.scalars.any():  # an image-level concept overlaps the whole mask of its image
        onehot = torch.zeros(n_images, n_codes, dtype=torch.long, device=area.device)
        onehot.scatter_(1, labels.scalars, 1)
        intersection += area[:, :, None] * onehot[:, None, :]
    intersection[:, :, 0] = 0
    part = PerImage(
        intersection.cpu().numpy().astype(np.int32),
        area.cpu().numpy().astype(np.int32),
        _label_area(labels, n_codes).cpu().numpy().astype(np.int32),
        labels.annotated.cpu().numpy(),
    )
    return Tally.of(part)


def tally_direct(
    maps: torch.Tensor, thresholds: torch.Tensor, labels: LabelBatch, n_codes: int, *, saturated=None
) -> Tally:
    """The direct way, for reference and benchmarks: upsample every unit of every image to mask
    resolution, threshold, intersect with one-hot labels. maps [B, K, h, w] -> Tally. `saturated` [K]
    (bool, optional): the units whose mask is `>= T_k` (`mask_cutoffs`)."""
    thresholds = mask_cutoffs(torch.as_tensor(thresholds, dtype=torch.float32), saturated)
    n_images, n_units = maps.shape[:2]
    height, width = labels.shape
    n_pixels = height * width
    intersection = torch.zeros(n_images, n_units, n_codes, dtype=torch.float64)
    area = torch.zeros(n_images, n_units, dtype=torch.float64)
    chunk = max(1, (1 << 24) // n_pixels)
    for b in range(n_images):
        onehot = torch.zeros(n_pixels, n_codes, dtype=torch.float32)
        for layer in labels.pixels[b]:
            onehot.scatter_(1, layer[:, None].long(), 1.0, reduce="add")
        for start in range(0, n_units, chunk):
            stop = min(n_units, start + chunk)
            mask = upsample(maps[b, start:stop], (height, width)) > thresholds[start:stop, None, None]
            mask = mask.reshape(stop - start, n_pixels).float()
            intersection[b, start:stop] = (mask @ onehot).double()
            area[b, start:stop] = mask.sum(dim=1).double()
    keys = torch.zeros(0, dtype=torch.int64)
    plain = LabelBatch(labels.pixels, labels.scalars, labels.annotated, labels.shape)
    tally = _finish(plain, n_units, n_codes, keys, area)
    pixel_part = intersection.round().long().numpy()
    pixel_part[:, :, 0] = 0
    tally.per_image.intersection += pixel_part.astype(np.int32)
    return Tally.of(tally.per_image)


def tally_batch(
    maps: torch.Tensor,
    thresholds: torch.Tensor,
    labels: LabelBatch,
    n_codes: int,
    grid: BilinearGrid,
    *,
    saturated=None,
) -> Tally:
    """The same Tally as `tally_direct`, evaluating only tiles that can hold mask pixels (module docstring).
    `saturated` [K] (bool, optional): the units whose mask is `>= T_k`; the tiles and margins below work for
    any cutoff, so they take each unit's cutoff from `mask_cutoffs` in place of T_k."""
    maps = maps.float()
    device = maps.device
    n_images, n_units, h, w = maps.shape
    if (h, w) != grid.in_shape or tuple(labels.shape) != grid.out_shape:
        raise DissectionError(f"maps {h}x{w} / masks {labels.shape} do not match the grid {grid.in_shape}")
    rows, cols = grid.rows, grid.cols
    thresholds = mask_cutoffs(thresholds.float(), saturated)
    tiles, corners, margin = _active_tiles(maps, thresholds, grid)
    bh, bw = rows.w0.shape[1], cols.w0.shape[1]
    tile_size, width = bh * bw, grid.out_shape[1]
    within = (torch.arange(bh, device=device)[:, None] * width + torch.arange(bw, device=device)).reshape(-1)
    chunk = max(1, TILE_PIXELS_PER_CHUNK // tile_size)
    n_layers, n_pixels = labels.pixels.shape[1:]
    if labels.combined is not None:  # one lookup per mask pixel: the pixel's code combination
        label_maps, n_bins = labels.combined.reshape(-1), labels.combo_counts.shape[0]
        layer_offsets, image_stride = [0], n_pixels
    else:  # one lookup per layer
        label_maps, n_bins = labels.pixels.reshape(-1), n_codes
        layer_offsets, image_stride = [layer * n_pixels for layer in range(n_layers)], n_layers * n_pixels
    keys, area = [], torch.zeros(n_images * n_units, dtype=torch.float64, device=device)
    for begin in range(0, len(tiles), chunk):
        b, k, rb, cb = tiles[begin : begin + chunk].unbind(1)
        x = corners[:, begin : begin + chunk]
        threshold = _pick(thresholds, k)[:, None]
        near = margin[begin : begin + chunk]
        cw0, cw1 = cols.w0.index_select(0, cb), cols.w1.index_select(0, cb)  # [n, bw]
        # value - T = (top - T) rw0 + (bottom - T) rw1 up to rounding (rw0 + rw1 = 1), inside the margin
        top = x[0, :, None] * cw0 + x[1, :, None] * cw1 - threshold
        bottom = x[2, :, None] * cw0 + x[3, :, None] * cw1 - threshold
        rw0, rw1 = rows.w0.index_select(0, rb), rows.w1.index_select(0, rb)  # [n, bh]
        excess = torch.addcmul(top[:, None, :] * rw0[:, :, None], bottom[:, None, :], rw1[:, :, None])
        candidate = (excess > -near[:, None, None]).reshape(-1).nonzero().squeeze(1)  # tile * bh * bw + position
        fires = _pick(excess.reshape(-1), candidate) > _pick(near, candidate // tile_size)
        unsure = (~fires).nonzero().squeeze(1)  # too close to call: ask torch's own interpolation
        tile_pixel = _pick(rows.start, rb) * width + _pick(cols.start, cb)
        if len(unsure):
            u_flat = candidate[unsure]
            u_tile, u_pos = u_flat // tile_size, u_flat % tile_size
            u_pixel = _pick(tile_pixel, u_tile) + _pick(within, u_pos)
            u_plane = _pick(b * n_units + k, u_tile)
            u_weights = _pixel_weights(grid, _pick(rb, u_tile), _pick(cb, u_tile), u_pos // bw, u_pos % bw)
            u_values = _exact_values(maps, x.index_select(1, u_tile), u_weights, u_plane, u_pixel, grid.out_shape)
            fires[unsure] = u_values > _pick(thresholds, _pick(k, u_tile))
        inside = candidate[fires]
        tile, position = inside // tile_size, inside % tile_size
        area.index_add_(0, b * n_units + k, torch.bincount(tile, minlength=len(b)).double())
        label_index = _pick(tile_pixel + b * image_stride, tile) + _pick(within, position)
        unit_key = _pick((b * n_units + k) * n_bins, tile)
        for offset in layer_offsets:  # code 0 (no concept) lands in column 0, cleared in _finish
            keys.append(unit_key + _pick(label_maps, label_index + offset))
    keys = torch.cat(keys) if keys else torch.zeros(0, dtype=torch.int64, device=device)
    return _finish(labels, n_units, n_codes, keys, area)


def _active_tiles(maps: torch.Tensor, thresholds: torch.Tensor, grid: BilinearGrid):
    """The tiles that can hold mask pixels: (tiles [n, 4] = image, unit, row band, column band; their 2 x 2
    source corners [4, n] = x00 x01 x10 x11; each tile's rounding margin [n])."""
    n_units, h, w = maps.shape[1:]
    rows, cols = grid.rows, grid.cols
    padded = F.pad(maps, (0, 1, 0, 1), mode="replicate")  # source a + 1 clamps to the last row/column
    block_max = _block_max(padded)  # [B, K, h, w]: max of each 2 x 2 source block
    block_abs = _block_max(padded.abs())
    cell_active = (block_max > thresholds[None, :, None, None] - ROUNDING_MARGIN * block_abs).nonzero()
    # the bands over an active source cell are candidate tiles: [n, 4] = image, unit, row band, column band
    tiles = _expand_tiles(cell_active, _bands_of_source(rows.source, h), _bands_of_source(cols.source, w))
    b, k, rb, cb = tiles.unbind(1)
    corner = ((b * n_units + k) * (h + 1) + _pick(rows.source, rb)) * (w + 1) + _pick(cols.source, cb)
    flat_maps = padded.reshape(-1)
    corners = _pick(flat_maps, torch.stack([corner, corner + 1, corner + w + 1, corner + w + 2]))  # x00 x01 x10 x11
    # Along each axis a pixel's value is linear in its interpolation weight, so the largest value in a
    # tile is at one of its four corner pixels: tiles whose corner pixels stay below T_k are dropped.
    cw0, cw1 = cols.end_w0.index_select(1, cb), cols.end_w1.index_select(1, cb)  # [2 (first/last column), n]
    rw0, rw1 = rows.end_w0.index_select(1, rb), rows.end_w1.index_select(1, rb)
    top, bottom = corners[0] * cw0 + corners[1] * cw1, corners[2] * cw0 + corners[3] * cw1
    tile_max = (top[None] * rw0[:, None] + bottom[None] * rw1[:, None]).amax((0, 1))
    margin = ROUNDING_MARGIN * torch.maximum(corners.abs().amax(0), _pick(thresholds, k).abs())
    keep = (tile_max > _pick(thresholds, k) - 2 * margin).nonzero().squeeze(1)
    tiles, corners, margin = tiles.index_select(0, keep), corners.index_select(1, keep), _pick(margin, keep)
    return tiles, corners, margin


def _block_max(padded: torch.Tensor) -> torch.Tensor:
    """[..., h + 1, w + 1] -> [..., h, w]: the maximum of each 2 x 2 block (cheaper than max_pool2d on CPU)."""
    rows = torch.maximum(padded[..., :-1, :], padded[..., 1:, :])
    return torch.maximum(rows[..., :-1], rows[..., 1:])


def _pick(source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """source[index] for a 1-D source (torch.gather: faster than advanced indexing on CPU)."""
    return source.gather(0, index.reshape(-1)).reshape(index.shape)


def _pixel_weights(grid: BilinearGrid, rb, cb, r, s) -> torch.Tensor:
    """[4, n]: the interpolation weights of x00, x01, x10, x11 at offset (r, s) of tiles (rb, cb)."""
    rw0, rw1 = grid.rows.w0[rb, r], grid.rows.w1[rb, r]
    cw0, cw1 = grid.cols.w0[cb, s], grid.cols.w1[cb, s]
    return torch.stack([rw0 * cw0, rw0 * cw1, rw1 * cw0, rw1 * cw1])


def _exact_values(
    maps: torch.Tensor,
    corners: torch.Tensor,
    weights: torch.Tensor,
    plane: torch.Tensor,
    pixel: torch.Tensor,
    out_shape: tuple[int, int],
) -> torch.Tensor:
    """torch's upsampled value at `pixel` (flat index) of map `plane` (image * K + unit), for a few pixels.

    An output pixel reads only its 2 x 2 source block, and a source with weight 0 adds exactly 0, so
    where the sources that count are equal (ties at a saturated or all-zero threshold: nearly every
    case) a constant map of that value gives the same result: one small upsampling per distinct
    value instead of one per map. (Not to the last bit at every geometry: torch's rounding can change
    with the number of maps upsampled together, e.g. a constant 6.0 map 5 x 7 -> 45 x 60; saturated
    thresholds, the ties that matter, are kept a rounding margin away by `mask_cutoffs`.)
    """
    h, w = maps.shape[-2:]
    values = torch.empty(len(pixel), dtype=torch.float32, device=maps.device)
    counted = weights != 0  # [4, n]
    reference = corners.gather(0, counted.float().argmax(0, keepdim=True))  # a corner that counts
    constant = ((corners == reference) | ~counted).all(0)
    if constant.any():
        levels, level_of = torch.unique(reference[0, constant], return_inverse=True)
        exact = upsample(levels[:, None, None].expand(-1, h, w), out_shape).reshape(len(levels), -1)
        values[constant] = exact[level_of, pixel[constant]]
    other = ~constant
    if other.any():
        planes, plane_of = torch.unique(plane[other], return_inverse=True)
        exact = upsample(maps.reshape(-1, h, w)[planes], out_shape).reshape(len(planes), -1)
        values[other] = exact[plane_of, pixel[other]]
    return values


def _bands_of_source(band_source: torch.Tensor, n_in: int) -> list[torch.Tensor]:
    return [torch.nonzero(band_source == a).flatten() for a in range(n_in)]


def _expand_tiles(cells: torch.Tensor, row_bands: list[torch.Tensor], col_bands: list[torch.Tensor]) -> torch.Tensor:
    """Active source cells [n, 4] (image, unit, a, c) -> active tiles (image, unit, row band, column band)."""
    device = cells.device
    n_rows = torch.tensor([len(x) for x in row_bands], device=device)
    n_cols = torch.tensor([len(x) for x in col_bands], device=device)
    a, c = cells[:, 2], cells[:, 3]
    per_cell = n_rows[a] * n_cols[c]
    cell = torch.repeat_interleave(torch.arange(len(cells), device=device), per_cell)
    first = torch.cumsum(per_cell, 0) - per_cell
    offset = torch.arange(len(cell), device=device) - first[cell]
    row_table = torch.nn.utils.rnn.pad_sequence(row_bands, batch_first=True, padding_value=-1)
    col_table = torch.nn.utils.rnn.pad_sequence(col_bands, batch_first=True, padding_value=-1)
    ncols = n_cols[c[cell]]
    row_band = row_table[a[cell], offset // ncols]
    col_band = col_table[c[cell], offset % ncols]
    return torch.stack([cells[cell, 0], cells[cell, 1], row_band, col_band], 1)


# ------------------------------------------------------------------------------------------------
# labelling units, layer summaries


def concept_lookup(concepts: ConceptDataset) -> tuple[np.ndarray, np.ndarray]:
    """(code -> category index, -1 for none; code -> name, '' for none) arrays over all codes."""
    code_category = np.full(concepts.n_codes, -1, dtype=np.int64)
    code_name = np.full(concepts.n_codes, "", dtype=object)
    for row in concepts.concepts.itertuples():
        code_category[row.code] = concepts.categories.index(row.category)
        code_name[row.code] = row.name
    return code_category, code_name


def label_units(
    iou: np.ndarray, code_category: np.ndarray, code_name: np.ndarray, categories: list[str], iou_threshold: float
) -> pd.DataFrame:
    """Per unit: best concept and IoU, its category, the runner-up, detector flag, and per category
    the best concept and IoU (for NetDissect's per-category count)."""
    n_units = iou.shape[0]
    order = np.argsort(-iou, axis=1, kind="stable")
    best, second = order[:, 0], order[:, 1] if iou.shape[1] > 1 else order[:, 0]
    rows = np.arange(n_units)
    table = pd.DataFrame(
        {
            "unit": rows,
            "concept": code_name[best],
            "category": [categories[i] if i >= 0 else "" for i in code_category[best]],
            "iou": iou[rows, best],
            "runner_up": code_name[second],
            "runner_up_iou": iou[rows, second],
        }
    )
    table["detector"] = table["iou"] > iou_threshold
    for index, category in enumerate(categories):
        in_category = np.where(code_category[None, :] == index, iou, -1.0)
        best_in = in_category.argmax(axis=1)
        table[f"{category}_concept"] = code_name[best_in]
        table[f"{category}_iou"] = np.maximum(in_category[rows, best_in], 0.0)
    return table


def layer_summary(units: pd.DataFrame, categories: list[str], iou_threshold: float) -> dict:
    """Units, detectors, unique concepts by both counting rules, mean best IoU, per-category counts.

    unique_best: distinct best concepts among detector units (one label per unit).
    unique_per_category: NetDissect's count: per category, the distinct concepts among units whose
    best concept *within that category* exceeds the threshold, summed over categories.
    saturated_units, saturated_detectors: units whose threshold is their maximum activation (their mask is
    `>= T_k`), and how many of them are detectors (None when the table has no `saturated_threshold`).
    """
    detectors = units[units["detector"]]
    saturated = units["saturated_threshold"].astype(bool) if "saturated_threshold" in units else None
    summary = {
        "units": len(units),
        "detectors": len(detectors),
        "unique_best": int(detectors["concept"].nunique()),
        "unique_per_category": 0,
        "mean_best_iou": float(units["iou"].mean()) if len(units) else 0.0,
        "empty_units": int((units["mask_pixels"] == 0).sum()) if "mask_pixels" in units else None,
        "saturated_units": None if saturated is None else int(saturated.sum()),
        "saturated_detectors": None if saturated is None else int((saturated & units["detector"]).sum()),
    }
    for category in categories:
        of_category = detectors[detectors["category"] == category]
        summary[f"detectors_{category}"] = len(of_category)
        summary[f"unique_best_{category}"] = int(of_category["concept"].nunique())
        passing = units[units[f"{category}_iou"] > iou_threshold]
        unique = int(passing[f"{category}_concept"].nunique())
        summary[f"unique_per_category_{category}"] = unique
        summary["unique_per_category"] += unique
    return summary


# ------------------------------------------------------------------------------------------------
# intervals


def layer_numbers(
    iou: np.ndarray, code_category: np.ndarray, categories: list[str], iou_threshold: float
) -> dict[str, np.ndarray]:
    """The layer's headline numbers from IoU [..., K, n_codes], vectorised over leading axes:
    detectors, unique_best, unique_per_category and mean_best_iou (see `layer_summary`)."""
    n_codes = iou.shape[-1]
    codes = np.arange(n_codes)
    best = iou.argmax(-1)
    best_iou = np.take_along_axis(iou, best[..., None], -1)[..., 0]
    detector = best_iou > iou_threshold
    hit = ((best[..., None] == codes) & detector[..., None]).any(-2)  # [..., n_codes]
    numbers = {
        "detectors": detector.sum(-1),
        "unique_best": hit.sum(-1),
        "mean_best_iou": best_iou.mean(-1),
        "unique_per_category": 0,
    }
    for index, _ in enumerate(categories):
        in_category = np.where(code_category == index, iou, -1.0)
        best_in = in_category.argmax(-1)
        passing = np.take_along_axis(in_category, best_in[..., None], -1)[..., 0] > iou_threshold
        numbers["unique_per_category"] = numbers["unique_per_category"] + (
            ((best_in[..., None] == codes) & passing[..., None]).any(-2).sum(-1)
        )
    return numbers


def bootstrap_layer(
    per_image: PerImage,
    code_category: np.ndarray,
    categories: list[str],
    iou_threshold: float,
    *,
    resamples: int,
    seed: int,
    block: int = 25,
) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of the layer's headline numbers, resampling images with replacement."""
    rng = np.random.default_rng(seed)
    n_images = len(per_image.area)
    draws: dict[str, list] = {}
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        weights = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=size)
        intersection, unit_area, label_area, _ = per_image.sums(weights)
        iou = iou_from_counts(intersection, unit_area, label_area, code_category)
        numbers = layer_numbers(iou, code_category, categories, iou_threshold)
        for name, values in numbers.items():
            draws.setdefault(name, []).append(np.asarray(values, dtype=np.float64))
    return {
        name: tuple(float(x) for x in np.percentile(np.concatenate(values), [2.5, 97.5]))
        for name, values in draws.items()
    }
