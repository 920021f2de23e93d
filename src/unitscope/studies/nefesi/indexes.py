"""The nefesi indexes, Neuron-Feature descriptors (colour names, preferred angle) and decompositions, computed for
all channels of a layer at once from its probes (see unitscope.studies.nefesi.stages for the definitions)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from unitscope.models.receptive_field import ReceptiveField
from unitscope.studies.nefesi.probes import LUMA, LayerProbes
from unitscope.studies.nefesi.topn import TopN

# Basic colour terms (Berlin & Kay) with representative sRGB values; NF pixels are named by nearest in CIELab.
COLOR_TERMS = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "red": (200, 25, 30),
    "green": (40, 150, 50),
    "blue": (30, 60, 200),
    "yellow": (245, 220, 40),
    "orange": (245, 130, 20),
    "brown": (120, 70, 30),
    "pink": (245, 160, 190),
    "purple": (120, 40, 150),
}


# ----------------------------------------------------------------------------------------------
# indexes


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1], [..., 3] -> CIELab (D65)."""
    rgb = np.clip(rgb, 0, 1)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ matrix.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def color_name_shares(rgb: np.ndarray) -> np.ndarray:
    """[C, h, w, 3] sRGB images -> [C, len(COLOR_TERMS)] share of pixels nearest to each colour term (CIELab)."""
    terms = _srgb_to_lab(np.array(list(COLOR_TERMS.values()), dtype=np.float64) / 255)
    lab = _srgb_to_lab(rgb.reshape(rgb.shape[0], -1, 3).astype(np.float64))
    nearest = ((lab[:, :, None, :] - terms[None, None]) ** 2).sum(-1).argmin(-1)  # [C, pixels]
    counts = np.stack([(nearest == k).sum(1) for k in range(len(terms))], axis=1)
    return counts / nearest.shape[1]


def nf_orientation(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dominant edge orientation (degrees in [0, 180), 0 = horizontal edge, counter-clockwise) and its coherence
    in [0, 1] from the structure tensor of each NF's luminance. [C, h, w, 3] -> ([C], [C])."""
    luma = rgb @ np.array(LUMA)
    gy = luma[:, 2:, 1:-1] - luma[:, :-2, 1:-1]
    gx = luma[:, 1:-1, 2:] - luma[:, 1:-1, :-2]
    gy = -gy  # rows grow downwards; angles are counter-clockwise with y up
    jxx, jyy, jxy = (gx * gx).sum((1, 2)), (gy * gy).sum((1, 2)), (gx * gy).sum((1, 2))
    gradient = 0.5 * np.degrees(np.arctan2(2 * jxy, jxx - jyy))
    angle = np.mod(gradient + 90.0, 180.0)
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / np.maximum(jxx + jyy, 1e-12)
    return angle, coherence


def nf_rgb(nf: torch.Tensor, mean, std) -> np.ndarray:
    """Neuron Features from normalised space [C, 3, h, w] to displayable sRGB [C, h, w, 3] in [0, 1]."""
    pixels = nf * torch.tensor(list(std)).view(1, 3, 1, 1) + torch.tensor(list(mean)).view(1, 3, 1, 1)
    return pixels.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def class_selectivity(
    weights: torch.Tensor, classes: torch.Tensor, n_classes: int, *, coverage: float = 1.0, population: float = 0.1
) -> dict[str, np.ndarray]:
    """Class index and population code per channel, all channels at once.

    weights [C, N] (wₙ, rows summing to 1, 0 for empty slots); classes [C, N] class codes in [0, n_classes)
    (−1 for empty slots). Returns freq [C, n_classes], M, K, index, population code per channel.
    """
    channels, n = weights.shape
    codes = classes.clamp(min=0)
    freq = torch.zeros(channels, n_classes, dtype=torch.float64)
    freq.scatter_add_(1, codes, (weights * (classes >= 0)).double())
    ranked = torch.sort(freq, dim=1, descending=True).values
    total = ranked.sum(dim=1, keepdim=True)
    covered = torch.cumsum(ranked, dim=1) >= coverage * total - 1e-6  # weights are float32: allow rounding
    present = (ranked > 0).sum(dim=1)
    m = torch.minimum(torch.where(covered.any(dim=1), covered.float().argmax(dim=1) + 1, present), present)
    exemplars = (classes >= 0).sum(dim=1)
    k = torch.minimum(exemplars, torch.tensor(n_classes))
    alive = freq.sum(dim=1) > 0
    index = torch.where(alive & (k > 1), (k - m).double() / (k - 1).clamp(min=1).double(), torch.nan)
    pc = (freq >= population - 1e-12).sum(dim=1)
    return {"freq": freq.numpy(), "M": m.numpy(), "K": k.numpy(), "index": index.numpy(), "population": pc.numpy()}


def selectivity_table(
    top: TopN,
    probes: LayerProbes,
    class_codes: np.ndarray,
    class_names: list[str],
    *,
    mean,
    std,
    class_coverage: float = 1.0,
    population_threshold: float = 0.1,
    color_name_share: float = 0.2,
) -> pd.DataFrame:
    """One row per channel: the four indexes and what they rest on (see the module docstring)."""
    channels = top.channels
    present = top.image >= 0
    responses = torch.where(present.unsqueeze(-1), probes.responses, torch.zeros(()))
    sums = responses.double().sum(dim=1)  # [C, T]
    reference = sums[:, 0]
    dead = ~(top.values.clamp(min=0).sum(dim=1) > 0) | ~(reference > 0)
    ratio = torch.where(dead.unsqueeze(1), torch.nan, sums / reference.clamp(min=1e-30).unsqueeze(1)).numpy()
    names = [t.name for t in probes.transforms]
    col = {name: i for i, name in enumerate(names)}
    rotations = [i for i, t in enumerate(probes.transforms) if t.kind == "rotate"]
    mirrors = [i for i, t in enumerate(probes.transforms) if t.kind == "mirror"]
    rgb = nf_rgb(probes.nf, mean, std)
    shares = color_name_shares(rgb)
    angle, coherence = nf_orientation(rgb)
    term_names = list(COLOR_TERMS)
    image_classes = torch.as_tensor(class_codes)[top.image.clamp(min=0)]
    image_classes = torch.where(present, image_classes, torch.full_like(image_classes, -1))
    classes = class_selectivity(
        top.weights(), image_classes, len(class_names), coverage=class_coverage, population=population_threshold
    )
    with np.errstate(invalid="ignore"):
        rotation_mean = ratio[:, rotations].mean(axis=1)
        mirror_mean = ratio[:, mirrors].mean(axis=1)
    table = {
        "channel": np.arange(channels),
        "exemplars": present.sum(dim=1).numpy(),
        "top_activation": top.values[:, 0].numpy(),
        "mean_exemplar_activation": torch.where(present, top.values, torch.nan).nanmean(dim=1).numpy(),
        "dead": dead.numpy(),
        "color_index": np.clip(1 - ratio[:, col["gray"]], 0, 1),
        "gray_ratio": ratio[:, col["gray"]],
        "color_names": [
            ", ".join(f"{term_names[k]} {row[k]:.2f}" for k in np.argsort(-row) if row[k] >= color_name_share)
            for row in shares
        ],
        "dominant_color": [term_names[int(np.argmax(row))] for row in shares],
        "orientation_index": np.clip(1 - rotation_mean, 0, 1),
        "preferred_angle": angle,
        "angle_coherence": coherence,
        "symmetry_index": np.clip(mirror_mean, 0, 1),
        "class_index": classes["index"],
        "class_M": classes["M"],
        "class_K": classes["K"],
        "top_class": [class_names[int(np.argmax(f))] if f.sum() > 0 else "" for f in classes["freq"]],
        "top_class_share": classes["freq"].max(axis=1),
        "population_code": classes["population"],
        "population_classes": [
            ", ".join(f"{class_names[k]} {f[k]:.2f}" for k in np.argsort(-f) if f[k] >= population_threshold - 1e-12)
            for f in classes["freq"]
        ],
    }
    for i in rotations + mirrors:
        table[f"ratio_{names[i]}"] = ratio[:, i]
    frame = pd.DataFrame(table)
    for column in ("color_index", "orientation_index", "symmetry_index", "preferred_angle", "angle_coherence"):
        frame.loc[frame["dead"], column] = np.nan
    return frame


def hierarchy_weights(children: torch.Tensor, top: TopN, shallow_top: TopN) -> np.ndarray:
    """[C_deep, C_shallow]: Σₙ wₙ · (max of shallow channel k over the deep unit's cone on exemplar n) / (top
    activation of k over the image set). 1 means k fires at its strongest under every exemplar of the deep one."""
    weights = top.weights().double()  # [C, N]
    values = torch.nan_to_num(children.double(), nan=0.0)  # [C, N, K]
    combined = torch.einsum("cn,cnk->ck", weights, values)
    peak = shallow_top.values[:, 0].double()
    return torch.where(peak > 0, combined / peak.clamp(min=1e-30), torch.zeros(())).numpy()


# ----------------------------------------------------------------------------------------------
# image decomposition


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


def hierarchy_tree(weights: dict[str, np.ndarray], layers: list[str], layer: str, channel: int, children: int):
    """Tree {layer, channel, weight, children: [...]} from `layer`'s channel down through the shallower
    `layers` (deep to shallow order given by `layers`, shallow first), `children` best per node."""
    position = layers.index(layer)

    def node(depth: int, chan: int, weight: float | None) -> dict:
        name = layers[depth]
        kids = []
        if depth > 0 and name in weights:
            row = weights[name][chan]
            for k in np.argsort(-row, kind="stable")[:children]:
                kids.append(node(depth - 1, int(k), float(row[k])))
        return {"layer": name, "channel": chan, "weight": weight, "children": kids}

    return node(position, channel, None)
