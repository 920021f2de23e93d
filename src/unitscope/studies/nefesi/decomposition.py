"""Image decomposition (nefesi): the most relevant channels of one image at a layer, each at its own position,
chosen greedily by activation relative to the channel's top activation with limited overlap of their fields."""

from __future__ import annotations

import torch
from torch import nn

from unitscope.hooks import ActivationRecorder
from unitscope.models.receptive_field import ReceptiveField
from unitscope.runtime import channels_last


def image_maps(model: nn.Module, layer: str, image: torch.Tensor) -> torch.Tensor:
    """The maps [C, H, W] of `layer` for one normalised image [3, H, W]."""
    with (
        torch.inference_mode(),
        ActivationRecorder(model, [layer], keep_maps=True, maps_dtype=torch.float32, stop_early=True) as recorder,
    ):
        recorder(channels_last(image.unsqueeze(0)))
    return recorder.maps[layer][0]


def decompose_image(
    maps: torch.Tensor,
    field: ReceptiveField,
    peak: torch.Tensor,
    image_size: tuple[int, int],
    *,
    count: int = 8,
    max_overlap: float = 0.3,
) -> list[dict]:
    """The most relevant channels of one image at each position, greedily.

    maps [C, H, W] of the image; peak [C] each channel's top activation over the image set. Units are ranked by
    relative activation a / peak; a unit is kept when its field (clipped to the image) overlaps every kept
    field by at most `max_overlap` (intersection over the smaller area), until `count` are kept.
    """
    channels, height, width = maps.shape
    relative = torch.where(peak.view(-1, 1, 1) > 0, maps / peak.clamp(min=1e-30).view(-1, 1, 1), torch.zeros(()))
    order = torch.argsort(relative.reshape(-1), descending=True, stable=True)
    kept: list[dict] = []
    limit_h, limit_w = image_size
    for flat in order.tolist():
        value = float(relative.reshape(-1)[flat])
        if value <= 0 or len(kept) >= count:
            break
        channel, rest = divmod(flat, height * width)
        y, x = divmod(rest, width)
        top, left, bottom, right = field.box(y, x)
        box = (max(top, 0), max(left, 0), min(bottom, limit_h), min(right, limit_w))
        area = (box[2] - box[0]) * (box[3] - box[1])
        if any(_overlap(box, other["box"], area, other["area"]) > max_overlap for other in kept):
            continue
        kept.append(
            {
                "channel": channel,
                "y": y,
                "x": x,
                "box": box,
                "area": area,
                "relative": value,
                "activation": float(maps[channel, y, x]),
            }
        )
    return kept


def _overlap(a, b, area_a, area_b) -> float:
    height = min(a[2], b[2]) - max(a[0], b[0])
    width = min(a[3], b[3]) - max(a[1], b[1])
    if height <= 0 or width <= 0:
        return 0.0
    return height * width / max(min(area_a, area_b), 1)


def decomposition_record(model_name: str, layer: str, row: dict, index: int, kept: list[dict]) -> dict:
    """What a decomposition's record (JSON) keeps: the image and its units, without their field areas."""
    return {
        "model": model_name,
        "layer": layer,
        "dataset": row["dataset"],
        "index": index,
        "image_id": row["image_id"],
        "class": row["class"],
        "units": [{k: v for k, v in item.items() if k != "area"} for item in kept],
    }
