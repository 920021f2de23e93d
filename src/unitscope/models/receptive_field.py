"""Receptive fields of conv/pool layers, from the module graph, and measured by gradients.

`receptive_field(model, layer)` traces the model with torch.fx (the layer kept whole as one node, then
traced inside) and carries, through every node, the field of unit (0, 0) along each axis:

    stride  J: input pixels between two neighbouring units;
    offset  o: input coordinate of the first pixel of unit 0's field (negative: it starts in the padding);
    size    S: pixels the field spans.

A convolution or pooling with kernel k, stride s, padding p and dilation d maps (J, o, S) to
(J·s, o − p·J, S + d·(k − 1)·J); pointwise modules (BatchNorm, ReLU, …) keep it; a node with several
inputs (a residual add, a concatenation) takes the union of their fields; strided slicing (`x[:, :, ::2]`)
and `F.pad` shift and stretch it. Unit (y, x) then sees input rows o_h + y·J_h … o_h + y·J_h + S_h − 1.
Anything the tracer meets that it cannot account for is an error naming the operation, never a guess.

`empirical_receptive_field` measures the same thing: the input pixels with a non-zero gradient of one
unit (summed over channels). Tests compare the two.

`probe_window` gives, for one unit, the smallest input window (aligned to the layer's stride grid, within
the image) on which the layer computes that unit exactly as on the whole image: stride-aligned so every
intermediate map lines up, and reaching the image border wherever the field does, so border padding is the
same. Re-running the model on such windows instead of whole images is what makes the nefesi probes cheap.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from unitscope.errors import UnitscopeError
from unitscope.hooks import StopForward, get_module, hooked

__all__ = [
    "ReceptiveField",
    "ReceptiveFieldError",
    "empirical_receptive_field",
    "probe_window",
    "receptive_field",
]


class ReceptiveFieldError(UnitscopeError, ValueError):
    """The field of a layer cannot be computed (unsupported operation, no spatial map); one line."""


@dataclass(frozen=True)
class ReceptiveField:
    """Field of the units of one layer, per axis (rows, columns), in input pixels."""

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of unit (y, x)'s field; bottom/right exclusive; may leave the image."""
        top = self.offset[0] + y * self.stride[0]
        left = self.offset[1] + x * self.stride[1]
        return top, left, top + self.size[0], left + self.size[1]

    def centre(self, y: int, x: int) -> tuple[float, float]:
        top, left, bottom, right = self.box(y, x)
        return (top + bottom - 1) / 2, (left + right - 1) / 2

    def as_dict(self) -> dict:
        return {"size": list(self.size), "stride": list(self.stride), "offset": list(self.offset)}


@dataclass(frozen=True)
class _Axis:
    jump: int
    start: int
    size: int

    def conv(self, kernel: int, stride: int, padding: int, dilation: int) -> _Axis:
        return _Axis(
            self.jump * stride, self.start - padding * self.jump, self.size + dilation * (kernel - 1) * self.jump
        )

    def union(self, other: _Axis, what: str) -> _Axis:
        if self.jump != other.jump:
            raise ReceptiveFieldError(
                f"{what}: inputs with different strides ({self.jump} vs {other.jump}) are combined"
            )
        start = min(self.start, other.start)
        end = max(self.start + self.size, other.start + other.size)
        return _Axis(self.jump, start, end - start)


_Field = tuple[_Axis, _Axis]  # (rows, columns)
_GLOBAL = "global"  # a value that no longer has a spatial map (flattened, globally pooled)

POINTWISE_MODULES = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.GroupNorm,
)
POINTWISE_FUNCTIONS = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.neg,
    torch.add,
    torch.sub,
    torch.mul,
    torch.cat,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.hardswish,
    F.hardsigmoid,
    F.silu,
    F.gelu,
    F.dropout,
    F.batch_norm,
}
POINTWISE_METHODS = {"add", "sub", "mul", "div", "relu", "sigmoid", "tanh", "contiguous", "clone", "float", "to"}
GLOBAL_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Linear)
GLOBAL_FUNCTIONS = {torch.flatten, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.linear}
GLOBAL_METHODS = {"flatten", "view", "reshape", "mean", "sum", "amax"}


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, tuple | list) else (int(value), int(value))


def _conv_like(field: _Field, module: nn.Module, name: str) -> _Field:
    kernel = _pair(module.kernel_size)
    stride = _pair(module.stride if module.stride is not None else module.kernel_size)
    dilation = _pair(getattr(module, "dilation", 1))
    padding = module.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same" and stride == (1, 1):
            padding = tuple((d * (k - 1)) // 2 for k, d in zip(kernel, dilation, strict=True))
        else:
            raise ReceptiveFieldError(f"module {name!r}: padding {padding!r} is not supported")
    padding = _pair(padding)
    return tuple(
        axis.conv(k, s, p, d) for axis, k, s, p, d in zip(field, kernel, stride, padding, dilation, strict=True)
    )


class _LeafTracer(fx.Tracer):
    """Default tracer, except that the module at path `leaf` stays one node."""

    def __init__(self, leaf: str | None):
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return qualname == self.leaf or super().is_leaf_module(module, qualname)


def _trace(module: nn.Module, leaf: str | None, what: str) -> fx.Graph:
    try:
        return _LeafTracer(leaf).trace(module)
    except Exception as err:  # control flow on values, unsupported Python: one line
        raise ReceptiveFieldError(
            f"{what}: torch.fx cannot trace it ({type(err).__name__}: {' '.join(str(err).split())[:150]})"
        ) from None


def _slice_field(field: _Field, index, what: str) -> _Field:
    if not isinstance(index, tuple):
        index = (index,)
    axes = list(field)
    for dim, item in enumerate(index):
        if dim < 2:
            if item != slice(None):
                raise ReceptiveFieldError(f"{what}: indexing batch or channel dims with {item!r} is not supported")
            continue
        if dim > 3:
            raise ReceptiveFieldError(f"{what}: index {index!r} has more than 4 dims")
        if not isinstance(item, slice) or (item.start or 0) < 0 or (item.step or 1) < 1:
            raise ReceptiveFieldError(f"{what}: spatial index {item!r} is not a forward slice")
        axis = axes[dim - 2]
        axes[dim - 2] = _Axis(axis.jump * (item.step or 1), axis.start + (item.start or 0) * axis.jump, axis.size)
    return tuple(axes)


def _pad_field(field: _Field, pad, what: str) -> _Field:
    pad = list(pad) + [0] * (4 - len(pad))
    left, _right, top, _bottom = (int(p) for p in pad[:4])
    rows, cols = field
    return (
        _Axis(rows.jump, rows.start - top * rows.jump, rows.size),
        _Axis(cols.jump, cols.start - left * cols.jump, cols.size),
    )


def _propagate(module: nn.Module, graph: fx.Graph, field_in, *, prefix: str, leaf: str | None = None):
    """Field of every node of `graph` (traced from `module`) given the field of its single input."""
    modules = dict(module.named_modules())
    fields: dict[fx.Node, object] = {}
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    if len(placeholders) != 1:
        raise ReceptiveFieldError(f"module {prefix or 'model'!r} takes {len(placeholders)} inputs; expected one image")
    for node in graph.nodes:
        what = f"{prefix or 'model'}: {node.op} {node.target}"
        tensor_args = [a for a in node.all_input_nodes if a in fields and fields[a] is not None]
        if node.op == "placeholder":
            fields[node] = field_in
        elif node.op == "get_attr":
            fields[node] = None  # a constant: no spatial dependence on the input
        elif node.op == "output":
            (result,) = node.args
            return fields[result] if isinstance(result, fx.Node) else None, fields
        elif not tensor_args:
            fields[node] = None
        elif any(fields[a] == _GLOBAL for a in tensor_args):
            if any(fields[a] != _GLOBAL for a in tensor_args):  # e.g. squeeze-and-excitation: x * mean(x)
                raise ReceptiveFieldError(
                    f"{what}: combines a globally pooled value with a spatial map, so every unit sees the whole "
                    "image; receptive-field crops do not describe such a layer"
                )
            fields[node] = _GLOBAL
        elif node.op == "call_module":
            sub = modules[node.target]
            (source,) = tensor_args
            field = fields[source]
            if isinstance(sub, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
                fields[node] = _conv_like(field, sub, node.target)
            elif isinstance(sub, POINTWISE_MODULES):
                fields[node] = field
            elif isinstance(sub, GLOBAL_MODULES):
                fields[node] = _GLOBAL
            elif node.target == leaf:  # the layer itself, a container: follow it inside
                full = f"{prefix}.{node.target}" if prefix else node.target
                inner = _trace(sub, None, f"layer {full!r}")
                fields[node], _ = _propagate(sub, inner, field, prefix=full)
            else:
                raise ReceptiveFieldError(f"{what}: module type {type(sub).__name__} is not supported")
        elif node.op in ("call_function", "call_method"):
            target = node.target
            if target is operator.getitem:
                fields[node] = _slice_field(fields[tensor_args[0]], node.args[1], what)
            elif target is F.pad:
                pad = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
                fields[node] = _pad_field(fields[tensor_args[0]], pad, what)
            elif target in GLOBAL_FUNCTIONS or (node.op == "call_method" and target in GLOBAL_METHODS):
                fields[node] = _GLOBAL
            elif target in POINTWISE_FUNCTIONS or (node.op == "call_method" and target in POINTWISE_METHODS):
                field = fields[tensor_args[0]]
                for other in tensor_args[1:]:
                    field = tuple(a.union(b, what) for a, b in zip(field, fields[other], strict=True))
                fields[node] = field
            else:
                raise ReceptiveFieldError(f"{what}: operation is not supported by the receptive-field calculation")
        else:
            raise ReceptiveFieldError(f"{what}: node kind is not supported")
    raise ReceptiveFieldError(f"module {prefix or 'model'!r}: graph has no output")


def receptive_field(model: nn.Module, layer: str) -> ReceptiveField:
    """The receptive field of the units of `layer` (a module path) in input pixels."""
    get_module(model, layer)
    graph = _trace(model, layer, "model")
    identity = (_Axis(1, 0, 1), _Axis(1, 0, 1))
    _, fields = _propagate(model, graph, identity, prefix="", leaf=layer)
    found = [fields[node] for node in graph.nodes if node.op == "call_module" and node.target == layer]
    if not found:
        raise ReceptiveFieldError(f"layer {layer!r} is not called in the model's forward pass")
    if len(found) > 1:
        raise ReceptiveFieldError(f"layer {layer!r} is called {len(found)} times in one forward pass")
    field = found[0]
    if field is None or field == _GLOBAL:
        raise ReceptiveFieldError(f"layer {layer!r} has no spatial map (it is pooled or flattened)")
    rows, cols = field
    return ReceptiveField((rows.size, cols.size), (rows.jump, cols.jump), (rows.start, cols.start))


def _linearised(model: nn.Module) -> nn.Module:
    """A float64 copy with every pointwise non-linearity replaced by identity, so no path is silenced."""
    clone = copy.deepcopy(model).double()
    for _name, module in list(clone.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU | nn.ReLU6 | nn.LeakyReLU | nn.Hardswish | nn.SiLU | nn.GELU):
                setattr(module, child_name, nn.Identity())
    return clone


def empirical_receptive_field(
    model: nn.Module, layer: str, unit: tuple[int, int], input_size: tuple[int, int], *, seed: int = 0
) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the input pixels whose gradient of unit (y, x) is non-zero.

    The unit's output summed over channels is differentiated with respect to a random input, on a float64
    copy of the model whose non-linearities are removed (a dead ReLU would hide part of the field); the box
    is therefore the field clipped to the image.
    """
    linear = _linearised(model).eval()
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, *input_size, generator=generator, dtype=torch.float64, requires_grad=True)
    captured = {}

    def grab(_module, _inputs, output):
        captured["out"] = output
        raise StopForward

    with torch.enable_grad(), hooked(linear, {layer: grab}):
        try:
            linear(image)
        except StopForward:
            pass
        output = captured["out"]
        y, x = unit
        output[0, :, y, x].sum().backward()
    nonzero = (image.grad[0].abs().sum(dim=0) > 0).nonzero()
    if len(nonzero) == 0:
        raise ReceptiveFieldError(f"layer {layer!r}: unit {unit} has a zero gradient everywhere")
    top, left = nonzero.min(dim=0).values.tolist()
    bottom, right = (nonzero.max(dim=0).values + 1).tolist()
    return top, left, bottom, right


def probe_window(field: ReceptiveField, image_size: tuple[int, int]) -> tuple[int, int]:
    """Side lengths (rows, cols) of the windows `window_origin` cuts: the smallest stride-aligned size that
    holds a whole field, and whose distance to the far image border is a multiple of the stride."""
    sides = []
    for size, stride, offset, extent in zip(field.size, field.stride, field.offset, image_size, strict=True):
        misalignment = offset % stride  # the field's first pixel sits this far past a stride-grid line
        need = size + misalignment
        if need >= extent:
            sides.append(extent)
            continue
        side = extent - stride * math.floor((extent - need) / stride)
        sides.append(side)
    return sides[0], sides[1]


def window_origin(field: ReceptiveField, y: int, x: int, window: tuple[int, int], image_size: tuple[int, int]):
    """(top, left) in the image of the probe window for unit (y, x), and the unit's (row, col) in the
    window's output map. The window lies inside the image and starts on the stride grid."""
    top, left, _, _ = field.box(y, x)
    origin, position = [], []
    for start, unit, stride, side, extent in zip((top, left), (y, x), field.stride, window, image_size, strict=True):
        aligned = stride * math.floor(start / stride)
        first = min(max(aligned, 0), extent - side)
        origin.append(first)
        position.append(unit - first // stride)
    return tuple(origin), tuple(position)
