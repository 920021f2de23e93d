"""Probes of the nefesi study: the exemplar crops of a layer's channels, transformed, through the model in large
batches on stride-aligned windows around their receptive fields; they also give the Neuron Features.

* **Neuron Feature (NF)** of a channel: the activation-weighted mean of its exemplar crops (`images`),
  NF = Σₙ wₙ · cropₙ with wₙ = aₙ / Σₘ aₘ (activations clipped at 0), cut to the part of the field that can hold
  image pixels.

How a channel's response to a transformed crop is measured (the same way as the exemplar activation): the
crop region, i.e. the part of the unit's field inside the image, is replaced by its transform; the response
is the channel's activation at the exemplar's location in that modified image. It is computed on a probe
window around the field (stride-aligned, inside the image; `receptive_field.probe_window`) instead of the
whole image, which gives the same number (identical computation; the untransformed probe reproduces the
stored exemplar activation, and the stage fails if it does not). Rotations and mirrors turn the padded crop
about the unit's field centre (for a unit whose field contains the whole image: the image about its centre);
pixels whose source falls outside the crop take the mean colour (so a 45° or 135° mirror of a non-square crop moves
each pixel to its reflection, never scrambles it). The transforms: identity, gray, rotations by s, 2s, …, 360° − s
(no 0° or 360° "rotation", which would be the crop itself) and mirrors about the axes 0°, 45°, 90°, 135°; `indexes`
turns the responses into the selectivity indexes. The gray crop (`color_grey`, in pixel space, copied to the three
channels) is either
  * luminance (default): Y = 0.299 R + 0.587 G + 0.114 B; or
  * principal_component (nefesi's): the crop's pixels in opponent colour space O = ((R + G + B − 1.5)/1.5, R − G,
    (R + G − 2B)/2), projected on their first principal component (largest eigenvalue of their covariance) and
    rescaled to [0, 1] by its minimum and maximum (nefesi: keras array_to_img(scale=True)). nefesi 1.0.4 takes the
    eigenvector's sign as numpy returns it, so some crops come out inverted; here the sign is fixed: the one whose
    projection correlates positively with the crop's luminance (if that correlation is 0, the one whose first
    non-zero coordinate is positive). A crop without variance has no principal component and keeps its luminance.

All transforms of all exemplar crops of all channels of a layer go through the model in large batches:
crops shared by several channels (same image and region) are probed once, and every probe returns all channels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from unitscope.data.manifest import ManifestDataset
from unitscope.hooks import ActivationRecorder
from unitscope.models.receptive_field import ReceptiveField, layer_receptive_field, probe_window, window_origin
from unitscope.runtime import channels_last, loader_workers
from unitscope.studies.nefesi.errors import NefesiError
from unitscope.studies.nefesi.images import field_crops, gather_crops
from unitscope.studies.nefesi.topn import TopN

SYMMETRY_AXES = (0, 45, 90, 135)
NF_CROP_BYTES = 256 * 2**20  # crops cut at once for the Neuron Features (float32), at most
LUMA = (0.299, 0.587, 0.114)
# nefesi's opponent colour space (nefesi.util.image.rgb2opp) on pixels in [0, 1]; its constant −1.5/1.5 offset of
# the first coordinate drops out when the pixels are centred
OPPONENT = ((1 / 1.5, 1 / 1.5, 1 / 1.5), (1.0, -1.0, 0.0), (0.5, 0.5, -1.0))
GREY_KINDS = {"luminance": "gray", "principal_component": "gray_pc"}  # color_grey -> its transform's kind (and name)


# ----------------------------------------------------------------------------------------------
# transforms of crop regions


@dataclass(frozen=True)
class Transform:
    name: str
    kind: str  # identity | gray (luminance) | gray_pc (principal component) | rotate | mirror
    angle: float = 0.0


def transforms(rotation_step: float = 15.0, color_grey: str = "luminance") -> list[Transform]:
    """identity, the gray of `color_grey` (luminance: "gray", principal_component: "gray_pc"), rotations by k·step
    (k = 1 … 360/step − 1), mirrors about 0°, 45°, 90°, 135°."""
    steps = 360.0 / rotation_step
    if rotation_step <= 0 or abs(steps - round(steps)) > 1e-9:
        raise NefesiError(f"nefesi.rotation_step must divide 360, got {rotation_step}")
    if color_grey not in GREY_KINDS:
        raise NefesiError(f"nefesi.color_grey must be one of {', '.join(GREY_KINDS)}, got {color_grey!r}")
    rotations = [
        Transform(f"rot{int(round(k * rotation_step)):03d}", "rotate", k * rotation_step)
        for k in range(1, int(round(steps)))
    ]
    mirrors = [Transform(f"mirror{axis:03d}", "mirror", float(axis)) for axis in SYMMETRY_AXES]
    grey = GREY_KINDS[color_grey]
    return [Transform("identity", "identity"), Transform(grey, grey), *rotations, *mirrors]


def _source_offsets(kind: str, angle: float, dy: torch.Tensor, dx: torch.Tensor):
    """Where (relative to the region centre, rows down) each output pixel takes its content from."""
    up = -dy
    theta = math.radians(angle)
    if kind == "rotate":  # content turns counter-clockwise by `angle`: sample at the inverse rotation
        sx = math.cos(theta) * dx + math.sin(theta) * up
        su = -math.sin(theta) * dx + math.cos(theta) * up
    elif kind == "mirror":  # reflection about the axis at `angle` (counter-clockwise from horizontal)
        c2, s2 = math.cos(2 * theta), math.sin(2 * theta)
        sx = c2 * dx + s2 * up
        su = s2 * dx - c2 * up
    else:
        raise NefesiError(f"unknown geometric transform {kind!r}")
    return -su, sx


def apply_transform(
    windows: torch.Tensor,
    regions: torch.Tensor,
    transform: Transform,
    mean: torch.Tensor,
    std: torch.Tensor,
    centres: torch.Tensor | None = None,
) -> torch.Tensor:
    """Transform the crop region of each window, leaving the rest as is.

    windows [B, K, P, Q] normalised images (K = 3 channels, RGB, or 1, grayscale: its gray transform changes
    nothing); regions [B, 4] (top, left, bottom, right) in window pixels (bottom/right exclusive); mean, std [K]
    of the normalisation; centres [B, 2] (row, col) in window pixels about which rotations and mirrors act
    (default: the region's centre). Content is taken only from the region (elsewhere: the mean colour, 0 after
    normalisation) and written only into it.
    """
    batch, channels, height, width = windows.shape
    if transform.kind == "identity" or (transform.kind in ("gray", "gray_pc") and channels == 1):
        return windows
    rows = torch.arange(height, dtype=torch.float32).view(1, height, 1)
    cols = torch.arange(width, dtype=torch.float32).view(1, 1, width)
    top, left, bottom, right = (regions[:, i].float().view(batch, 1, 1) for i in range(4))
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)  # [B, P, Q]
    if transform.kind in ("gray", "gray_pc"):
        pixels = windows * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
        if transform.kind == "gray":
            luma = (pixels * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        else:
            luma = principal_component_grey(pixels, inside)
        gray = (luma - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        return torch.where(inside.unsqueeze(1), gray, windows)
    if centres is None:
        centre_y, centre_x = (top + bottom - 1) / 2, (left + right - 1) / 2
    else:
        centre_y, centre_x = (centres[:, i].float().view(batch, 1, 1) for i in range(2))
    src_dy, src_dx = _source_offsets(transform.kind, transform.angle, rows - centre_y, cols - centre_x)
    src_y, src_x = centre_y + src_dy, centre_x + src_dx  # [B, P, Q] pixel centres
    grid = torch.stack([(2 * src_x + 1) / width - 1, (2 * src_y + 1) / height - 1], dim=-1)
    region_only = windows * inside.unsqueeze(1)  # content outside the region never leaks in
    moved = F.grid_sample(region_only, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.where(inside.unsqueeze(1), moved, windows)


def _component_signs(component: torch.Tensor, projection: torch.Tensor, luma: torch.Tensor) -> torch.Tensor:
    """±1 per crop: the sign that makes the projection [B, P, Q] correlate positively with the centred luminance
    [B, P, Q] (both 0 outside the crop); where they are uncorrelated, the sign that makes the component's [B, 3]
    first non-zero coordinate positive. Independent of the sign the eigensolver returns."""
    agreement = (projection * luma).sum(dim=(1, 2))
    scale = projection.square().sum(dim=(1, 2)).sqrt() * luma.square().sum(dim=(1, 2)).sqrt()
    lead = component.gather(1, (component.abs() > 1e-9).double().argmax(dim=1, keepdim=True)).squeeze(1)
    tie = agreement.abs() <= 1e-9 * scale
    return torch.where(tie, torch.where(lead < 0, -1.0, 1.0), torch.where(agreement < 0, -1.0, 1.0)).double()


def principal_component_grey(pixels: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """nefesi's gray, with a fixed sign (see the module docstring), all crops at once.

    pixels [B, 3, P, Q] in [0, 1]; inside [B, P, Q]: the crop. Returns [B, 1, P, Q] gray values in [0, 1] inside
    the crop (outside: undefined, the caller keeps its pixels)."""
    x = pixels.double()
    weight = inside.unsqueeze(1).double()
    count = weight.sum(dim=(2, 3)).clamp(min=1)  # [B, 1]
    opponent = torch.einsum("ij,bjpq->bipq", torch.tensor(OPPONENT, dtype=torch.float64), x)
    centred = (opponent - (opponent * weight).sum(dim=(2, 3), keepdim=True) / count.view(-1, 1, 1, 1)) * weight
    covariance = torch.einsum("bipq,bjpq->bij", centred, centred) / count.view(-1, 1, 1)
    component = torch.linalg.eigh(covariance).eigenvectors[:, :, -1]  # largest eigenvalue (eigh sorts ascending)
    projection = torch.einsum("bi,bipq->bpq", component, centred)
    luma = (x * torch.tensor(LUMA, dtype=torch.float64).view(1, 3, 1, 1)).sum(dim=1)
    luma_centred = (luma - (luma * weight[:, 0]).sum(dim=(1, 2), keepdim=True) / count.view(-1, 1, 1)) * weight[:, 0]
    projection = projection * _component_signs(component, projection, luma_centred).view(-1, 1, 1)
    low = projection.masked_fill(~inside, float("inf")).amin(dim=(1, 2), keepdim=True)
    high = projection.masked_fill(~inside, float("-inf")).amax(dim=(1, 2), keepdim=True)
    spread = high - low
    flat = ~(spread > 1e-5)  # no principal direction (beyond float32 rounding): the crop keeps its luminance
    grey = torch.where(flat, luma, (projection - low) / torch.where(flat, 1.0, spread))
    return grey.unsqueeze(1).to(pixels.dtype)


# ----------------------------------------------------------------------------------------------
# probes: re-running the model on transformed crops


def crop_geometry(field: ReceptiveField, y: int, x: int, image_size: tuple[int, int]):
    """The crop of unit (y, x) in image coordinates: the region its field covers inside the image (top, left,
    bottom, right), and twice the centre (row, col) that rotations and mirrors turn about.

    The centre is the field's centre (the padded crop turns about the unit, so content at the image border turns
    away from it and the mean colour turns in), except for a unit whose field contains the whole image: its
    crop is the image, turned about the image's centre (turning it about an off-centre unit would only push the
    image out of view)."""
    top, left, bottom, right = field.box(y, x)
    height, width = image_size
    region = (max(top, 0), max(left, 0), min(bottom, height), min(right, width))
    if top <= 0 and left <= 0 and bottom >= height and right >= width:
        return region, (height - 1, width - 1)
    return region, (top + bottom - 1, left + right - 1)


@dataclass
class LayerGeometry:
    field: ReceptiveField
    window: tuple[int, int]
    image_size: tuple[int, int]
    map_size: tuple[int, int]

    @classmethod
    def of(
        cls, model: nn.Module, layer: str, image_size: tuple[int, int], map_size: tuple[int, int], channels: int = 3
    ):
        """The geometry of `layer` on `channels` x `image_size` inputs (`layer_receptive_field`: any graph)."""
        field = layer_receptive_field(model, layer, tuple(image_size), channels=channels)
        return cls(field, probe_window(field, image_size), tuple(image_size), tuple(map_size))

    def whole_image(self) -> LayerGeometry:
        """The same field, probed on whole images (window = image): for layers not computed locally."""
        return LayerGeometry(self.field, tuple(self.image_size), self.image_size, self.map_size)

    def probe_layout(self, y: np.ndarray, x: np.ndarray):
        """Per unit: window origin (top, left), unit position in the window's map, and in window coordinates
        the crop region (top, left, bottom, right) followed by twice the transform centre (row, col)."""
        origins, positions, regions = [], [], []
        for yy, xx in zip(y.tolist(), x.tolist(), strict=True):
            origin, position = window_origin(self.field, yy, xx, self.window, self.image_size)
            region, twice_centre = crop_geometry(self.field, yy, xx, self.image_size)
            shift = (origin[0], origin[1], origin[0], origin[1], 2 * origin[0], 2 * origin[1])
            regions.append(tuple(v - d for v, d in zip((*region, *twice_centre), shift, strict=True)))
            origins.append(origin)
            positions.append(position)
        return np.asarray(origins, np.int64), np.asarray(positions, np.int64), np.asarray(regions, np.int64)

    def visible_extent(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Rows and columns of the field (in field coordinates) that hold image pixels for some unit."""
        extents = []
        for axis in range(2):
            size, stride, offset = self.field.size[axis], self.field.stride[axis], self.field.offset[axis]
            first_top, last_top = offset, offset + (self.map_size[axis] - 1) * stride
            start = max(0, -last_top)
            stop = min(size, self.image_size[axis] - first_top)
            extents.append((start, stop))
        return extents[0], extents[1]


# Given sorted image indices, yields (indices, normalised images [b, K, H, W]) chunk by chunk, in that order.
ImageBatches = Callable[[np.ndarray, int], Iterable[tuple[np.ndarray, torch.Tensor]]]


def tensor_batches(images: torch.Tensor) -> ImageBatches:
    """ImageBatches over images already in memory (tests, benchmarks)."""

    def batches(indices: np.ndarray, chunk: int):
        for start in range(0, len(indices), chunk):
            part = np.asarray(indices[start : start + chunk])
            yield part, images[torch.as_tensor(part)]

    return batches


def manifest_batches(frame: pd.DataFrame, transform, *, num_workers: int = 0) -> ImageBatches:
    """ImageBatches that decode the images of `frame` (column `path`) with a DataLoader (workers only as the
    job's threads allow: `runtime.loader_workers`)."""
    dataset = ManifestDataset(frame, transform)
    num_workers = loader_workers(num_workers)

    def batches(indices: np.ndarray, chunk: int):
        subset = torch.utils.data.Subset(dataset, [int(i) for i in indices])
        loader = torch.utils.data.DataLoader(subset, batch_size=chunk, shuffle=False, num_workers=num_workers)
        for images, original in loader:
            yield original.numpy(), images

    return batches


@dataclass
class LayerProbes:
    """Responses of the exemplars of one layer to every transform, plus what the NF and hierarchy need."""

    transforms: list[Transform]
    responses: torch.Tensor  # [C, N, T]
    nf: torch.Tensor  # [C, K, h, w] weighted mean of crops (normalised space, K input channels), visible extent
    nf_extent: tuple[tuple[int, int], tuple[int, int]]
    children: torch.Tensor | None  # [C, N, K] max of each shallower channel over the unit's cone
    probes: int
    forwards: int
    seconds: float
    geometry: LayerGeometry | None = None  # the field and probe window the probes used


def per_channel_responses(
    model: nn.Module,
    layer: str,
    top: TopN,
    images: torch.Tensor,
    *,
    mean: Iterable[float],
    std: Iterable[float],
    rotation_step: float = 15.0,
    channels: Iterable[int] | None = None,
    color_grey: str = "luminance",
) -> torch.Tensor:
    """The straightforward algorithm (nefesi's own loop), as a reference and benchmark baseline: for every channel
    and every transform, the channel's N exemplar images, whole, with the crop region transformed, through the
    model; the response is read at the exemplar's location. Returns [len(channels), N, T]."""
    mean_t = torch.tensor(list(mean), dtype=torch.float32)
    std_t = torch.tensor(list(std), dtype=torch.float32)
    height, width = images.shape[-2:]
    field = layer_receptive_field(model, layer, (height, width), channels=images.shape[1])
    transform_list = transforms(rotation_step, color_grey)
    channels = list(range(top.channels)) if channels is None else list(channels)
    out = torch.full((len(channels), top.n, len(transform_list)), float("nan"))
    with (
        torch.inference_mode(),
        ActivationRecorder(model, [layer], keep_maps=True, maps_dtype=torch.float32, stop_early=True) as recorder,
    ):
        for row, channel in enumerate(channels):
            present = torch.nonzero(top.image[channel] >= 0).flatten()
            image_ids, ys, xs = top.image[channel, present], top.y[channel, present], top.x[channel, present]
            exemplars = images[image_ids].float()
            geometry = [
                crop_geometry(field, y, x, (height, width)) for y, x in zip(ys.tolist(), xs.tolist(), strict=True)
            ]
            regions = torch.as_tensor([region for region, _ in geometry])
            centres = torch.as_tensor([centre for _, centre in geometry]).float() / 2
            for t, transform in enumerate(transform_list):
                recorder(channels_last(apply_transform(exemplars, regions, transform, mean_t, std_t, centres)))
                maps = recorder.maps[layer]
                out[row, present, t] = maps[torch.arange(len(present)), channel, ys, xs]
    return out


def _masked_max(maps: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """maps [R, K, h, w], boxes [R, 4] (top, left, bottom, right) -> [R, K] max inside each box."""
    _, _, height, width = maps.shape
    box = torch.as_tensor(boxes)
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    inside = (
        (rows >= box[:, 0, None, None])
        & (rows < box[:, 2, None, None])
        & (cols >= box[:, 1, None, None])
        & (cols < box[:, 3, None, None])
    )
    return maps.masked_fill(~inside.unsqueeze(1), float("-inf")).amax(dim=(2, 3))


def probe_layer(
    model: nn.Module,
    layer: str,
    top: TopN,
    image_batches: ImageBatches,
    *,
    image_size: tuple[int, int],
    mean: Iterable[float],
    std: Iterable[float],
    rotation_step: float = 15.0,
    color_grey: str = "luminance",
    shallower: str | None = None,
    batch_size: int = 256,
    images_per_chunk: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = True,
    tolerance: float = 1e-3,
    transform_list: list[Transform] | None = None,
    channel_ids: Iterable[int] | None = None,
    neuron_features: bool = True,
) -> LayerProbes:
    """Every exemplar crop of every channel under every transform, in large batches.

    Probes are (image, window, crop region): exemplars of several channels that share one are probed once, and
    every forward returns all channels. Images are loaded chunk by chunk (bounded memory). `color_grey`: the gray
    transform of the colour index (luminance or principal_component, see the module docstring). With `shallower`
    (a layer computed before `layer`) the untransformed probes also give, per exemplar, the maximum of every
    shallower channel over the unit's cone (the shallower units it is computed from).

    `transform_list`: a subset of `transforms(rotation_step, color_grey)` that starts with the identity (None: all
    of them). `channel_ids`: the layer's channel that each row of `top` holds, when `top` holds some channels only
    (an atlas shard); None: row c is channel c. `neuron_features` False: no Neuron Features (the result's `nf`
    has no pixels; the atlas cuts its own in its exemplar stage), which for a layer of whole-image units is most of
    the work: every exemplar's crop at the full field.
    """
    started = time.perf_counter()
    mean, std, device = list(mean), list(std), torch.device(device)
    transform_list = transforms(rotation_step, color_grey) if transform_list is None else list(transform_list)
    if not transform_list or transform_list[0].kind != "identity":
        raise NefesiError("probe transforms must start with the identity (it reproduces the exemplar activations)")
    geometry = LayerGeometry.of(model, layer, image_size, top.map_size, channels=len(mean))
    geometry = local_geometry(model, layer, geometry, len(mean), device, tolerance)
    prober = _LayerProber(layer, top, geometry, transform_list, mean, std, device, channel_ids, neuron_features)
    if shallower is not None:
        prober.follow(shallower, layer_receptive_field(model, shallower, tuple(image_size), channels=len(mean)))
    record = [layer] if shallower is None else [shallower, layer]
    total = len(prober.probes.keys) * len(prober.transforms)
    bar = tqdm(total=total, desc=f"probes {layer}", unit="probe", disable=not progress, mininterval=2)
    with (
        torch.inference_mode(),
        ActivationRecorder(model, record, keep_maps=True, maps_dtype=torch.float32, stop_early=True) as recorder,
    ):
        for chunk_images, images in image_batches(np.unique(prober.probes.keys[:, 0]), images_per_chunk):
            prober.run_chunk(recorder, chunk_images, images.float(), batch_size, bar)
    bar.close()
    return prober.result(started, tolerance)


def local_geometry(
    model: nn.Module, layer: str, geometry: LayerGeometry, channels: int, device, tolerance: float = 1e-3
) -> LayerGeometry:
    """`geometry` when its probe windows reproduce the whole-image activations of five units (corners, centre)
    on a random image; otherwise the same field probed on whole images, with a log line. Windows fail where a
    layer is not computed locally (padding that depends on the input's size, a field that is the whole image);
    whole images are slower but give the same number by construction."""
    if any(geometry.field.whole):
        print(
            f"{layer}: {geometry.field.describe()} (e.g. squeeze-and-excitation or attention): its crops, probe "
            "windows and Neuron Features cover the image along that axis",
            flush=True,
        )
    if tuple(geometry.window) == tuple(geometry.image_size):
        return geometry
    height, width = geometry.map_size
    ys, xs = np.array([0, 0, height - 1, height - 1, height // 2]), np.array([0, width - 1, 0, width - 1, width // 2])
    origins, positions, _ = geometry.probe_layout(ys, xs)
    image = torch.randn(1, channels, *geometry.image_size, generator=torch.Generator().manual_seed(0))
    (rows, cols), units = geometry.window, torch.arange(len(ys))
    windows = torch.stack([image[0, :, top : top + rows, left : left + cols] for top, left in origins.tolist()])
    with (
        torch.inference_mode(),
        ActivationRecorder(model, [layer], keep_maps=True, maps_dtype=torch.float32, stop_early=True) as recorder,
    ):
        recorder(channels_last(image.to(device)))
        whole = recorder.maps[layer][0][:, torch.as_tensor(ys), torch.as_tensor(xs)].T  # [5, C]
        recorder(channels_last(windows.to(device)))
        probed = recorder.maps[layer][units, :, torch.as_tensor(positions[:, 0]), torch.as_tensor(positions[:, 1])]
    error, scale = float((probed - whole).abs().max()), float(whole.abs().max())
    if error <= tolerance * max(scale, 1.0):
        return geometry
    print(
        f"{layer}: {rows}×{cols} px probe windows change its activations by up to {error:.3g} (largest "
        f"{scale:.3g}): the layer is not computed locally, so it is probed on whole images",
        flush=True,
    )
    return geometry.whole_image()


@dataclass
class ProbeSet:
    """The distinct probes of a layer's exemplars. Exemplar slots are flat indices c·N + n into the [C, N] top-N
    arrays; a probe is one (image, window origin, crop region, transform centre) that one or more slots share."""

    image: np.ndarray  # [C·N] image of each slot (−1: empty slot, fewer images than N)
    y: np.ndarray  # [C·N] map row of each slot
    x: np.ndarray  # [C·N] map column of each slot
    positions: np.ndarray  # [C·N, 2] the unit's position in its probe window's map
    keys: np.ndarray  # [P, 9] image, window origin (2), crop region in the window (4), twice the centre (2)
    exemplars: np.ndarray  # the non-empty slots, grouped by probe
    starts: np.ndarray  # [P + 1]: probe p answers for exemplars[starts[p]:starts[p + 1]]

    @classmethod
    def of(cls, top: TopN, geometry: LayerGeometry) -> ProbeSet:
        image = top.image.reshape(-1).numpy()
        y, x = top.y.reshape(-1).numpy(), top.x.reshape(-1).numpy()
        origins, positions, regions = geometry.probe_layout(y, x)
        exemplars = np.flatnonzero(image >= 0)  # fewer images than N leave empty slots
        keys = np.concatenate([image[:, None], origins, regions], axis=1)[exemplars]
        probe_keys, probe_of = np.unique(keys, axis=0, return_inverse=True)  # one probe per distinct crop
        probe_of = probe_of.reshape(-1)
        order = np.argsort(probe_of, kind="stable")
        exemplars, probe_of = exemplars[order], probe_of[order]
        starts = np.searchsorted(probe_of, np.arange(len(probe_keys) + 1))
        return cls(image, y, x, positions, probe_keys, exemplars, starts)


@dataclass
class _Chunk:
    """The probes of one chunk of images (their windows) and the exemplar slots they answer for (readouts)."""

    windows: torch.Tensor  # [U, K, P, Q] normalised probe windows (K input channels)
    regions: torch.Tensor  # [U, 4] crop region in the window
    centres: torch.Tensor  # [U, 2] transform centre in the window
    read_ex: np.ndarray  # [R] exemplar slot of each readout
    read_local: np.ndarray  # [R] its probe in this chunk
    read_slot: np.ndarray  # [R] its image in the chunk's image batch
    channel: torch.Tensor  # [R] its row of the top-N (its channel unless channel_ids says otherwise)
    py: torch.Tensor  # [R] its unit's position in the window's map
    px: torch.Tensor
    cone: np.ndarray | None  # [R, 4] its cone in the shallower layer's window map (with a shallower layer)


class _LayerProber:
    """The running state of `probe_layer`: responses, Neuron Features and cone maxima, filled chunk by chunk."""

    def __init__(
        self, layer: str, top: TopN, geometry: LayerGeometry, transform_list, mean, std, device, ids=None, nf=True
    ):
        self.layer, self.top, self.geometry, self.transforms = layer, top, geometry, transform_list
        self.channel_ids = torch.arange(top.channels) if ids is None else torch.as_tensor(list(ids), dtype=torch.long)
        if len(self.channel_ids) != top.channels:
            raise NefesiError(f"{len(self.channel_ids)} channel ids for a top-N of {top.channels} channels")
        self.mean = torch.tensor(list(mean), dtype=torch.float32)
        self.std = torch.tensor(list(std), dtype=torch.float32)
        self.device = device
        self.probes = ProbeSet.of(top, geometry)
        self.shallower: str | None = None
        self.shallow_field: ReceptiveField | None = None
        self.responses = torch.full((top.channels * top.n, len(transform_list)), float("nan"))
        self.children: torch.Tensor | None = None
        self.extent = geometry.visible_extent()
        (row0, row1), (col0, col1) = self.extent
        self.with_nf = nf
        self.nf = torch.zeros(top.channels, len(self.mean), *((row1 - row0, col1 - col0) if nf else (0, 0)))
        self.weights = top.weights().reshape(-1)
        self.forwards = 0

    def follow(self, shallower: str, field: ReceptiveField) -> None:
        """Also record, per exemplar, each channel of `shallower` (field `field`) at its maximum over the cone."""
        self.shallower, self.shallow_field = shallower, field

    def run_chunk(self, recorder, chunk_images: np.ndarray, images: torch.Tensor, batch_size: int, bar) -> None:
        """Every probe of the images `chunk_images` (normalised `images`) under every transform."""
        chunk = self._chunk(chunk_images, images)
        if self.with_nf:
            self._add_to_nf(chunk, images)
        count, n_transforms = len(chunk.windows), len(self.transforms)
        item_probe = np.tile(np.arange(count), n_transforms)
        item_transform = np.repeat(np.arange(n_transforms), count)
        for start in range(0, len(item_probe), batch_size):
            b_probe = item_probe[start : start + batch_size]
            self._forward(recorder, chunk, b_probe, item_transform[start : start + batch_size])
            bar.update(len(b_probe))

    def _chunk(self, chunk_images: np.ndarray, images: torch.Tensor) -> _Chunk:
        probes = self.probes
        slot_of = np.full(int(probes.keys[:, 0].max()) + 1, -1, dtype=np.int64)
        slot_of[chunk_images] = np.arange(len(chunk_images))
        chunk_probes = np.flatnonzero(np.isin(probes.keys[:, 0], chunk_images))
        keys = probes.keys[chunk_probes]
        window_h, window_w = self.geometry.window
        windows = gather_crops(
            images, slot_of[keys[:, 0]], keys[:, 1], keys[:, 2], np.arange(window_h), np.arange(window_w)
        )
        counts = probes.starts[chunk_probes + 1] - probes.starts[chunk_probes]
        read_ex = np.concatenate([probes.exemplars[probes.starts[p] : probes.starts[p + 1]] for p in chunk_probes])
        read_local = np.repeat(np.arange(len(chunk_probes)), counts)
        cone = None
        if self.shallower is not None:
            origins = keys[read_local, 1:3]
            cone = _cone_boxes(self.geometry, self.shallow_field, probes.y[read_ex], probes.x[read_ex], origins)
        return _Chunk(
            windows,
            torch.as_tensor(keys[:, 3:7]),
            torch.as_tensor(keys[:, 7:9]).float() / 2,
            read_ex,
            read_local,
            slot_of[probes.image[read_ex]],
            torch.as_tensor(read_ex // self.top.n),
            torch.as_tensor(probes.positions[read_ex, 0]),
            torch.as_tensor(probes.positions[read_ex, 1]),
            cone,
        )

    def _add_to_nf(self, chunk: _Chunk, images: torch.Tensor) -> None:
        """Neuron Features: the weighted crops of the field (visible extent), padded with 0 = mean colour; cut a few
        readouts at a time, so memory stays bounded when many units share a chunk's images (a whole layer of
        whole-image units: 2,000 readouts of 416-px crops would be 4 GB at once)."""
        ys, xs = self.probes.y[chunk.read_ex], self.probes.x[chunk.read_ex]
        crop_bytes = 4 * self.nf[0].numel()
        step = max(1, NF_CROP_BYTES // max(crop_bytes, 1))
        for start in range(0, len(chunk.read_ex), step):
            part = slice(start, start + step)
            crops = field_crops(images, chunk.read_slot[part], self.geometry.field, ys[part], xs[part], self.extent)
            weights = self.weights[chunk.read_ex[part]].view(-1, 1, 1, 1)
            self.nf.index_add_(0, chunk.channel[part], crops * weights)

    def _forward(self, recorder, chunk: _Chunk, b_probe: np.ndarray, b_transform: np.ndarray) -> None:
        """One batch of (probe, transform) items through the model; read out the exemplars they answer for."""
        window_h, window_w = self.geometry.window
        inputs = torch.empty(len(b_probe), chunk.windows.shape[1], window_h, window_w)
        for t in np.unique(b_transform):
            rows = np.flatnonzero(b_transform == t)
            members = torch.as_tensor(b_probe[rows])
            inputs[torch.as_tensor(rows)] = apply_transform(
                chunk.windows[members],
                chunk.regions[members],
                self.transforms[t],
                self.mean,
                self.std,
                chunk.centres[members],
            )
        recorder(channels_last(inputs.to(self.device)))
        self.forwards += len(b_probe)
        lookup = np.full((len(chunk.windows), len(self.transforms)), -1, dtype=np.int64)
        lookup[b_probe, b_transform] = np.arange(len(b_probe))
        item_of_read = lookup[chunk.read_local]  # [R, T]: the batch item of each readout and transform, or -1
        self._read_responses(recorder, chunk, item_of_read)
        if self.shallower is not None:
            self._read_children(recorder, chunk, item_of_read)

    def _read_responses(self, recorder, chunk: _Chunk, item_of_read: np.ndarray) -> None:
        hit_r, hit_t = np.nonzero(item_of_read >= 0)
        if len(hit_r):
            item = torch.as_tensor(item_of_read[hit_r, hit_t])
            channel = self.channel_ids[chunk.channel[hit_r]]  # the row's channel of the layer
            values = recorder.maps[self.layer][item, channel, chunk.py[hit_r], chunk.px[hit_r]]
            self.responses[torch.as_tensor(chunk.read_ex[hit_r]), torch.as_tensor(hit_t)] = values.cpu()

    def _read_children(self, recorder, chunk: _Chunk, item_of_read: np.ndarray) -> None:
        """Per exemplar probed untransformed in this batch: each shallower channel's maximum over its cone."""
        identity_reads = np.flatnonzero(item_of_read[:, 0] >= 0)
        if not len(identity_reads):
            return
        shallow_maps = recorder.maps[self.shallower]
        if self.children is None:
            self.children = torch.full((self.top.channels * self.top.n, shallow_maps.shape[1]), float("nan"))
        window_map = tuple(shallow_maps.shape[-2:])
        box = chunk.cone[identity_reads].copy()
        box[:, 2] = np.minimum(box[:, 2], window_map[0])
        box[:, 3] = np.minimum(box[:, 3], window_map[1])
        picked = shallow_maps[torch.as_tensor(item_of_read[identity_reads, 0])].cpu()
        self.children[torch.as_tensor(chunk.read_ex[identity_reads])] = _masked_max(picked, box)

    def result(self, started: float, tolerance: float) -> LayerProbes:
        top = self.top
        responses = self.responses.view(top.channels, top.n, len(self.transforms))
        _check_identity(self.layer, top, responses, tolerance)
        children = None if self.children is None else self.children.view(top.channels, top.n, -1)
        return LayerProbes(
            self.transforms,
            responses,
            self.nf,
            self.extent,
            children,
            len(self.probes.keys),
            self.forwards,
            time.perf_counter() - started,
            self.geometry,
        )


def _check_identity(layer: str, top: TopN, responses: torch.Tensor, tolerance: float) -> None:
    """The untransformed probes must reproduce the exemplar activations of the top-N pass."""
    present = top.image >= 0
    if not present.any():
        return
    error = float((responses[:, :, 0] - top.values).abs()[present].max())
    scale = float(top.values.abs()[present].max())
    if not math.isfinite(error) or error > tolerance * max(scale, 1.0):
        raise NefesiError(
            f"layer {layer!r}: untransformed probe windows differ from the activations found in the top-N pass "
            f"by up to {error:.3g} (largest activation {scale:.3g}); the layer is not computed locally"
        )


def identity_error(probes: LayerProbes, top: TopN) -> float:
    """The largest difference between the untransformed probes and the exemplar activations (0 without any)."""
    present = top.image >= 0
    if not present.any():
        return 0.0
    return float((probes.responses[:, :, 0] - top.values).abs()[present].max())


def whole_image_exemplars(geometry: LayerGeometry, top: TopN) -> int:
    """Exemplars whose field contains the whole image (their crop is the image, turned about its centre)."""
    height, width = geometry.image_size
    count = 0
    for y, x in zip(top.y[top.image >= 0].tolist(), top.x[top.image >= 0].tolist(), strict=True):
        box_top, box_left, box_bottom, box_right = geometry.field.box(y, x)
        count += box_top <= 0 and box_left <= 0 and box_bottom >= height and box_right >= width
    return int(count)


def layer_record(
    model_name: str,
    layer: str,
    top: TopN,
    probes: LayerProbes,
    geometry: LayerGeometry,
    images: int,
    classes: int,
    shallower: str | None,
    notes: list[str] | None = None,
) -> dict:
    """What layer.json records about a layer's probes, with the number of images and classes of the image set
    and the shallower layer its hierarchy weights refer to; `notes` (e.g. a grayscale model's colour index),
    when there are any."""
    record = {
        "model": model_name,
        "layer": layer,
        "channels": top.channels,
        "top_n": top.n,
        "images": images,
        "classes": classes,
        "map_size": list(top.map_size),
        "receptive_field": geometry.field.as_dict(),
        "probe_window": list(geometry.window),
        "nf_extent": [list(probes.nf_extent[0]), list(probes.nf_extent[1])],
        "transforms": [t.name for t in probes.transforms],
        "probes": probes.probes,
        "forwards": probes.forwards,
        "exemplar_crops": int((top.image >= 0).sum()),
        "whole_image_exemplars": whole_image_exemplars(geometry, top),
        "image_size": list(geometry.image_size),
        "seconds": round(probes.seconds, 2),
        "identity_max_abs_error": identity_error(probes, top),
        "shallower": shallower,
    }
    if notes:
        record["notes"] = list(notes)
    return record


def probe_report(info: dict, probes: LayerProbes, channels: int) -> str:
    """One line for the log: the probe counts, their time and the identity error of a layer."""
    window = info["probe_window"]
    return (
        f"{info['layer']}: {probes.probes} probes × {len(probes.transforms)} transforms = {probes.forwards} windows "
        f"of {window[0]}×{window[1]} px for {info['exemplar_crops']} exemplar crops in "
        f"{probes.seconds:.1f} s ({channels / max(probes.seconds, 1e-9):.2f} channels/s); identity error "
        f"{info['identity_max_abs_error']:.2g}"
    )


def _cone_boxes(deep: LayerGeometry, shallow: ReceptiveField, y, x, origins) -> np.ndarray:
    """Per deep unit: the shallow-layer positions, in its probe window's shallow map, whose whole field lies in
    the deep unit's field (the units it is computed from). [U, 4] (top, left, bottom, right), not yet clipped
    to the map's far edge."""
    y, x = np.asarray(y, np.int64), np.asarray(x, np.int64)
    origins = np.asarray(origins, np.int64).reshape(-1, 2)
    out = []
    for axis, unit in enumerate((y, x)):
        stride, offset, size = shallow.stride[axis], shallow.offset[axis], shallow.size[axis]
        if shallow.whole[axis]:  # every shallow unit sees the whole image: the whole shallow map
            out.append((np.zeros_like(unit), np.full_like(unit, np.iinfo(np.int64).max // 2)))
            continue
        lo = deep.field.offset[axis] + (0 if deep.field.whole[axis] else unit * deep.field.stride[axis])
        hi = lo + deep.field.size[axis]
        base = origins[:, axis] // stride
        first = -((-(lo - offset)) // stride) - base  # ceil
        last = (hi - size - offset) // stride - base  # inclusive
        out.append((np.maximum(first, 0), last + 1))
    return np.stack([out[0][0], out[1][0], out[0][1], out[1][1]], axis=1)
