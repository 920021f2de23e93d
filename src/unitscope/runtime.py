"""Where and how a stage runs: the torch device, its thread count, and the image loader.

These settings never change a result (within float tolerance on GPU), so rules pass them outside `params:`
and changing them re-runs nothing.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from torch.utils.data import DataLoader

from unitscope.errors import UnitscopeError

T = TypeVar("T")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The run-only settings of `extraction` (device, batch size, loader workers, maps chunking): read from the
    config by scripts, never passed as params, so changing them re-runs nothing."""

    device: str = "auto"
    batch_size: int = 64
    num_workers: int = 2
    maps_chunk_images: int = 32

    @classmethod
    def from_config(cls, config: Mapping) -> RunSettings:
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in config["extraction"].items() if key in names})


class DeviceError(UnitscopeError, RuntimeError):
    """The configured device is not one torch can use here; one line naming the config key."""


def use_threads(threads: int) -> None:
    """Give torch the job's threads (Snakemake's `threads`), at least one: no stage takes more than it was given."""
    torch.set_num_threads(max(1, int(threads)))


def parallel_map(function: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """`function` over `items`, in order, on up to `workers` Python threads at once, for independent pieces of work
    made of torch and numpy operations (which release the GIL): each piece runs with torch at one intra-op thread,
    so `workers` pieces use `workers` cores and the job never takes more threads than it was given. The previous
    thread count is restored after. One worker (or one item): a plain loop, torch's threads untouched."""
    workers = max(1, min(int(workers), len(items)))
    if workers == 1:
        return [function(item) for item in items]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(function, items))
    finally:
        torch.set_num_threads(previous)


def channels_last(value):
    """A module, or a batch of images [N, K, H, W], in channels-last memory order, for forward passes: oneDNN's CPU
    convolutions run about 1.6x faster in it (MobileNetV2 up to features.18, 64 images, 2 threads: 2.58 s -> 1.63 s),
    with the same activations to float rounding (1e-5 of 5.9 there). Anything else is returned as it is."""
    if isinstance(value, torch.nn.Module):
        return value.to(memory_format=torch.channels_last)
    if isinstance(value, torch.Tensor) and value.dim() == 4:
        return value.contiguous(memory_format=torch.channels_last)
    return value


def inference_copy(model: torch.nn.Module, keep: Collection[str] = ()) -> torch.nn.Module:
    """A copy of `model` for forward passes and input gradients (the model itself is not changed): eval mode,
    channels-last, and each BatchNorm2d whose input is a Conv2d's output and nothing else (found by tracing the
    forward with torch.fx: a Sequential's pairs and a ResNet block's conv1/bn1 alike) folded into that convolution,
    the BatchNorm becoming nn.Identity. Same module names, so hooks still apply; a hooked BatchNorm's Identity passes
    on the fused convolution's output, the same values. A convolution named in `keep` (a hooked layer: its output
    must stay before normalisation) is left alone, and so is a BatchNorm without running statistics.

    Same outputs to float rounding (1e-5 of 6 on MobileNetV2) and much faster on CPU, where an eval-mode BatchNorm
    is a separate pass over every map: MobileNetV2 up to features.18, 64 images at 224 px, 2 threads, 1.5 s -> 0.6-
    0.75 s; an activation-maximisation step there 1.2-1.5x faster (bench/actmax_registry.py). A model torch.fx cannot
    trace keeps every BatchNorm."""
    import torch.fx as fx

    folded = copy.deepcopy(model).eval()  # hooks on the model come along: the copy computes what the model does
    with _hooks_set_aside(folded):  # tracing calls modules (with proxies): no hook may see that
        try:
            graph = fx.symbolic_trace(folded).graph
        except Exception:  # not traceable: keep every BatchNorm as it is
            graph = None
    modules = dict(folded.named_modules())
    for node in graph.nodes if graph is not None else []:
        norm = modules.get(node.target) if node.op == "call_module" else None
        source = node.args[0] if node.args else None
        if not isinstance(norm, torch.nn.BatchNorm2d) or not isinstance(source, fx.Node) or source.op != "call_module":
            continue
        conv = modules.get(source.target)
        if not isinstance(conv, torch.nn.Conv2d) or len(source.users) != 1 or norm.running_var is None:
            continue
        if source.target in keep:
            continue
        _fold_into(conv, norm)
        parent, _, child = node.target.rpartition(".")
        setattr(modules[parent] if parent else folded, child, torch.nn.Identity())
    return folded.to(memory_format=torch.channels_last)


_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


@contextlib.contextmanager
def _hooks_set_aside(model: torch.nn.Module) -> Iterator[None]:
    """Every module's forward and backward hooks removed for the block, then put back as they were."""
    saved = [(module, name, dict(getattr(module, name))) for module in model.modules() for name in _HOOK_DICTS]
    for module, name, _ in saved:
        getattr(module, name).clear()
    try:
        yield
    finally:
        for module, name, hooks in saved:
            getattr(module, name).update(hooks)


@torch.no_grad()
def _fold_into(conv: torch.nn.Conv2d, norm: torch.nn.BatchNorm2d) -> None:
    """conv := norm(conv(.)) for an eval-mode BatchNorm (per channel: scale the weights, shift the bias)."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight
    shift = (norm.bias if norm.affine else 0) - norm.running_mean * scale
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = torch.nn.Parameter(bias * scale + shift, requires_grad=False)


def pick_device(requested: str = "auto", key: str = "extraction.device") -> torch.device:
    """`auto` is CUDA when torch sees a GPU, else CPU; an unusable request is one line naming `key`."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        expected = "expected auto, cpu, cuda or cuda:N"
        raise DeviceError(f"config key {key}: {requested!r} is not a device ({expected})") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            seen = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise DeviceError(f"config key {key}: {requested!r} was asked for, but torch sees {seen} (use auto or cpu)")
    return device


def loader_workers(requested: int) -> int:
    """Image-decoding workers that fit in the job's threads: one per 4 threads torch was given (`use_threads`),
    at most `requested`, and torch gives up a thread for each. On 2 threads that is none: a CNN's forward pass
    costs more than decoding, so both threads go to torch; nothing runs beyond the threads the job was given."""
    threads = torch.get_num_threads()
    workers = min(int(requested), threads // 4)
    if workers:
        torch.set_num_threads(threads - workers)
    return workers


def make_loader(dataset, *, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    """In-order batches of `dataset`, decoded by `loader_workers(num_workers)` worker processes."""
    num_workers = loader_workers(num_workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )
