"""Where and how a stage runs: the torch device, its thread count, and the image loader.

These settings never change a result (within float tolerance on GPU), so rules pass them outside `params:`
and changing them re-runs nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
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
