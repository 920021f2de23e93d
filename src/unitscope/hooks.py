"""Forward hooks as context managers that always remove themselves.

`hooked` attaches functions to named modules for the duration of a `with` block (removed even when
the block raises, so no hook leaks into later calls). `ActivationRecorder` builds on it to record
layer outputs, reduced at hook time so a later in-place op (e.g. `ReLU(inplace=True)`) cannot
change what was recorded, and refuses modules that run more than once per forward pass (such as
torchvision BasicBlock's shared `relu`), whose "output" would otherwise silently be the last call's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping

import torch
from torch import nn

from unitscope.errors import UnitscopeError

HookFn = Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor | None]


class HookError(UnitscopeError, RuntimeError):
    """A hook cannot be placed or would record something ambiguous; the message is one line."""


class StopForward(Exception):  # noqa: N818 - control flow, not an error
    """Raised inside a hook to end a forward pass once everything needed has been recorded."""


def get_module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        top = [n for n in modules if n and n.count(".") <= 1]
        raise HookError(
            f"unknown layer {name!r}; valid layers include: {', '.join(top[:40])}"
            f"{' …' if len(top) > 40 else ''} ({len(modules) - 1} modules in all)"
        )
    return modules[name]


@contextlib.contextmanager
def hooked(model: nn.Module, hooks: Mapping[str, HookFn]) -> Iterator[nn.Module]:
    """Register forward hooks {module path: fn(module, inputs, output)} for the block's duration.

    A hook may return a tensor to replace the module's output (an intervention) or None to observe.
    """
    handles = []
    try:
        for name, fn in hooks.items():
            handles.append(get_module(model, name).register_forward_hook(fn))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def spatial_mean(output: torch.Tensor) -> torch.Tensor:
    """[N, C, ...] -> [N, C]: the mean over every axis after the channel axis."""
    return output.flatten(2).mean(dim=2) if output.dim() > 2 else output


def spatial_peak(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, C, H, W] -> ([N, C] maximum over the map, [N, C] its flat index y·W + x): the first maximal location in
    row-major order, as nefesi's streaming top-N (`studies.nefesi.topn`) takes it."""
    return maps.float().flatten(2).max(dim=2)


class ActivationRecorder:
    """Record per-channel spatial means (and optionally full maps) of named layers.

    Use as `with ActivationRecorder(model, layers) as rec: model(x)`, then read `rec.means[layer]`
    and `rec.maps[layer]` (CPU tensors of the last forward). `keep_maps` is True (every layer), False, or the
    layers whose full maps are kept. With `keep_peaks`, every layer with [N, C, H, W] maps also records
    `rec.peaks[layer]` = (maximum over the map, its flat index, the map's (H, W)), from the float32 output
    (`spatial_peak`). With
    `stop_early=True` the forward pass ends as soon as every requested layer has fired, skipping the rest of the
    network.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[str],
        *,
        keep_maps: bool | Collection[str] = False,
        maps_dtype: torch.dtype = torch.float16,
        stop_early: bool = False,
        keep_peaks: bool = False,
    ):
        self.model = model
        self.layers = list(layers)
        self.keep_maps = set(self.layers) if keep_maps is True else set(keep_maps or ())
        self.maps_dtype = maps_dtype
        self.stop_early = stop_early
        self.keep_peaks = keep_peaks
        self.means: dict[str, torch.Tensor] = {}
        self.maps: dict[str, torch.Tensor] = {}
        self.peaks: dict[str, tuple[torch.Tensor, torch.Tensor, tuple[int, int]]] = {}
        self._stack = contextlib.ExitStack()
        for layer in self.layers:
            get_module(model, layer)  # fail before anything is registered

    def _reset(self, *_):
        self.means.clear()
        self.maps.clear()
        self.peaks.clear()

    def _make_hook(self, layer: str) -> HookFn:
        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise HookError(
                    f"layer {layer!r} returns {type(output).__name__}, not a tensor; hook a module inside it"
                )
            if layer in self.means:
                raise HookError(
                    f"layer {layer!r} ran twice in one forward pass (the module is reused, as BasicBlock's "
                    f"'relu' is); its output is ambiguous: hook a module that runs once, e.g. its parent block"
                )
            detached = output.detach()
            self.means[layer] = spatial_mean(detached.float()).cpu()
            if layer in self.keep_maps:
                self.maps[layer] = detached.to(self.maps_dtype).cpu().clone()
            if self.keep_peaks and detached.dim() == 4:
                peak, where = spatial_peak(detached)
                self.peaks[layer] = (peak.cpu(), where.cpu(), tuple(detached.shape[-2:]))
            if self.stop_early and len(self.means) == len(self.layers):
                raise StopForward

        return hook

    def __enter__(self) -> ActivationRecorder:
        self._stack.enter_context(hooked(self.model, {layer: self._make_hook(layer) for layer in self.layers}))
        handle = self.model.register_forward_pre_hook(self._reset)
        self._stack.callback(handle.remove)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def __call__(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the model on `inputs` and return the recorded means (maps in `self.maps`)."""
        try:
            self.model(inputs)
        except StopForward:
            pass
        missing = [layer for layer in self.layers if layer not in self.means]
        if missing:
            raise HookError(f"layers {missing} did not run in the forward pass")
        return self.means
