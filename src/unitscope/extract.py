"""Activation extraction: one forward pass per (model, dataset) writes a Zarr v3 store per requested layer.

Store layout (a directory, written under a temporary name and renamed when complete):
  means     [N, C]        float32  per-channel spatial mean of the layer's output
  maps      [N, C, H, W]  float16  full maps, only when asked for, chunked by blocks of images
  peak      [N, C]        float32  for [N, C, H, W] outputs: each image's maximum over the channel's map
  peak_at   [N, C]        int32    where that maximum is, y * W + x (the first in row-major order; attrs map_size
                                   [H, W]): a unit's top exemplars without another pass (the atlas's top-N)
  image_id  [N]           str      aligned with the included rows of the dataset's manifest
  attrs: model, dataset, layer, checkpoint sha256, preprocessing, package versions, params.
The forward pass stops as soon as the deepest requested layer has fired (later layers are not computed). The
pass writes its stores into one folder (`<dataset>.pass/<layer>.zarr`); each store is then published to its
own path by `fsutil.publish_tree` (hard links, no copy), so every store stays its own Snakemake output.
"""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader
from tqdm import tqdm

from unitscope.data.manifest import ManifestDataset, read_manifest
from unitscope.errors import UnitscopeError
from unitscope.fsutil import atomic_path, publish_tree
from unitscope.hooks import ActivationRecorder
from unitscope.models.preprocessing import build_transform
from unitscope.models.registry import load_model, resolve_layer
from unitscope.runtime import RunSettings, channels_last, inference_copy, make_loader, pick_device
from unitscope.settings import ModelRef

VERSIONED_PACKAGES = ("torch", "torchvision", "numpy", "zarr", "pillow", "unitscope")


class ExtractionError(UnitscopeError, RuntimeError):
    """Extraction produced something unusable (e.g. non-finite activations); one line."""


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class _LayerWriter:
    """One layer's store inside an open pass: buffers the means (and, for [N, C, H, W] maps, each image's peak per
    channel and where it is), streams the maps chunk by chunk."""

    def __init__(self, path: Path, layer: str, n_images: int, save_maps: bool, maps_chunk_images: int):
        self.group = zarr.open_group(store=str(path), mode="w", zarr_format=3)
        self.layer, self.n_images, self.save_maps, self.chunk = layer, n_images, save_maps, maps_chunk_images
        self.means = self.maps = self.peak = self.peak_at = None
        self.map_shape = self.map_size = None
        self.nonfinite = 0

    def add(self, start: int, stop: int, means: np.ndarray, maps: np.ndarray | None, peaks=None) -> None:
        self.nonfinite += int((~np.isfinite(means)).any(axis=1).sum())
        if self.means is None:
            self.means = np.empty((self.n_images, means.shape[1]), dtype=np.float32)
        self.means[start:stop] = means
        if peaks is not None:
            self._add_peaks(start, stop, *peaks)
        if not self.save_maps:
            return
        if maps.ndim != 4:
            raise ExtractionError(
                f"layer {self.layer!r}: output has shape {list(maps.shape)}; full maps need [N, C, H, W]"
            )
        if self.maps is None:
            self.map_shape = list(maps.shape[1:])
            chunks = (min(self.chunk, self.n_images), *maps.shape[1:])
            self.maps = self.group.create_array(
                "maps", shape=(self.n_images, *maps.shape[1:]), chunks=chunks, dtype="float16"
            )
        self.maps[start:stop] = maps

    def _add_peaks(self, start: int, stop: int, peak: torch.Tensor, where: torch.Tensor, map_size) -> None:
        if self.peak is None:
            self.peak = np.empty((self.n_images, peak.shape[1]), dtype=np.float32)
            self.peak_at = np.empty((self.n_images, peak.shape[1]), dtype=np.int32)
            self.map_size = [int(side) for side in map_size]
        self.peak[start:stop] = peak.numpy()
        self.peak_at[start:stop] = where.numpy()

    def _write(self, name: str, values: np.ndarray) -> None:
        chunks = (min(self.n_images, 4096), values.shape[1])
        self.group.create_array(name, shape=values.shape, chunks=chunks, dtype=values.dtype)[:] = values

    def finish(self, image_ids: list[str], attrs: dict) -> None:
        if self.nonfinite:
            raise ExtractionError(
                f"layer {self.layer!r}: {self.nonfinite} of {self.n_images} images gave NaN or infinite activations;"
                " store not written"
            )
        self._write("means", self.means)
        if self.peak is not None:  # each image's maximum per channel and its flat location y * W + x
            self._write("peak", self.peak)
            self._write("peak_at", self.peak_at)
        ids = self.group.create_array("image_id", shape=(self.n_images,), dtype=str, chunks=(self.n_images,))
        ids[:] = np.asarray(image_ids, dtype=object).astype(str)
        self.group.attrs.update(
            {
                **attrs,
                "layer": self.layer,
                "n_images": self.n_images,
                "n_channels": int(self.means.shape[1]),
                "map_shape": self.map_shape,
                "map_size": self.map_size,
                "package_versions": package_versions(),
            }
        )


def extract_layers(
    model: torch.nn.Module,
    loader: DataLoader,
    image_ids: list[str],
    layers: Mapping[str, bool],
    out_dir: str | os.PathLike,
    *,
    maps_chunk_images: int = 32,
    device: torch.device | str = "cpu",
    attrs: dict | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """One pass of `model` over `loader`, writing `out_dir/<layer>.zarr` for each of `layers` ({layer: keep full
    maps}); `out_dir` appears whole or not at all. Returns {layer: store path}."""
    device = torch.device(device)
    model = channels_last(model.to(device).eval())
    out_dir = Path(out_dir)
    maps_layers = [layer for layer, keep in layers.items() if keep]
    with (
        atomic_path(out_dir) as temp,
        ActivationRecorder(model, list(layers), keep_maps=maps_layers, stop_early=True, keep_peaks=True) as rec,
    ):
        temp.mkdir()
        writers = {
            layer: _LayerWriter(temp / f"{layer}.zarr", layer, len(image_ids), keep, maps_chunk_images)
            for layer, keep in layers.items()
        }
        bar = tqdm(
            total=len(image_ids),
            desc=f"extract {len(layers)} layer(s)",
            unit="img",
            disable=not progress,
            mininterval=2,
        )
        with torch.inference_mode():
            for batch, indices in loader:
                means = rec(channels_last(batch.to(device, non_blocking=True)))
                start, stop = int(indices[0]), int(indices[-1]) + 1
                for layer, writer in writers.items():
                    maps = rec.maps[layer].numpy() if layer in rec.maps else None
                    writer.add(start, stop, means[layer].numpy(), maps, rec.peaks.get(layer))
                bar.update(stop - start)
        bar.close()
        for writer in writers.values():
            writer.finish(image_ids, attrs or {})
    return {layer: out_dir / f"{layer}.zarr" for layer in layers}


def extract_to_zarr(
    model: torch.nn.Module,
    loader: DataLoader,
    image_ids: list[str],
    layer: str,
    out_path: str | os.PathLike,
    *,
    save_maps: bool = False,
    **options,
) -> Path:
    """One layer's store at `out_path` (a pass of one layer, published to its path)."""
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(dir=out_path.parent if out_path.parent.exists() else None) as scratch:
        stores = extract_layers(model, loader, image_ids, {layer: save_maps}, Path(scratch) / "pass", **options)
        publish_tree(stores[layer], out_path)
    return out_path


def run_extraction(
    model: ModelRef,
    *,
    dataset_name: str,
    manifest_path: str | os.PathLike,
    layers: Mapping[str, bool],
    out_dir: str | os.PathLike,
    run: RunSettings | None = None,
) -> dict[str, Path]:
    """The extraction stage: build the model, read the manifest, one pass writing a store per layer."""
    run = run or RunSettings()
    torch_device = pick_device(run.device)
    network = load_model(model)
    for layer in layers:
        resolve_layer(network, layer, model.name)  # one-line error listing valid layers
    network = inference_copy(network, keep=set(layers))  # BatchNorm folded: the same values, to float rounding
    manifest = read_manifest(manifest_path)
    dataset = ManifestDataset(manifest, build_transform(model.spec["preprocessing"]))
    loader = make_loader(dataset, batch_size=run.batch_size, num_workers=run.num_workers, device=torch_device)
    attrs = {
        "model": model.name,
        "arch": model.spec["arch"],
        "dataset": dataset_name,
        "checkpoint_sha256": model.spec.get("sha256"),
        "preprocessing": model.spec["preprocessing"],
        "device": str(torch_device),
        "params": {"model": model.spec, "layers": dict(layers)},
    }
    print(
        f"extracting {model.name} / {dataset_name}: {len(manifest)} images, one pass for {len(layers)} layer(s)"
        f" ({', '.join(layers)}) on {torch_device}",
        flush=True,
    )
    return extract_layers(
        network,
        loader,
        list(manifest["image_id"]),
        layers,
        out_dir,
        maps_chunk_images=run.maps_chunk_images,
        device=torch_device,
        attrs=attrs,
    )


def open_store(path: str | os.PathLike) -> zarr.Group:
    """Open a finished activation store read-only."""
    return zarr.open_group(store=str(path), mode="r")
