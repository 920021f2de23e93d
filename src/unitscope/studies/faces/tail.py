"""The network after the intervention layer (its "tail"), run on masked copies of the layer's output.

Every condition is a boolean mask over the layer's channels (True = ablated: set to zero, or to the
channel's mean over every image of the study). The network before the layer runs once per image;
each condition re-runs only the tail (the modules after the layer), batched over conditions:
[conditions x images] masked copies go through the tail in chunks that bound memory.

When the tail starts with a global average pool (the last conv block of MobileNetV2 or a ResNet),
masking commutes with the pool (a zeroed or constant map averages to 0 or that constant), so the
conditions act on the stored per-image channel means and no image is decoded at all. Otherwise the
layer's maps are computed once from the images (`layer_maps`) and kept in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from torch import nn
from tqdm import tqdm

from unitscope.data.manifest import ManifestDataset, read_manifest
from unitscope.hooks import ActivationRecorder, get_module, hooked
from unitscope.models.cifar_resnet import CifarResNet
from unitscope.models.preprocessing import build_transform
from unitscope.models.registry import resolve_layer
from unitscope.runtime import make_loader
from unitscope.studies.faces.inputs import CategoryMeans, FacesError

CHUNK_BYTES = 1 << 28  # ~256 MiB of masked activations (or logits) per step
TAIL_EXPANSION = 8  # maps through the tail: budget the input at 1/8, as blocks expand channels ~6x


class _GlobalPool(nn.Module):
    """[N, C, H, W] -> [N, C]: MobileNetV2's functional adaptive_avg_pool2d(1) + flatten."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _execution_order(model: nn.Module, model_name: str) -> tuple[list[tuple[str, nn.Module]], int, str, dict]:
    """(stages up to the pooled features, index of the pool stage, head module name, container aliases)."""
    if isinstance(model, torchvision.models.MobileNetV2):
        stages = [(f"features.{i}", block) for i, block in enumerate(model.features)]
        aliases = {"features": stages[-1][0]}
        stages.append(("global average pool", _GlobalPool()))
        return stages, len(stages) - 1, "classifier", aliases
    if isinstance(model, torchvision.models.ResNet | CifarResNet):
        head = "fc" if isinstance(model, torchvision.models.ResNet) else "linear"
        stem = ["conv1", "bn1", "relu"] + (["maxpool"] if head == "fc" else [])
        stages = [(name, getattr(model, name)) for name in stem]
        aliases = {}
        for stage_name in ("layer1", "layer2", "layer3", "layer4"):
            if not hasattr(model, stage_name):
                continue
            blocks = [(f"{stage_name}.{i}", block) for i, block in enumerate(getattr(model, stage_name))]
            stages.extend(blocks)
            aliases[stage_name] = blocks[-1][0]
        stages.append(("avgpool", nn.Sequential(model.avgpool, nn.Flatten(1))))
        return stages, len(stages) - 1, head, aliases
    raise FacesError(
        f"model {model_name}: interventions support torchvision MobileNetV2 / ResNet and the CIFAR ResNets, "
        f"not {type(model).__name__}"
    )


@dataclass
class Tail:
    """The network after `layer`: `features(x)` -> pooled features before the classifier; `head` -> logits."""

    layer: str
    modules: list[nn.Module]
    head: nn.Module
    head_name: str
    pool_first: bool  # the tail begins with the global pool: interventions can act on channel means
    affine: tuple[torch.Tensor, torch.Tensor] | None = None  # (W [L, D], b [L]) when the head is one Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.modules:
            x = module(x)
        return x.flatten(1)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled, logits) from the layer's maps [n, C, H, W], or from its channel means [n, C] when
        the tail starts with the global pool (the pool of a masked map is the masked mean)."""
        if x.dim() == 2:
            if not self.pool_first:
                raise FacesError(f"layer {self.layer!r} is not followed by the global pool; the tail needs its maps")
            pooled = x
        else:
            pooled = self.features(x)
        return pooled, self.head(pooled)


def build_tail(model: nn.Module, layer: str, model_name: str) -> Tail:
    """The modules after `layer` in forward order; a layer off the main chain is a one-line FacesError."""
    resolve_layer(model, layer, model_name)
    stages, pool_index, head_name, aliases = _execution_order(model, model_name)
    names = [name for name, _ in stages]
    target = aliases.get(layer, layer)
    if target not in names:
        valid = [*aliases, *(n for n in names if n != "global average pool")]
        raise FacesError(
            f"model {model_name}: cannot intervene at layer {layer!r}: the rest of the network can be run only "
            f"after a block of the main chain ({', '.join(valid[:12])}, … {len(valid)} in all)"
        )
    index = names.index(target)
    head = get_module(model, head_name)
    return Tail(
        layer=layer,
        modules=[module for _, module in stages[index + 1 : pool_index + 1]],
        head=head,
        head_name=head_name,
        pool_first=index >= pool_index - 1,
        affine=_affine(head) if not model.training else None,
    )


def _affine(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(W, b) of a head that is one Linear, possibly after eval-mode Dropout/Identity; else None."""
    parts = list(head) if isinstance(head, nn.Sequential) else [head]
    linear = [part for part in parts if isinstance(part, nn.Linear)]
    if len(linear) != 1 or parts[-1] is not linear[0]:
        return None
    if not all(isinstance(part, nn.Dropout | nn.Identity) for part in parts[:-1]):
        return None
    bias = linear[0].bias if linear[0].bias is not None else torch.zeros(linear[0].out_features)
    return linear[0].weight.detach(), bias.detach()


def _affine_logits(
    means: torch.Tensor, intact_logits: torch.Tensor, ablate: torch.Tensor, fill: torch.Tensor, affine
) -> torch.Tensor:
    """Logits of k conditions [k, N, L] for a linear head on the pooled means, touching only the
    channels that differ from the cheaper end: intact logits minus the ablated channels' change when
    few are ablated; bias plus the kept channels (and the ablated ones' constant fill) when few are kept."""
    weight, bias = affine
    weight_t = weight.T.to(means.dtype)  # [C, L]
    n_channels = means.shape[1]
    out = torch.empty(ablate.shape[0], means.shape[0], weight.shape[0], dtype=means.dtype, device=means.device)
    counts = ablate.sum(1)
    for count in torch.unique(counts).tolist():
        rows = torch.nonzero(counts == count).flatten()
        if count <= n_channels - count:
            index = torch.stack([torch.nonzero(ablate[r]).flatten() for r in rows])  # [g, count]
            change = fill[index][:, None, :] - means[:, index].permute(1, 0, 2)  # [g, N, count]
            out[rows] = intact_logits + torch.bmm(change, weight_t[index])
        else:
            index = torch.stack([torch.nonzero(~ablate[r]).flatten() for r in rows])  # [g, kept]
            constant = bias + (ablate[rows].to(means.dtype) * fill) @ weight_t  # [g, L]
            out[rows] = constant[:, None, :] + torch.bmm(means[:, index].permute(1, 0, 2), weight_t[index])
    return out


def hooked_condition(
    model: nn.Module, tail: Tail, images: torch.Tensor, ablate: torch.Tensor, fill: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference path: one full forward pass with a hook replacing the ablated channels at the layer.

    Returns (pooled features recorded at the classifier's input, logits).
    """
    recorded = {}

    def intervene(_module, _inputs, output):
        shape = (1, -1) + (1,) * (output.dim() - 2)
        return torch.where(ablate.view(shape), fill.to(output.dtype).view(shape).expand_as(output), output)

    def record(_module, inputs, _output):
        recorded["pooled"] = inputs[0].detach().clone()

    with hooked(model, {tail.layer: intervene, tail.head_name: record}), torch.inference_mode():
        logits = model(images)
    return recorded["pooled"], logits


def ablate_activations(x: torch.Tensor, ablate: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """x [n, C, ...] under k conditions ablate [k, C] -> [k, n, C, ...] (one broadcast op)."""
    shape = (ablate.shape[0], 1, ablate.shape[1]) + (1,) * (x.dim() - 2)
    fill = fill.to(x.dtype).view((1, 1, -1) + (1,) * (x.dim() - 2))
    return torch.where(ablate.view(shape), fill, x.unsqueeze(0))


def condition_outputs(
    tail: Tail,
    cache: torch.Tensor,
    ablate: torch.Tensor,
    fill: torch.Tensor,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    device: torch.device | str = "cpu",
    progress: bool = False,
    with_pooled: bool = True,
) -> Iterator[tuple[slice, torch.Tensor | None, torch.Tensor]]:
    """Yield (condition slice, pooled [k, N, D], logits [k, N, L]) for chunks of conditions.

    `cache` is the layer's output for every image: [N, C] channel means when `tail.pool_first`, else
    [N, C, H, W] maps. Chunks of [k conditions x n images] are masked and run through the tail at once.
    With a linear head on channel means, logits come from the few channels that differ (`_affine_logits`)
    and the pooled features (the masked means) are only materialised if `with_pooled`.
    """
    device = torch.device(device)
    n_images, per_image = cache.shape[0], int(np.prod(cache.shape[1:]))
    n_conditions = ablate.shape[0]
    fill = fill.to(device)
    shortcut = cache.dim() == 2 and tail.affine is not None
    with torch.inference_mode():
        probe_out = tail(cache[:1].to(device))[1]
        if shortcut:
            all_means = cache.to(device)
            intact_logits = tail.head(all_means)
            affine = tuple(t.to(device) for t in tail.affine)
    width = max(per_image, probe_out.shape[1])
    if cache.dim() > 2 and not shortcut:
        chunk_bytes //= TAIL_EXPANSION  # the tail's intermediate maps are several times the size of its input
    per_condition = n_images * width * 4
    k = max(1, min(n_conditions, chunk_bytes // max(1, per_condition)))
    images_per_step = n_images if k > 1 else max(1, chunk_bytes // (width * 4))
    bar = tqdm(total=n_conditions, desc="conditions", unit="cond", disable=not progress, mininterval=2)
    for start in range(0, n_conditions, k):
        stop = min(n_conditions, start + k)
        masks = ablate[start:stop].to(device)
        if shortcut:
            with torch.inference_mode():
                pooled = ablate_activations(all_means, masks, fill).float().cpu() if with_pooled else None
                logits = _affine_logits(all_means, intact_logits, masks, fill, affine)
            bar.update(stop - start)
            yield slice(start, stop), pooled, logits.float().cpu()
            continue
        pooled_parts, logit_parts = [], []
        for first in range(0, n_images, images_per_step):
            x = cache[first : first + images_per_step].to(device)
            masked = ablate_activations(x, masks, fill)  # [k, n, C, ...]
            with torch.inference_mode():
                flat_pooled, flat_logits = tail(masked.reshape(-1, *masked.shape[2:]))
            pooled = flat_pooled.view(stop - start, -1, flat_pooled.shape[-1])
            logits = flat_logits.view(stop - start, -1, flat_logits.shape[-1])
            pooled_parts.append(pooled.float().cpu())
            logit_parts.append(logits.float().cpu())
        bar.update(stop - start)
        yield slice(start, stop), torch.cat(pooled_parts, dim=1), torch.cat(logit_parts, dim=1)
    bar.close()


def layer_maps(
    model: nn.Module,
    layer: str,
    manifests: dict[str, str],
    preprocessing: dict,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, np.ndarray]:
    """The layer's float32 output maps for every image of the manifests (in order), computed once."""
    device = torch.device(device)
    transform = build_transform(preprocessing)
    maps, ids = [], []
    with ActivationRecorder(model, [layer], keep_maps=True, maps_dtype=torch.float32, stop_early=True) as rec:
        for name, path in manifests.items():
            manifest = read_manifest(path)
            loader = make_loader(
                ManifestDataset(manifest, transform), batch_size=batch_size, num_workers=num_workers, device=device
            )
            with torch.inference_mode():
                for batch, _ in tqdm(loader, desc=f"layer maps {name}", unit="batch", mininterval=2):
                    rec(batch.to(device))
                    maps.append(rec.maps[layer])
            ids.extend(manifest["image_id"])
    return torch.cat(maps), np.asarray(ids, dtype=object)


def layer_cache(
    model: nn.Module,
    tail: Tail,
    data: CategoryMeans,
    manifests: dict[str, str],
    preprocessing: dict,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the conditions act on, per-image channel means): the stored means twice when the tail starts
    with the global pool, else the layer's maps of the stores' images (computed once) and their means."""
    means = torch.from_numpy(data.means)
    if tail.pool_first:
        print(f"{tail.layer} is followed by the global pool: conditions act on the stored channel means", flush=True)
        return means, means
    clock = time.perf_counter()
    order = [data.face_dataset, *data.nonface_datasets]
    cache, ids = layer_maps(
        model,
        tail.layer,
        {name: manifests[name] for name in order},
        preprocessing,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
    )
    if list(ids) != list(data.image_id):
        raise FacesError(f"the manifests' images differ from those of the stores at {tail.layer!r}; re-run extraction")
    print(f"layer maps {list(cache.shape)} computed once in {time.perf_counter() - clock:.1f} s", flush=True)
    return cache, cache.mean(dim=(2, 3))
