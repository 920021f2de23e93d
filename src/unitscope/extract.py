"""Activation extraction: one Zarr v3 store per (model, dataset, layer).

Store layout (a directory, written under a temporary name and renamed when complete):
  means     [N, C]        float32  per-channel spatial mean of the layer's output
  maps      [N, C, H, W]  float16  full maps, only when asked for, chunked by blocks of images
  image_id  [N]           str      aligned with the included rows of the dataset's manifest
  attrs: model, dataset, layer, checkpoint sha256, preprocessing, package versions, params.
The forward pass stops as soon as the layer has fired (later layers are not computed).
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader
from tqdm import tqdm

from unitscope.data.manifest import ManifestDataset, read_manifest
from unitscope.errors import UnitscopeError
from unitscope.fsutil import atomic_path
from unitscope.hooks import ActivationRecorder
from unitscope.models.preprocessing import build_transform
from unitscope.models.registry import build_model, resolve_layer
from unitscope.runtime import make_loader, pick_device

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


def extract_to_zarr(
    model: torch.nn.Module,
    loader: DataLoader,
    image_ids: list[str],
    layer: str,
    out_path: str | os.PathLike,
    *,
    save_maps: bool = False,
    maps_chunk_images: int = 32,
    device: torch.device | str = "cpu",
    attrs: dict | None = None,
    progress: bool = True,
) -> Path:
    """Run `model` over `loader` and write the layer's activations to a Zarr store at `out_path`."""
    device = torch.device(device)
    model = model.to(device).eval()
    n_images = len(image_ids)
    out_path = Path(out_path)
    with (
        atomic_path(out_path) as temp,
        ActivationRecorder(model, [layer], keep_maps=save_maps, stop_early=True) as rec,
    ):
        group = zarr.open_group(store=str(temp), mode="w", zarr_format=3)
        means_array = maps_array = None
        nonfinite = 0
        bar = tqdm(total=n_images, desc=f"extract {layer}", unit="img", disable=not progress, mininterval=2)
        with torch.inference_mode():
            for batch, indices in loader:
                means = rec(batch.to(device, non_blocking=True))[layer].numpy()
                start, stop = int(indices[0]), int(indices[-1]) + 1
                nonfinite += int((~np.isfinite(means)).any(axis=1).sum())
                if means_array is None:
                    means_array = group.create_array(
                        "means",
                        shape=(n_images, means.shape[1]),
                        chunks=(min(n_images, 4096), means.shape[1]),
                        dtype="float32",
                    )
                    means_buffer = np.empty((n_images, means.shape[1]), dtype=np.float32)
                means_buffer[start:stop] = means
                if save_maps:
                    maps = rec.maps[layer].numpy()
                    if maps.ndim != 4:
                        raise ExtractionError(
                            f"layer {layer!r}: output has shape {list(maps.shape)}; full maps need [N, C, H, W]"
                        )
                    if maps_array is None:
                        maps_array = group.create_array(
                            "maps",
                            shape=(n_images, *maps.shape[1:]),
                            chunks=(min(maps_chunk_images, n_images), *maps.shape[1:]),
                            dtype="float16",
                        )
                    maps_array[start:stop] = maps
                bar.update(stop - start)
        bar.close()
        if nonfinite:
            raise ExtractionError(
                f"layer {layer!r}: {nonfinite} of {n_images} images gave NaN or infinite activations; store not written"
            )
        means_array[:] = means_buffer
        ids = group.create_array("image_id", shape=(n_images,), dtype=str, chunks=(n_images,))
        ids[:] = np.asarray(image_ids, dtype=object).astype(str)
        group.attrs.update(
            {
                **(attrs or {}),
                "layer": layer,
                "n_images": n_images,
                "n_channels": int(means_buffer.shape[1]),
                "map_shape": list(rec.maps[layer].shape[1:]) if save_maps else None,
                "package_versions": package_versions(),
            }
        )
    return out_path


def run_extraction(
    *,
    model_name: str,
    model_spec: dict,
    dataset_name: str,
    manifest_path: str | os.PathLike,
    layer: str,
    out_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    torch_home: str | os.PathLike,
    save_maps: bool,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str = "auto",
    maps_chunk_images: int = 32,
    params: dict | None = None,
) -> Path:
    """The extraction stage: build the model, read the manifest, write the store."""
    torch_device = pick_device(device)
    model = build_model(model_name, model_spec, data_dir=data_dir, torch_home=torch_home)
    resolve_layer(model, layer, model_name)  # one-line error listing valid layers
    manifest = read_manifest(manifest_path)
    dataset = ManifestDataset(manifest, build_transform(model_spec["preprocessing"]))
    loader = make_loader(dataset, batch_size=batch_size, num_workers=num_workers, device=torch_device)
    attrs = {
        "model": model_name,
        "arch": model_spec["arch"],
        "dataset": dataset_name,
        "checkpoint_sha256": model_spec.get("sha256"),
        "preprocessing": model_spec["preprocessing"],
        "device": str(torch_device),
        "params": params or {},
    }
    print(
        f"extracting {model_name} / {dataset_name} / {layer}: {len(manifest)} images on {torch_device}",
        flush=True,
    )
    return extract_to_zarr(
        model,
        loader,
        list(manifest["image_id"]),
        layer,
        out_path,
        save_maps=save_maps,
        maps_chunk_images=maps_chunk_images,
        device=torch_device,
        attrs=attrs,
    )


def open_store(path: str | os.PathLike) -> zarr.Group:
    """Open a finished activation store read-only."""
    return zarr.open_group(store=str(path), mode="r")
