"""Similarity matrices of a unit-run's seed images (torch): pixel, colour and activation space, the input of
`polysemanticity`."""

from __future__ import annotations

import torch

from unitscope.studies.actmax.image_metrics import hue_histograms

__all__ = ["pairwise_similarity", "seed_similarities"]


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


def seed_similarities(images: torch.Tensor, activations: torch.Tensor, hue_bins: int = 12) -> dict[str, torch.Tensor]:
    """Similarity matrices of images [N, 3, H, W] in the three spaces: pixel (1 - RMS difference: two flat fields
    of one colour are alike, which a correlation would miss), colour (hue-histogram intersection), activation
    (cosine of the rectified layer output [N, ...] the images produce)."""
    return {
        "pixel": pairwise_similarity(images.flatten(1), "rms"),
        "color": pairwise_similarity(hue_histograms(images, hue_bins), "intersection"),
        "activation": pairwise_similarity(activations.flatten(1).clamp(min=0), "cosine"),
    }
