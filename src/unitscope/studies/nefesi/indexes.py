"""The nefesi selectivity indexes and Neuron-Feature descriptors (colour names, preferred angle), computed for all
channels of a layer at once from its probes (`probes`).

With R(T)ₙ the response of a channel to its n-th exemplar crop under transform T and R(id)ₙ the untransformed one
(= aₙ, its exemplar activation):

* color:       CI = clip(1 − Σₙ R(gray)ₙ / Σₙ R(id)ₙ, 0, 1); gray (`color_grey`, see `probes`): luminance
               Y = 0.299 R + 0.587 G + 0.114 B (default) or nefesi's first principal component of the crop in
               opponent colour space, with a fixed sign, copied to the three channels (in pixel space, before
               normalisation). nefesi's ratio is the same; only its grey differs. Dominant colour names of
               the NF: each NF pixel gets the nearest of 11 basic colour terms in CIELab; names covering at
               least `color_name_share` of the NF's pixels are listed with their shares. A grayscale model (one
               input channel) sees no colour: its colour index does not apply and is NaN (`GRAYSCALE_NOTE`).
* orientation: ratio(θ) = Σₙ R(rot θ)ₙ / Σₙ R(id)ₙ for θ = s, 2s, …, 360° − s (s = 15° by default);
               OI = clip(1 − meanθ ratio(θ), 0, 1): nefesi's mean of 1 − ratio(θ), without its 360° "rotation"
               (the crop itself), bilinear, turned about the unit's field centre with mean-colour padding.
               Preferred angle: the dominant edge orientation of the
               NF (structure tensor of its luminance; 0° = horizontal edge, counter-clockwise), with its
               coherence in [0, 1].
* symmetry:    ratio(φ) = Σₙ R(mirror φ)ₙ / Σₙ R(id)ₙ for mirror axes φ = 0° (top↔bottom), 45°, 90°
               (left↔right), 135°; SI = clip(meanφ ratio(φ), 0, 1) (1: mirrored crops drive it as much), nefesi's
               mean ratio; a 45°/135° mirror of a non-square crop moves each pixel to its reflection (mean colour
               where that leaves the crop), where nefesi's transpose scrambles it.
* class:       fₖ = Σ_{n: class(n)=k} wₙ (activation-weighted relative frequency of class k among the
               exemplars); sorted decreasingly, M = the fewest classes whose fₖ sum to ≥ `class_coverage`
               (nefesi's M). `class_index_scale`:
               classes (default): CSI = (K − M) / (K − 1) with K = min(N, classes in the image set): 0 when the
               exemplars spread over every class they could, 1 for one class. This is nefesi's (N − M)/(N − 1)
               whenever the set has at least N classes (its ImageNet setting); with fewer classes M can never
               reach N, so the largest possible M is used;
               top_n: nefesi's CSI = (N − M) / (N − 1) with N = the channel's exemplars (top-N): with K < N
               classes it lies in [(N − K)/(N − 1), 1] (0.909–1 for N = 100, K = 10); the two scales are
               related by 1 − CSI_top_n = (1 − CSI_classes)·(K − 1)/(N − 1).
               Population code: the number of classes with fₖ ≥ `population_threshold`, listed with their fₖ.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from unitscope.studies.nefesi.errors import NefesiError
from unitscope.studies.nefesi.images import nf_rgb
from unitscope.studies.nefesi.probes import GREY_KINDS, LUMA, LayerProbes
from unitscope.studies.nefesi.topn import TopN

CLASS_INDEX_SCALES = ("classes", "top_n")
GRAYSCALE_NOTE = "grayscale input (1 channel): the colour index does not apply and is left empty (NaN)"

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


def class_selectivity(
    weights: torch.Tensor,
    classes: torch.Tensor,
    n_classes: int,
    *,
    coverage: float = 1.0,
    population: float = 0.1,
    scale: str = "classes",
) -> dict[str, np.ndarray]:
    """Class index and population code per channel, all channels at once.

    weights [C, N] (wₙ, rows summing to 1, 0 for empty slots); classes [C, N] class codes in [0, n_classes)
    (−1 for empty slots); scale: classes ((K − M)/(K − 1)) or top_n (nefesi's (N − M)/(N − 1), N = the channel's
    exemplars). Returns freq [C, n_classes], M, K, index, population code per channel.
    """
    if scale not in CLASS_INDEX_SCALES:
        raise NefesiError(f"nefesi.class_index_scale must be one of {', '.join(CLASS_INDEX_SCALES)}, got {scale!r}")
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
    size = k if scale == "classes" else exemplars  # the number the index counts M against
    index = torch.where(alive & (size > 1), (size - m).double() / (size - 1).clamp(min=1).double(), torch.nan)
    pc = (freq >= population - 1e-12).sum(dim=1)
    return {"freq": freq.numpy(), "M": m.numpy(), "K": k.numpy(), "index": index.numpy(), "population": pc.numpy()}


def transform_ratios(top: TopN, probes: LayerProbes) -> tuple[np.ndarray, torch.Tensor]:
    """ratio(T) = Σₙ R(T)ₙ / Σₙ R(id)ₙ per channel and transform [C, T] (NaN for a dead channel), and which
    channels are dead (no positive exemplar activation or no positive untransformed response)."""
    present = top.image >= 0
    responses = torch.where(present.unsqueeze(-1), probes.responses, torch.zeros(()))
    sums = responses.double().sum(dim=1)  # [C, T]
    reference = sums[:, 0]
    dead = ~(top.values.clamp(min=0).sum(dim=1) > 0) | ~(reference > 0)
    ratio = torch.where(dead.unsqueeze(1), torch.nan, sums / reference.clamp(min=1e-30).unsqueeze(1)).numpy()
    return ratio, dead


def nf_descriptors(rgb: np.ndarray, color_name_share: float) -> dict[str, list | np.ndarray]:
    """Per NF (sRGB [C, h, w, 3]): the colour names covering at least `color_name_share` of its pixels, its
    dominant colour name, preferred angle and that angle's coherence."""
    term_names = list(COLOR_TERMS)
    shares = color_name_shares(rgb)
    angle, coherence = nf_orientation(rgb)
    return {
        "color_names": [
            ", ".join(f"{term_names[k]} {row[k]:.2f}" for k in np.argsort(-row) if row[k] >= color_name_share)
            for row in shares
        ],
        "dominant_color": [term_names[int(np.argmax(row))] for row in shares],
        "preferred_angle": angle,
        "angle_coherence": coherence,
    }


def layer_nf_descriptors(nf: torch.Tensor, mean, std, color_name_share: float, chunk: int = 64) -> dict:
    """`nf_descriptors` of a layer's Neuron Features [C, K, h, w] (normalised), `chunk` channels at a time: the
    colour naming works on float64 copies of every pixel, 10 GB and more at once for 1,280 NFs of 416 px. NFs without
    pixels (probes run without them) have no colour names (None) and no preferred angle (NaN)."""
    if nf.shape[-1] * nf.shape[-2] == 0:
        return {
            "color_names": [None] * len(nf),
            "dominant_color": [None] * len(nf),
            "preferred_angle": np.full(len(nf), np.nan),
            "angle_coherence": np.full(len(nf), np.nan),
        }
    parts = [
        nf_descriptors(nf_rgb(nf[start : start + chunk], mean, std), color_name_share)
        for start in range(0, max(len(nf), 1), chunk)
    ]
    return {
        key: [value for part in parts for value in part[key]]
        if isinstance(parts[0][key], list)
        else np.concatenate([part[key] for part in parts])
        for key in parts[0]
    }


def class_columns(
    top: TopN,
    class_codes: np.ndarray,
    class_names: list[str],
    *,
    coverage: float,
    population: float,
    scale: str = "classes",
) -> dict[str, list | np.ndarray]:
    """The class index and population code columns of the index table (classes of the exemplars' images)."""
    present = top.image >= 0
    image_classes = torch.as_tensor(class_codes)[top.image.clamp(min=0)]
    image_classes = torch.where(present, image_classes, torch.full_like(image_classes, -1))
    classes = class_selectivity(
        top.weights(), image_classes, len(class_names), coverage=coverage, population=population, scale=scale
    )
    return {
        "class_index": classes["index"],
        "class_M": classes["M"],
        "class_K": classes["K"],
        "top_class": [class_names[int(np.argmax(f))] if f.sum() > 0 else "" for f in classes["freq"]],
        "top_class_share": classes["freq"].max(axis=1),
        "population_code": classes["population"],
        "population_classes": [
            ", ".join(f"{class_names[k]} {f[k]:.2f}" for k in np.argsort(-f) if f[k] >= population - 1e-12)
            for f in classes["freq"]
        ],
    }


def _mean_ratio(ratio: np.ndarray, columns: list[int]) -> np.ndarray:
    """The mean of `ratio` over `columns` per channel (NaN where a channel's ratios are NaN, or with no columns)."""
    if not columns:
        return np.full(ratio.shape[0], np.nan)
    with np.errstate(invalid="ignore"):
        return ratio[:, columns].mean(axis=1)


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
    class_index_scale: str = "classes",
    channels=None,
) -> pd.DataFrame:
    """One row per channel: the four indexes and what they rest on (see the module docstring); the colour index
    and gray ratio are NaN for a grayscale model (one value in `mean`). The colour index uses the gray the probes
    used (luminance or principal component); `class_index_scale`: classes or top_n. An index whose transforms the
    probes left out (an atlas target that asks for some indexes only) is NaN. `channels`: the channel of each row
    of `top` (None: row c is channel c)."""
    present = top.image >= 0
    ratio, dead = transform_ratios(top, probes)
    names = [t.name for t in probes.transforms]
    grays = [i for i, t in enumerate(probes.transforms) if t.kind in GREY_KINDS.values()]
    rotations = [i for i, t in enumerate(probes.transforms) if t.kind == "rotate"]
    mirrors = [i for i, t in enumerate(probes.transforms) if t.kind == "mirror"]
    gray_ratio = ratio[:, grays[0]] if grays and len(list(mean)) > 1 else np.full(top.channels, np.nan)
    nf = layer_nf_descriptors(probes.nf, mean, std, color_name_share)
    rotation_mean, mirror_mean = _mean_ratio(ratio, rotations), _mean_ratio(ratio, mirrors)
    table = {
        "channel": np.arange(top.channels) if channels is None else np.asarray(channels, dtype=np.int64),
        "exemplars": present.sum(dim=1).numpy(),
        "top_activation": top.values[:, 0].numpy(),
        "mean_exemplar_activation": torch.where(present, top.values, torch.nan).nanmean(dim=1).numpy(),
        "dead": dead.numpy(),
        "color_index": np.clip(1 - gray_ratio, 0, 1),
        "gray_ratio": gray_ratio,
        "color_names": nf["color_names"],
        "dominant_color": nf["dominant_color"],
        "orientation_index": np.clip(1 - rotation_mean, 0, 1),
        "preferred_angle": nf["preferred_angle"],
        "angle_coherence": nf["angle_coherence"],
        "symmetry_index": np.clip(mirror_mean, 0, 1),
        **class_columns(
            top,
            class_codes,
            class_names,
            coverage=class_coverage,
            population=population_threshold,
            scale=class_index_scale,
        ),
    }
    for i in rotations + mirrors:
        table[f"ratio_{names[i]}"] = ratio[:, i]
    frame = pd.DataFrame(table)
    for column in ("color_index", "orientation_index", "symmetry_index", "preferred_angle", "angle_coherence"):
        frame.loc[frame["dead"], column] = np.nan
    return frame


def layer_index_table(
    model_name: str,
    layer: str,
    top: TopN,
    probes: LayerProbes,
    image_classes: pd.Series,
    *,
    mean,
    std,
    class_coverage: float,
    population_threshold: float,
    color_name_share: float,
    class_index_scale: str = "classes",
) -> pd.DataFrame:
    """A layer's indexes.parquet: its selectivity table (classes: `image_classes`, the class of each image of the
    target's image table), led by the model and layer."""
    codes, names = pd.factorize(image_classes, sort=True)
    table = selectivity_table(
        top,
        probes,
        codes,
        [str(n) for n in names],
        mean=mean,
        std=std,
        class_coverage=class_coverage,
        population_threshold=population_threshold,
        color_name_share=color_name_share,
        class_index_scale=class_index_scale,
    )
    table.insert(0, "layer", layer)
    table.insert(0, "model", model_name)
    return table
