"""The rotation experiment (Bau et al. section 3.2): a layer's units Q^alpha A dissected per alpha and seed.

A random orthogonal Q (det +1), fractional powers Q^alpha via the real Schur form with every rotation angle
scaled by alpha, applied to the channel axis of the activations before thresholding (thresholds recomputed
for the rotated units). Q^0 is the identity for every seed, so alpha = 0 is dissected once and shared by the
seeds. Seed s draws Q from numpy's generator seeded with (config seed, s). Any layer whose output is
[N, C, h, w] will do (`rotate_network`): Q is C x C, whatever C is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from tqdm import tqdm

from unitscope.data.concepts import ConceptDataset
from unitscope.runtime import parallel_map
from unitscope.studies.dissection.caches import (
    LabelCache,
    batches,
    cache_activations,
    cache_labels,
    dissection_transform,
)
from unitscope.studies.dissection.dissect import DissectionError, concept_lookup, layer_summary, threshold_units
from unitscope.studies.dissection.layer_dissection import dissect_layer, unit_table


def random_rotation(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal n x n matrix with determinant +1 (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@dataclass(frozen=True)
class FractionalRotation:
    """Q = Z S Z^T (real Schur form: S block diagonal with 2 x 2 rotation blocks and +-1 entries);
    Q^alpha = Z S(alpha) Z^T with every rotation angle multiplied by alpha. Eigenvalues -1 come in
    pairs when det Q = +1; each pair is a rotation by pi in the plane of its two Schur vectors."""

    basis: np.ndarray  # Z [n, n]
    planes: np.ndarray  # [m, 2] indices (i, j) of each rotation plane in the Schur basis
    angles: np.ndarray  # [m] radians, in (-pi, pi]

    @classmethod
    def of(cls, q: np.ndarray) -> FractionalRotation:
        n = q.shape[0]
        if not np.allclose(q @ q.T, np.eye(n), atol=1e-8) or np.linalg.det(q) < 0:
            raise DissectionError("fractional rotation needs an orthogonal matrix with determinant +1")
        s, z = scipy.linalg.schur(q, output="real")
        planes, angles, minus_one = [], [], []
        i = 0
        while i < n:
            if i + 1 < n and s[i + 1, i] != 0:  # LAPACK leaves exact zeros below 1 x 1 blocks
                planes.append((i, i + 1))
                angles.append(math.atan2((s[i + 1, i] - s[i, i + 1]) / 2, (s[i, i] + s[i + 1, i + 1]) / 2))
                i += 2
            else:
                if s[i, i] < 0:
                    minus_one.append(i)
                i += 1
        planes += list(zip(minus_one[0::2], minus_one[1::2], strict=True))
        angles += [math.pi] * (len(minus_one) // 2)
        return cls(z, np.array(planes, dtype=np.int64).reshape(-1, 2), np.array(angles))

    def power(self, alpha: float) -> np.ndarray:
        """Q^alpha (orthogonal, det +1; Q^0 = I, Q^1 = Q, Q^a Q^b = Q^(a+b))."""
        s = np.eye(self.basis.shape[0])
        cos, sin = np.cos(alpha * self.angles), np.sin(alpha * self.angles)
        i, j = self.planes[:, 0], self.planes[:, 1]
        s[i, i], s[j, j], s[j, i], s[i, j] = cos, cos, sin, -sin
        return self.basis @ s @ self.basis.T


def rotate_maps(maps: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Apply a K x K matrix to the channel axis of [B, K, h, w] maps: unit i of the result is sum_j R_ij A_j."""
    return torch.einsum("ij,bjhw->bihw", rotation.to(maps.dtype), maps)


def rotated_cache(maps: np.ndarray, rotation: np.ndarray, path: Path, *, batch_size: int = 32) -> np.memmap:
    """The maps with their unit axis multiplied by `rotation`, as a float32 memmap at `path`."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=maps.shape)
    rotation_t = torch.from_numpy(np.asarray(rotation, dtype=np.float32))
    for start, stop in batches(maps.shape[0], batch_size):
        out[start:stop] = rotate_maps(torch.from_numpy(np.array(maps[start:stop])), rotation_t).numpy()
    return out


def rotated_summary(
    maps: np.ndarray,
    labels: LabelCache,
    concepts: ConceptDataset,
    lookup: tuple[np.ndarray, np.ndarray],
    *,
    quantile: float,
    iou_threshold: float,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict:
    """The layer summary of one set of (rotated) units: thresholds recomputed (a saturated one's mask is `>= T_k`, as
    in the dissection), no intervals; the tally on `device`."""
    rule = threshold_units(maps, quantile)
    tally = dissect_layer(
        maps, rule.values, labels, concepts.n_codes, batch_size=batch_size, saturated=rule.saturated, device=device
    )
    units = unit_table(tally, lookup, concepts.categories, iou_threshold, saturated=rule.saturated)
    return layer_summary(units, concepts.categories, iou_threshold)


def rotation_rows(
    maps: np.ndarray,
    labels: LabelCache,
    concepts: ConceptDataset,
    *,
    alphas: list[float],
    seeds: int,
    quantile: float,
    iou_threshold: float,
    seed: int,
    folder: Path,
    batch_size: int = 16,
    workers: int = 1,
    device: torch.device | str = "cpu",
) -> list[dict]:
    """One summary per (seed, alpha), in that order, with "alpha" and "seed"; rotated maps go to `folder`, the
    tallies run on `device`.

    The dissections are independent (each its own rotated units and thresholds), so they run `workers` at a time
    (`runtime.parallel_map`: one core each); alpha = 0 is dissected once for all seeds. The rows do not depend on
    `workers`."""
    lookup = concept_lookup(concepts)
    settings = {"quantile": quantile, "iou_threshold": iou_threshold, "batch_size": batch_size, "device": device}
    n_units = maps.shape[1]

    def rotation_of(s: int) -> FractionalRotation:
        return FractionalRotation.of(random_rotation(n_units, np.random.default_rng([seed, s])))

    rotations = parallel_map(rotation_of, list(range(seeds)), workers)
    jobs = [(s, float(alpha)) for s in range(seeds) for alpha in alphas if alpha != 0 or s == 0]
    bar = tqdm(total=len(jobs), desc="rotations", unit="dissection", mininterval=2)

    def dissect(job: tuple[int, float]) -> dict:
        s, alpha = job
        path = folder / f"rotated-{s}-{alpha:g}.npy"
        rotated = maps if alpha == 0 else rotated_cache(maps, rotations[s].power(alpha), path)
        summary = rotated_summary(rotated, labels, concepts, lookup, **settings)
        del rotated
        path.unlink(missing_ok=True)
        bar.update(1)
        return summary

    summaries = dict(zip(jobs, parallel_map(dissect, jobs, workers), strict=True))
    bar.close()
    return [
        {"alpha": float(alpha), "seed": s, **summaries[(s if alpha != 0 else 0, float(alpha))]}
        for s in range(seeds)
        for alpha in alphas
    ]


def rotate_network(
    network: torch.nn.Module,
    concepts: ConceptDataset,
    layer: str,
    preprocessing: Mapping,
    *,
    model_name: str,
    shape: tuple[int, int],
    alphas: list[float],
    seeds: int,
    quantile: float,
    iou_threshold: float,
    seed: int,
    folder: Path,
    batch_size: int = 16,
    workers: int = 1,
) -> list[dict]:
    """The rotation experiment on `layer` (a module path of `network`): its maps cached once (images read as
    `preprocessing` says), then `rotation_rows` with masks of `shape`, `workers` dissections at a time, the tallies
    on the network's device; memmaps go under `folder`."""
    transform = dissection_transform(preprocessing, model_name)
    maps = cache_activations(
        network, concepts, [layer], transform, Path(folder), model_name=model_name, batch_size=batch_size
    )[layer]
    labels = cache_labels(concepts, shape, Path(folder))
    print(
        f"rotation: {model_name} {layer} ({maps.shape[1]} units) on {concepts.describe()}; "
        f"masks {shape[0]}x{shape[1]}; alphas {list(alphas)}, {seeds} seeds",
        flush=True,
    )
    return rotation_rows(
        maps,
        labels,
        concepts,
        alphas=list(alphas),
        seeds=seeds,
        quantile=quantile,
        iou_threshold=iou_threshold,
        seed=seed,
        folder=Path(folder),
        batch_size=batch_size,
        workers=workers,
        device=next(network.parameters(), torch.empty(0)).device,
    )
