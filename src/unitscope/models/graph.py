"""A model's layers found from its graph, not listed per architecture: one forward pass of a dummy input with a
hook on every module records what each module returns, in execution order.

- `layer_table`: every addressable module (its `named_modules()` path) with type, output shape and channels.
- `last_block`: the default "last conv block", the layer the studies use when none is given: the module that
  produces the last 4-D map before global pooling (the first module to return something not 4-D, or a global
  pool, ends the trunk). Several modules return that same tensor (ReLU, block, stage: `layer4.1.relu`,
  `layer4.1`, `layer4`); the outermost is taken, except a container that runs the network from its input
  (MobileNetV2's `features`), since that is the whole trunk rather than a block of it.
- `probe_depths`: five layers from shallow to deep for per-depth probes: the last block of each spatial
  resolution among the last block's siblings (stage ends), the deepest five, filled with evenly spaced blocks
  when the network has fewer than five resolutions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from unitscope.hooks import hooked

__all__ = ["LayerRecord", "last_block", "layer_table", "probe_depths", "record_layers"]

GLOBAL_POOL = re.compile(r"Adaptive(Avg|Max)Pool|SelectAdaptivePool|GlobalPool|GlobalAvg", re.I)
N_PROBE_DEPTHS = 5


@dataclass
class LayerRecord:
    """One module's first call in a forward pass."""

    name: str
    type: str
    shape: list[int] | None  # output shape without the batch axis; None when it returns no tensor
    order: int  # completion order of the first call
    calls: int  # how often the module ran in the pass
    takes_input: bool  # its first argument is the model's input tensor
    sequential: bool = False  # an nn.Sequential: its children run one after another
    output: torch.Tensor | None = None


def record_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerRecord]:
    """The forward pass of one zero image of `input_shape` (C, H, W), with every module's first output."""
    records: dict[str, LayerRecord] = {}
    image = torch.zeros(1, *input_shape)
    modules = {name: module for name, module in model.named_modules() if name}

    def hook_for(name: str):
        def hook(module, inputs, output):
            if name in records:
                records[name].calls += 1
                return
            tensor = output if isinstance(output, torch.Tensor) else None
            takes_input = bool(inputs) and inputs[0] is image
            shape = list(tensor.shape[1:]) if tensor is not None else None
            sequential = isinstance(module, nn.Sequential)
            records[name] = LayerRecord(
                name, type(module).__name__, shape, len(records), 1, takes_input, sequential, tensor
            )

        return hook

    with hooked(model, {name: hook_for(name) for name in modules}), torch.inference_mode():
        model(image)
    return sorted(records.values(), key=lambda r: r.order)


def layer_table(records: list[LayerRecord]) -> list[dict]:
    """JSON-able rows: name, type, output shape, channels (4-D outputs), calls."""
    return [
        {
            "name": r.name,
            "type": r.type,
            "shape": r.shape,
            "channels": r.shape[0] if r.shape and len(r.shape) == 3 else None,
            "calls": r.calls,
        }
        for r in records
    ]


def _is_map(record: LayerRecord) -> bool:
    return record.shape is not None and len(record.shape) == 3 and not GLOBAL_POOL.search(record.type)


def _spatial(record: LayerRecord) -> int:
    return record.shape[1] * record.shape[2] if record.shape and len(record.shape) == 3 else 0


def _trunk_end(records: list[LayerRecord]) -> LayerRecord | None:
    """The last 4-D map before the final global pool or non-4-D output. A pool inside a block (squeeze-and-
    excitation) is followed by larger maps again, so only the terminator after which no map wider than 1x1
    appears counts."""
    last, candidate = None, None
    for record in records:
        if record.shape is None:
            continue
        if _is_map(record) and (candidate is None or _spatial(record) > 1):
            last, candidate = record, None
        elif not _is_map(record) and candidate is None:
            candidate = last
    return candidate or last


def last_block(records: list[LayerRecord]) -> str | None:
    """The default layer (see the module docstring); None when the model has no 4-D map."""
    end = _trunk_end(records)
    if end is None:
        return None
    same = [r for r in records if r.output is end.output and _is_map(r)]
    blocks = [r for r in same if not r.takes_input] or same
    return min(blocks, key=lambda r: (r.name.count("."), -r.order)).name


def _children(records: list[LayerRecord], parent: str) -> list[LayerRecord]:
    prefix = f"{parent}." if parent else ""
    return [r for r in records if r.name.startswith(prefix) and "." not in r.name[len(prefix) :]]


def _chain(records: list[LayerRecord], parent: str = "") -> list[LayerRecord]:
    """The top-level modules in execution order, a container that runs from the model input replaced by its
    children (MobileNetV2's `features`, DenseNet's `features`)."""
    chain = []
    for record in _children(records, parent):
        runs_from_input = record.takes_input and _children(records, record.name)
        chain.extend(_chain(records, record.name) if runs_from_input else [record])
    return chain


def probe_depths(records: list[LayerRecord], n: int = N_PROBE_DEPTHS) -> list[str]:
    """Up to `n` layers, shallow to deep, ending at the last block (see the module docstring)."""
    name = last_block(records)
    if name is None:
        return []
    last = next(r for r in records if r.name == name)
    blocks = [r for r in _chain(records) if _is_map(r) and r.order < last.order and r.calls == 1] + [last]
    picked = [b for i, b in enumerate(blocks) if b is last or blocks[i + 1].shape[1:] != b.shape[1:]][-n:]
    expanded: set[str] = set()
    while len(picked) < n:
        inner = [b for b in reversed(picked) if b in blocks and _splittable(records, b) and b.name not in expanded]
        if inner:  # the middle block of the deepest sequential stage not yet split
            expanded.add(inner[0].name)
            children = _maps_inside(records, inner[0])
            extra = children[(len(children) - 1) // 2]
        else:
            rest = [b for b in blocks if b not in picked]
            if not rest:
                break
            extra = rest[len(rest) // 2]
        picked = sorted([*picked, extra], key=lambda r: r.order)
    return [r.name for r in picked]


def _splittable(records: list[LayerRecord], block: LayerRecord) -> bool:
    return block.sequential and len(_maps_inside(records, block)) > 2


def _maps_inside(records: list[LayerRecord], block: LayerRecord) -> list[LayerRecord]:
    return [r for r in _children(records, block.name) if _is_map(r) and r.calls == 1]
