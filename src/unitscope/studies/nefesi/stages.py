"""nefesi-style neuron analysis: top-N exemplars, Neuron Features and four selectivity indexes per channel.

Following nefesi (Rafegas, Vanrell et al., CVC), every channel ("neuron") of a layer is described by

* its **top-N exemplars**: the N (image, location) pairs with the highest activation over the image set, each
  image counted once, at its maximum location. One streaming pass over the images keeps a running [C, N] list
  per layer (values, image, location) merged batch by batch; no activation map is kept beyond its batch.
* its **Neuron Feature (NF)**: the activation-weighted mean of the exemplar crops,
  NF = Σₙ wₙ · cropₙ with wₙ = aₙ / Σₘ aₘ (activations clipped at 0). A crop is the unit's receptive field
  (see `unitscope.models.receptive_field`) cut from the preprocessed (model-input) image; where the field leaves the
  image the crop is padded with the dataset mean colour (0 after normalisation).
* four **selectivity indexes** from re-running the model on transformed exemplar crops.

How a channel's response to a transformed crop is measured (the same way as the exemplar activation): the
crop region, i.e. the part of the unit's field inside the image, is replaced by its transform; the response
is the channel's activation at the exemplar's location in that modified image. It is computed on a probe
window around the field (stride-aligned, inside the image; `receptive_field.probe_window`) instead of the
whole image, which gives the same number (identical computation; the untransformed probe reproduces the
stored exemplar activation, and the stage fails if it does not). Rotations and mirrors turn the padded crop
about the unit's field centre (for a unit whose field contains the whole image: the image about its centre);
pixels whose source falls outside the crop take the mean colour. With R(T)ₙ the response to the n-th exemplar
crop under transform T and R(id)ₙ the untransformed one (= aₙ):

* color:       CI = clip(1 − Σₙ R(gray)ₙ / Σₙ R(id)ₙ, 0, 1); gray = luminance Y = 0.299 R + 0.587 G + 0.114 B
               copied to the three channels (in pixel space, before normalisation). Dominant colour names of
               the NF: each NF pixel gets the nearest of 11 basic colour terms in CIELab; names covering at
               least `color_name_share` of the NF's pixels are listed with their shares.
* orientation: ratio(θ) = Σₙ R(rot θ)ₙ / Σₙ R(id)ₙ for θ = s, 2s, …, 360° − s (s = 15° by default);
               OI = clip(1 − meanθ ratio(θ), 0, 1). Preferred angle: the dominant edge orientation of the
               NF (structure tensor of its luminance; 0° = horizontal edge, counter-clockwise), with its
               coherence in [0, 1].
* symmetry:    ratio(φ) = Σₙ R(mirror φ)ₙ / Σₙ R(id)ₙ for mirror axes φ = 0° (top↔bottom), 45°, 90°
               (left↔right), 135°; SI = clip(meanφ ratio(φ), 0, 1) (1: mirrored crops drive it as much).
* class:       fₖ = Σ_{n: class(n)=k} wₙ (activation-weighted relative frequency of class k among the
               exemplars); sorted decreasingly, M = the fewest classes whose fₖ sum to ≥ `class_coverage`;
               CSI = (K − M) / (K − 1) with K = min(N, classes in the image set) — nefesi's (N − M)/(N − 1)
               whenever the set has at least N classes (its ImageNet setting); with fewer classes M can never
               reach N, so the largest possible M is used. Population code: the number of classes with
               fₖ ≥ `population_threshold`, listed with their fₖ.

All transforms of all exemplar crops of all channels of a layer go through the model in large batches:
crops shared by several channels (same image and region) are probed once, and every probe returns all channels.

Modules: `nefesi_topn` (streaming top-N), `nefesi_probes` (transforms, probe windows, batched probes),
`nefesi_indexes` (indexes, NF descriptors, decompositions), `nefesi_figures`, `nefesi_section` (report),
`nefesi_plan` (what the rules need at parse time). This module holds the stages and re-exports the public API.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from unitscope.data.manifest import ManifestDataset, read_manifest
from unitscope.fsutil import atomic_path, write_text_atomic
from unitscope.models.receptive_field import receptive_field
from unitscope.models.registry import build_model, build_transform, resolve_layer
from unitscope.runtime import make_loader, pick_device
from unitscope.studies.nefesi.indexes import (
    COLOR_TERMS,
    class_selectivity,
    color_name_shares,
    decompose_image,
    hierarchy_tree,
    hierarchy_weights,
    nf_orientation,
    nf_rgb,
    selectivity_table,
)
from unitscope.studies.nefesi.probes import (
    LUMA,
    SYMMETRY_AXES,
    LayerGeometry,
    LayerProbes,
    Transform,
    apply_transform,
    crop_geometry,
    manifest_batches,
    per_channel_responses,
    probe_layer,
    tensor_batches,
    transforms,
)
from unitscope.studies.nefesi.topn import (
    NefesiError,
    StreamingTopN,
    TopN,
    collect_top_n,
    exemplar_frame,
    full_sort_top_n,
    inference_copy,
    read_top_n,
)

INDEXES = ("color", "orientation", "symmetry", "class")
__all__ = [
    "COLOR_TERMS",
    "INDEXES",
    "LUMA",
    "SYMMETRY_AXES",
    "LayerGeometry",
    "LayerProbes",
    "NefesiError",
    "StreamingTopN",
    "TopN",
    "Transform",
    "apply_transform",
    "class_selectivity",
    "collect_top_n",
    "color_name_shares",
    "crop_geometry",
    "decompose_image",
    "exemplar_frame",
    "full_sort_top_n",
    "hierarchy_tree",
    "hierarchy_weights",
    "image_table",
    "inference_copy",
    "manifest_batches",
    "nf_orientation",
    "nf_rgb",
    "per_channel_responses",
    "probe_layer",
    "read_top_n",
    "run_layer",
    "run_top_n",
    "selectivity_table",
    "tensor_batches",
    "transforms",
]

# ----------------------------------------------------------------------------------------------
# stages (called by workflow/scripts/nefesi_*.py)


def image_table(
    manifests: dict[str, str | os.PathLike],
    *,
    max_images: int | None = None,
    class_by: str = "label",
    label_names: dict[str, list[str]] | None = None,
) -> pd.DataFrame:
    """The images a target analyses: the included rows of each manifest (the first `max_images` of each, a
    seeded sample since manifests are seeded draws), with a class per image."""
    frames = []
    for dataset, path in manifests.items():
        manifest = read_manifest(path)
        if max_images is not None:
            manifest = manifest.head(max_images)
        if manifest.empty:
            raise NefesiError(f"manifest {path} (dataset {dataset}) has no included images")
        frame = manifest[["image_id", "path", "category", "label"]].copy()
        frame.insert(0, "dataset", dataset)
        names = (label_names or {}).get(dataset)
        labels = frame["label"].astype(str)
        if names:
            try:
                labels = labels.map(lambda value, names=names: names[int(value)])
            except (ValueError, IndexError):
                raise NefesiError(
                    f"config key nefesi.label_names.{dataset}: labels of {path} are not indices into its "
                    f"{len(names)} names"
                ) from None
        if class_by == "label":
            frame["class"] = labels if len(manifests) == 1 else dataset + ":" + labels
        elif class_by == "category":
            frame["class"] = frame["category"].astype(str)
        elif class_by == "dataset":
            frame["class"] = dataset
        else:
            raise NefesiError(f"class_by must be label, category or dataset, got {class_by!r}")
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table.insert(0, "image", np.arange(len(table)))
    return table


def _whole_image_exemplars(geometry: LayerGeometry, top: TopN) -> int:
    """Exemplars whose field contains the whole image (their crop is the image, turned about its centre)."""
    height, width = geometry.image_size
    count = 0
    for y, x in zip(top.y[top.image >= 0].tolist(), top.x[top.image >= 0].tolist(), strict=True):
        box_top, box_left, box_bottom, box_right = geometry.field.box(y, x)
        count += box_top <= 0 and box_left <= 0 and box_bottom >= height and box_right >= width
    return int(count)


def _parquet(frame: pd.DataFrame, path) -> None:
    with atomic_path(path) as temp:
        frame.to_parquet(temp, index=False)


def run_top_n(
    *,
    model_name: str,
    spec: dict,
    manifests: dict[str, str],
    layers: list[str],
    top_n: int,
    max_images: int | None,
    class_by: str,
    label_names: dict | None,
    data_dir,
    torch_home,
    out_exemplars,
    out_images,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "auto",
) -> None:
    """Stage 1: one pass over the target's images; top-N exemplars of every channel of every layer."""
    torch_device = pick_device(device)
    model = inference_copy(build_model(model_name, spec, data_dir=data_dir, torch_home=torch_home)).to(torch_device)
    for layer in layers:
        resolve_layer(model, layer, model_name)
        receptive_field(model, layer)  # fail now, not after the pass, if the field cannot be computed
    images = image_table(manifests, max_images=max_images, class_by=class_by, label_names=label_names)
    loader = make_loader(
        ManifestDataset(images, build_transform(spec["preprocessing"])),
        batch_size=batch_size,
        num_workers=num_workers,
        device=torch_device,
    )
    print(
        f"top-{top_n}: {model_name}, {len(images)} images ({', '.join(manifests)}), layers {', '.join(layers)}",
        flush=True,
    )
    tops = collect_top_n(model, loader, layers, top_n, device=torch_device, total=len(images))
    _parquet(images, out_images)
    _parquet(exemplar_frame(tops), out_exemplars)


def run_layer(
    *,
    model_name: str,
    spec: dict,
    layer: str,
    shallower: str | None,
    exemplars_path,
    images_path,
    rotation_step: float,
    class_coverage: float,
    population_threshold: float,
    color_name_share: float,
    data_dir,
    torch_home,
    out_table,
    out_nf,
    out_hierarchy,
    out_info,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str = "auto",
) -> pd.DataFrame:
    """Stage 2: probes, Neuron Features, the index table and the hierarchy weights of one layer."""
    torch_device = pick_device(device)
    model = inference_copy(build_model(model_name, spec, data_dir=data_dir, torch_home=torch_home)).to(torch_device)
    exemplars = pd.read_parquet(exemplars_path)
    images = pd.read_parquet(images_path)
    top = read_top_n(exemplars, layer)
    preprocessing = spec["preprocessing"]
    crop = int(preprocessing["crop"])
    batches = manifest_batches(images, build_transform(preprocessing), num_workers=num_workers)
    print(f"{model_name} {layer}: {top.channels} channels, top-{top.n}, map {top.map_size}", flush=True)
    probes = probe_layer(
        model,
        layer,
        top,
        batches,
        image_size=(crop, crop),
        mean=preprocessing["mean"],
        std=preprocessing["std"],
        rotation_step=rotation_step,
        shallower=shallower,
        batch_size=batch_size,
        device=torch_device,
    )
    codes, names = pd.factorize(images["class"], sort=True)
    table = selectivity_table(
        top,
        probes,
        codes,
        [str(n) for n in names],
        mean=preprocessing["mean"],
        std=preprocessing["std"],
        class_coverage=class_coverage,
        population_threshold=population_threshold,
        color_name_share=color_name_share,
    )
    table.insert(0, "layer", layer)
    table.insert(0, "model", model_name)
    geometry = LayerGeometry.of(model, layer, (crop, crop), top.map_size)
    if shallower is not None:
        weights = hierarchy_weights(probes.children, top, read_top_n(exemplars, shallower))
        hierarchy = pd.DataFrame(
            {
                "deep_layer": layer,
                "deep_channel": np.repeat(np.arange(weights.shape[0]), weights.shape[1]),
                "shallow_layer": shallower,
                "shallow_channel": np.tile(np.arange(weights.shape[1]), weights.shape[0]),
                "weight": weights.reshape(-1),
            }
        )
    else:
        hierarchy = pd.DataFrame(
            {
                "deep_layer": pd.Series(dtype=str),
                "deep_channel": pd.Series(dtype=np.int64),
                "shallow_layer": pd.Series(dtype=str),
                "shallow_channel": pd.Series(dtype=np.int64),
                "weight": pd.Series(dtype=np.float64),
            }
        )
    rgb = nf_rgb(probes.nf, preprocessing["mean"], preprocessing["std"])
    info = {
        "model": model_name,
        "layer": layer,
        "channels": top.channels,
        "top_n": top.n,
        "images": len(images),
        "classes": len(names),
        "map_size": list(top.map_size),
        "receptive_field": geometry.field.as_dict(),
        "probe_window": list(geometry.window),
        "nf_extent": [list(probes.nf_extent[0]), list(probes.nf_extent[1])],
        "transforms": [t.name for t in probes.transforms],
        "probes": probes.probes,
        "forwards": probes.forwards,
        "exemplar_crops": int((top.image >= 0).sum()),
        "whole_image_exemplars": _whole_image_exemplars(geometry, top),
        "image_size": [crop, crop],
        "seconds": round(probes.seconds, 2),
        "identity_max_abs_error": float((probes.responses[:, :, 0] - top.values).abs()[top.image >= 0].max())
        if (top.image >= 0).any()
        else 0.0,
        "shallower": shallower,
    }
    _parquet(table, out_table)
    _parquet(hierarchy, out_hierarchy)
    with atomic_path(out_nf) as temp, open(temp, "wb") as handle:
        np.savez_compressed(handle, nf=rgb.astype(np.float16))
    write_text_atomic(out_info, json.dumps(info, indent=2) + "\n")
    print(
        f"{layer}: {probes.probes} probes × {len(probes.transforms)} transforms = {probes.forwards} windows "
        f"of {geometry.window[0]}×{geometry.window[1]} px for {info['exemplar_crops']} exemplar crops in "
        f"{probes.seconds:.1f} s ({top.channels / max(probes.seconds, 1e-9):.2f} channels/s); identity error "
        f"{info['identity_max_abs_error']:.2g}",
        flush=True,
    )
    return table
