"""Probes of the nefesi study: the exemplar crops of a layer's channels, transformed, through the model in large
batches on stride-aligned windows around their receptive fields (see unitscope.studies.nefesi.stages for the
definitions)."""

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
from unitscope.models.receptive_field import ReceptiveField, probe_window, receptive_field, window_origin
from unitscope.studies.nefesi.topn import NefesiError, TopN, channels_last

SYMMETRY_AXES = (0, 45, 90, 135)
LUMA = (0.299, 0.587, 0.114)


# ----------------------------------------------------------------------------------------------
# transforms of crop regions


@dataclass(frozen=True)
class Transform:
    name: str
    kind: str  # identity | gray | rotate | mirror
    angle: float = 0.0


def transforms(rotation_step: float = 15.0) -> list[Transform]:
    """identity, gray, rotations by k·step (k = 1 … 360/step − 1), mirrors about 0°, 45°, 90°, 135°."""
    steps = 360.0 / rotation_step
    if rotation_step <= 0 or abs(steps - round(steps)) > 1e-9:
        raise NefesiError(f"nefesi.rotation_step must divide 360, got {rotation_step}")
    rotations = [
        Transform(f"rot{int(round(k * rotation_step)):03d}", "rotate", k * rotation_step)
        for k in range(1, int(round(steps)))
    ]
    mirrors = [Transform(f"mirror{axis:03d}", "mirror", float(axis)) for axis in SYMMETRY_AXES]
    return [Transform("identity", "identity"), Transform("gray", "gray"), *rotations, *mirrors]


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

    windows [B, 3, P, Q] normalised images; regions [B, 4] (top, left, bottom, right) in window pixels
    (bottom/right exclusive); mean, std [3] of the normalisation; centres [B, 2] (row, col) in window pixels
    about which rotations and mirrors act (default: the region's centre). Content is taken only from the region
    (elsewhere: the mean colour, 0 after normalisation) and written only into it.
    """
    if transform.kind == "identity":
        return windows
    batch, _, height, width = windows.shape
    rows = torch.arange(height, dtype=torch.float32).view(1, height, 1)
    cols = torch.arange(width, dtype=torch.float32).view(1, 1, width)
    top, left, bottom, right = (regions[:, i].float().view(batch, 1, 1) for i in range(4))
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)  # [B, P, Q]
    if transform.kind == "gray":
        pixels = windows * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
        luma = (pixels * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
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
    def of(cls, model: nn.Module, layer: str, image_size: tuple[int, int], map_size: tuple[int, int]):
        field = receptive_field(model, layer)
        return cls(field, probe_window(field, image_size), tuple(image_size), tuple(map_size))

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


# Given sorted image indices, yields (indices, normalised images [b, 3, H, W]) chunk by chunk, in that order.
ImageBatches = Callable[[np.ndarray, int], Iterable[tuple[np.ndarray, torch.Tensor]]]


def tensor_batches(images: torch.Tensor) -> ImageBatches:
    """ImageBatches over images already in memory (tests, benchmarks)."""

    def batches(indices: np.ndarray, chunk: int):
        for start in range(0, len(indices), chunk):
            part = np.asarray(indices[start : start + chunk])
            yield part, images[torch.as_tensor(part)]

    return batches


def manifest_batches(frame: pd.DataFrame, transform, *, num_workers: int = 0) -> ImageBatches:
    """ImageBatches that decode the images of `frame` (column `path`) with a DataLoader."""
    dataset = ManifestDataset(frame, transform)

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
    nf: torch.Tensor  # [C, 3, h, w] weighted mean of crops (normalised space), cut to the visible extent
    nf_extent: tuple[tuple[int, int], tuple[int, int]]
    children: torch.Tensor | None  # [C, N, K] max of each shallower channel over the unit's cone
    probes: int
    forwards: int
    seconds: float


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
) -> torch.Tensor:
    """The straightforward algorithm (nefesi's own loop), as a reference and benchmark baseline: for every channel
    and every transform, the channel's N exemplar images, whole, with the crop region transformed, through the
    model; the response is read at the exemplar's location. Returns [len(channels), N, T]."""
    mean_t = torch.tensor(list(mean), dtype=torch.float32)
    std_t = torch.tensor(list(std), dtype=torch.float32)
    field = receptive_field(model, layer)
    height, width = images.shape[-2:]
    transform_list = transforms(rotation_step)
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


def gather_crops(images, slots, tops, lefts, rows, cols) -> torch.Tensor:
    """Crops [R, 3, len(rows), len(cols)] at (tops + rows, lefts + cols) of images[slots]; 0 outside."""
    height, width = images.shape[-2:]
    rr = torch.as_tensor(tops)[:, None] + torch.as_tensor(rows)[None, :]
    cc = torch.as_tensor(lefts)[:, None] + torch.as_tensor(cols)[None, :]
    inside = ((rr >= 0) & (rr < height))[:, :, None] & ((cc >= 0) & (cc < width))[:, None, :]
    crops = images[
        torch.as_tensor(slots)[:, None, None],
        :,
        rr.clamp(0, height - 1)[:, :, None],
        cc.clamp(0, width - 1)[:, None, :],
    ]  # [R, h, w, 3]
    return (crops * inside.unsqueeze(-1)).permute(0, 3, 1, 2)


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
    shallower: str | None = None,
    batch_size: int = 256,
    images_per_chunk: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = True,
    tolerance: float = 1e-3,
) -> LayerProbes:
    """Every exemplar crop of every channel under every transform, in large batches.

    Probes are (image, window, crop region): exemplars of several channels that share one are probed once, and
    every forward returns all channels. Images are loaded chunk by chunk (bounded memory). With `shallower`
    (a layer computed before `layer`) the untransformed probes also give, per exemplar, the maximum of every
    shallower channel over the unit's cone (the shallower units it is computed from).
    """
    started = time.perf_counter()
    device = torch.device(device)
    mean_t = torch.tensor(list(mean), dtype=torch.float32)
    std_t = torch.tensor(list(std), dtype=torch.float32)
    geometry = LayerGeometry.of(model, layer, image_size, top.map_size)
    transform_list = transforms(rotation_step)
    n_transforms = len(transform_list)
    channels, n = top.channels, top.n
    flat_image = top.image.reshape(-1).numpy()
    flat_y, flat_x = top.y.reshape(-1).numpy(), top.x.reshape(-1).numpy()
    origins, positions, regions = geometry.probe_layout(flat_y, flat_x)
    exemplar_ids = np.flatnonzero(flat_image >= 0)  # fewer images than N leave empty slots
    keys = np.concatenate([flat_image[:, None], origins, regions], axis=1)[exemplar_ids]
    probe_keys, probe_of = np.unique(keys, axis=0, return_inverse=True)  # one probe per distinct crop
    probe_of = probe_of.reshape(-1)
    order = np.argsort(probe_of, kind="stable")
    exemplar_ids, probe_of = exemplar_ids[order], probe_of[order]
    starts = np.searchsorted(probe_of, np.arange(len(probe_keys) + 1))
    window_h, window_w = geometry.window

    record = [layer] if shallower is None else [shallower, layer]
    shallow_field = receptive_field(model, shallower) if shallower is not None else None
    responses = torch.full((channels * n, n_transforms), float("nan"))
    children = None
    (row0, row1), (col0, col1) = geometry.visible_extent()
    nf = torch.zeros(channels, 3, row1 - row0, col1 - col0)
    weights = top.weights().reshape(-1)
    field = geometry.field

    unique_images = np.unique(probe_keys[:, 0])
    forwards = 0
    bar = tqdm(
        total=len(probe_keys) * n_transforms, desc=f"probes {layer}", unit="probe", disable=not progress, mininterval=2
    )
    with (
        torch.inference_mode(),
        ActivationRecorder(model, record, keep_maps=True, maps_dtype=torch.float32, stop_early=True) as recorder,
    ):
        for chunk_images, images in image_batches(unique_images, images_per_chunk):
            images = images.float()
            slot_of = np.full(int(unique_images.max()) + 1, -1, dtype=np.int64)
            slot_of[chunk_images] = np.arange(len(chunk_images))
            chunk_probes = np.flatnonzero(np.isin(probe_keys[:, 0], chunk_images))
            u = len(chunk_probes)
            ck = probe_keys[chunk_probes]
            windows = gather_crops(
                images, slot_of[ck[:, 0]], ck[:, 1], ck[:, 2], np.arange(window_h), np.arange(window_w)
            )
            region_t = torch.as_tensor(ck[:, 3:7])
            centre_t = torch.as_tensor(ck[:, 7:9]).float() / 2
            # readouts: the exemplars these probes answer for
            counts = starts[chunk_probes + 1] - starts[chunk_probes]
            read_ex = np.concatenate([exemplar_ids[starts[p] : starts[p + 1]] for p in chunk_probes])
            read_local = np.repeat(np.arange(u), counts)
            read_channel = torch.as_tensor(read_ex // n)
            read_py = torch.as_tensor(positions[read_ex, 0])
            read_px = torch.as_tensor(positions[read_ex, 1])
            # Neuron Features: weighted crops of the field (visible extent), padded with 0 = mean colour
            boxes = np.array(
                [field.box(int(yy), int(xx)) for yy, xx in zip(flat_y[read_ex], flat_x[read_ex], strict=True)]
            ).reshape(-1, 4)
            crops = gather_crops(
                images,
                slot_of[flat_image[read_ex]],
                boxes[:, 0],
                boxes[:, 1],
                np.arange(row0, row1),
                np.arange(col0, col1),
            )
            nf.index_add_(0, read_channel, crops * weights[read_ex].view(-1, 1, 1, 1))
            if shallower is not None:
                cone = _cone_boxes(geometry, shallow_field, flat_y[read_ex], flat_x[read_ex], ck[read_local, 1:3])
            item_probe = np.tile(np.arange(u), n_transforms)
            item_transform = np.repeat(np.arange(n_transforms), u)
            for batch_start in range(0, len(item_probe), batch_size):
                b_probe = item_probe[batch_start : batch_start + batch_size]
                b_transform = item_transform[batch_start : batch_start + batch_size]
                inputs = torch.empty(len(b_probe), 3, window_h, window_w)
                for t in np.unique(b_transform):
                    rows = np.flatnonzero(b_transform == t)
                    members = torch.as_tensor(b_probe[rows])
                    inputs[torch.as_tensor(rows)] = apply_transform(
                        windows[members], region_t[members], transform_list[t], mean_t, std_t, centre_t[members]
                    )
                recorder(channels_last(inputs.to(device)))
                forwards += len(b_probe)
                lookup = np.full((u, n_transforms), -1, dtype=np.int64)
                lookup[b_probe, b_transform] = np.arange(len(b_probe))
                item_of_read = lookup[read_local]  # [R, T]
                hit_r, hit_t = np.nonzero(item_of_read >= 0)
                if len(hit_r):
                    item = torch.as_tensor(item_of_read[hit_r, hit_t])
                    values = recorder.maps[layer][item, read_channel[hit_r], read_py[hit_r], read_px[hit_r]]
                    responses[torch.as_tensor(read_ex[hit_r]), torch.as_tensor(hit_t)] = values.cpu()
                if shallower is not None:
                    identity_reads = np.flatnonzero(item_of_read[:, 0] >= 0)
                    if len(identity_reads):
                        shallow_maps = recorder.maps[shallower]
                        if children is None:
                            children = torch.full((channels * n, shallow_maps.shape[1]), float("nan"))
                        window_map = tuple(shallow_maps.shape[-2:])
                        box = cone[identity_reads].copy()
                        box[:, 2] = np.minimum(box[:, 2], window_map[0])
                        box[:, 3] = np.minimum(box[:, 3], window_map[1])
                        picked = shallow_maps[torch.as_tensor(item_of_read[identity_reads, 0])].cpu()
                        children[torch.as_tensor(read_ex[identity_reads])] = _masked_max(picked, box)
                bar.update(len(b_probe))
    bar.close()
    responses = responses.view(channels, n, n_transforms)
    present = top.image >= 0
    identity = responses[:, :, 0]
    if present.any():
        error = float((identity - top.values).abs()[present].max())
        scale = float(top.values.abs()[present].max())
        if not math.isfinite(error) or error > tolerance * max(scale, 1.0):
            raise NefesiError(
                f"layer {layer!r}: untransformed probe windows differ from the activations found in the top-N pass "
                f"by up to {error:.3g} (largest activation {scale:.3g}); the layer is not computed locally"
            )
    if children is not None:
        children = children.view(channels, n, -1)
    return LayerProbes(
        transform_list,
        responses,
        nf,
        ((row0, row1), (col0, col1)),
        children,
        len(probe_keys),
        forwards,
        time.perf_counter() - started,
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
        lo = deep.field.offset[axis] + unit * deep.field.stride[axis]
        hi = lo + deep.field.size[axis]
        base = origins[:, axis] // stride
        first = -((-(lo - offset)) // stride) - base  # ceil
        last = (hi - size - offset) // stride - base  # inclusive
        out.append((np.maximum(first, 0), last + 1))
    return np.stack([out[0][0], out[1][0], out[0][1], out[1][1]], axis=1)
