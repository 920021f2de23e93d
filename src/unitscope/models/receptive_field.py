"""Receptive fields of a layer's units: exact arithmetic on the module graph, or gradient supports on any graph.

`receptive_field(model, layer)` traces the model with torch.fx (the layer kept whole as one node, then
traced inside) and carries, through every node, the field of unit (0, 0) along each axis:

    stride  J: input pixels between two neighbouring units;
    offset  o: input coordinate of the first pixel of unit 0's field (negative: it starts in the padding);
    size    S: pixels the field spans.

A convolution or pooling with kernel k, stride s, padding p and dilation d maps (J, o, S) to
(J·s, o − p·J, S + d·(k − 1)·J); pointwise modules (BatchNorm, ReLU, …) keep it; a node with several
inputs (a residual add, a concatenation) takes the union of their fields; strided slicing (`x[:, :, ::2]`)
and `F.pad` shift and stretch it. Unit (y, x) then sees input rows o_h + y·J_h … o_h + y·J_h + S_h − 1.
Anything the tracer meets that it cannot account for is an error naming the operation, never a guess. This
arithmetic is exact and input-size free: it is the reference, and the fast path for chain networks.

`gradient_receptive_field(model, layer, input_size)` works on any graph (concatenations, branches, functional
calls, squeeze-and-excitation, attention): it measures the gradient support of a few units on a copy of the
model where every path adds a positive amount, and derives size, stride and offset from them. A unit that
sees the whole input (a globally pooled value multiplied back) gets a field marked `whole` along that axis.
`layer_receptive_field` is what studies call: the arithmetic where it applies, the measurement otherwise.

`probe_window` gives, for one unit, the smallest input window (aligned to the layer's stride grid, within
the image) on which the layer computes that unit exactly as on the whole image: stride-aligned so every
intermediate map lines up, and reaching the image border wherever the field does, so border padding is the
same. Re-running the model on such windows instead of whole images is what makes the nefesi probes cheap.
"""

from __future__ import annotations

import copy
import math
import operator
import weakref
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from unitscope.errors import UnitscopeError
from unitscope.hooks import StopForward, get_module, hooked

__all__ = [
    "ReceptiveField",
    "ReceptiveFieldError",
    "empirical_receptive_field",
    "gradient_receptive_field",
    "layer_receptive_field",
    "probe_window",
    "receptive_field",
    "window_origin",
]


class ReceptiveFieldError(UnitscopeError, ValueError):
    """The field of a layer cannot be computed (unsupported operation, no spatial map); one line."""


@dataclass(frozen=True)
class ReceptiveField:
    """Field of the units of one layer, per axis (rows, columns), in input pixels.

    `whole[axis]`: every unit sees the whole input along that axis (size = the input's extent, offset 0; the
    stride is then only the map's spacing). Such a field does not move with the unit."""

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    whole: tuple[bool, bool] = (False, False)

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of unit (y, x)'s field; bottom/right exclusive; may leave the image."""
        top = self.offset[0] + (0 if self.whole[0] else y * self.stride[0])
        left = self.offset[1] + (0 if self.whole[1] else x * self.stride[1])
        return top, left, top + self.size[0], left + self.size[1]

    def centre(self, y: int, x: int) -> tuple[float, float]:
        top, left, bottom, right = self.box(y, x)
        return (top + bottom - 1) / 2, (left + right - 1) / 2

    def as_dict(self) -> dict:
        """size, stride, offset (and `whole` only where an axis is whole, so other records keep their keys)."""
        record = {"size": list(self.size), "stride": list(self.stride), "offset": list(self.offset)}
        if any(self.whole):
            record["whole"] = list(self.whole)
        return record

    @classmethod
    def from_dict(cls, record: dict) -> ReceptiveField:
        whole = tuple(bool(w) for w in record.get("whole", (False, False)))
        return cls(tuple(record["size"]), tuple(record["stride"]), tuple(record["offset"]), whole)

    def describe(self) -> str:
        """One phrase for a log line: '27×27 px, stride 8×8, offset -13,-13' or the whole input."""
        if all(self.whole):
            return f"every unit sees the whole {self.size[0]}×{self.size[1]} px input"
        (height, width), (jump_y, jump_x), (top, left) = self.size, self.stride, self.offset
        text = f"{height}×{width} px, stride {jump_y}×{jump_x}, offset {top},{left}"
        axes = [name for name, whole in zip(("rows", "columns"), self.whole, strict=True) if whole]
        return text + (f" (the whole input along its {axes[0]})" if axes else "")


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
            if len(tensor_args) != 1:  # e.g. a DenseNet layer called with the list of earlier maps
                raise ReceptiveFieldError(f"{what}: a module called with {len(tensor_args)} inputs is not supported")
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


# ----------------------------------------------------------------------------------------------
# the field of any graph, from the gradient support of its units

# Functions that only ever shrink a unit's support (a dead ReLU, a saturated gate, a clamp): identity in the
# support copy. Matched by name so that modules, torch.* functions and Tensor methods are all caught.
# Gates (squeeze-and-excitation multiplies a map by a sigmoid of its pooled self): as identities, every gated block
# would square the values and overflow; a bounded map whose derivative is never zero keeps them finite.
_GATE_FUNCTIONS = frozenset("sigmoid sigmoid_ hardsigmoid".split())
_IDENTITY_FUNCTIONS = frozenset(
    "relu relu_ relu6 hardtanh hardtanh_ leaky_relu leaky_relu_ elu elu_ selu selu_ celu celu_ gelu silu mish "
    "hardswish tanh tanh_ softplus prelu rrelu rrelu_ threshold threshold_ "
    "logsigmoid hardshrink softshrink clamp clamp_ clip clip_ clamp_min clamp_min_ clamp_max clamp_max_".split()
)


def _average_pool(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """A max pool's geometry as an average: every position of each window passes gradient, not only the max."""
    stride = stride if stride not in (None, [], ()) else kernel_size
    if _pair(dilation) == (1, 1):
        return F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad=True)
    kernel = _pair(kernel_size)
    weight = input.new_ones(input.shape[1], 1, *kernel) / (kernel[0] * kernel[1])
    return F.conv2d(input, weight, stride=stride, padding=padding, dilation=dilation, groups=input.shape[1])


def _finite_pad(input, pad, mode="constant", value=None):
    """F.pad, with an infinite fill (timm pads max pools with -inf) made 0: the pool is an average here."""
    if value is not None and not math.isfinite(value):
        value = 0.0
    return F.pad(input, pad, mode=mode, value=value)


class _SupportMode(TorchFunctionMode):
    """While active: non-linearities are identity, max pools are average pools of the same geometry, global max
    (amax) is a mean, infinite padding is 0. Nothing else changes."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _IDENTITY_FUNCTIONS and args and isinstance(args[0], torch.Tensor):
            return args[0]
        if name in _GATE_FUNCTIONS and args and isinstance(args[0], torch.Tensor):
            return args[0] / (1 + args[0].abs())
        if name in ("max_pool2d", "max_pool2d_with_indices"):
            out = _average_pool(*args, **kwargs)
            return (out, torch.zeros_like(out, dtype=torch.long)) if name.endswith("indices") else out
        if name in ("adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"):
            out = F.adaptive_avg_pool2d(args[0], args[1] if len(args) > 1 else kwargs["output_size"])
            return (out, torch.zeros_like(out, dtype=torch.long)) if name.endswith("indices") else out
        if name == "amax":
            dim = args[1] if len(args) > 1 else kwargs.get("dim", ())
            keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            return args[0].mean(dim=dim if dim not in ((), []) else None, keepdim=keepdim)
        if name == "pad":
            return _finite_pad(*args, **kwargs)
        return func(*args, **kwargs)


def _support_copy(model: nn.Module, seed: int) -> nn.Module:
    """A float64 CPU copy in eval mode whose weights are positive: every weight tensor (2+ dims) random in
    [0.5, 1.5) divided by its fan-in (each output's weights sum to about 1, so values stay near 1 however deep
    the layer); every vector parameter (bias, norm scale) 1; BatchNorm statistics mean 0, variance 1; other
    buffers as they are. The original weights are never copied (placeholders stand in for them)."""
    with torch.inference_mode(False):  # a caller's inference mode would make tensors autograd cannot use
        return _positive(_placeholder_copy(model), seed)


def _placeholder_copy(model: nn.Module) -> nn.Module:
    memo: dict = {}
    for buffer in model.buffers():
        memo[id(buffer)] = buffer.detach().to("cpu", torch.float64 if buffer.is_floating_point() else None).clone()
    for param in model.parameters():
        if param.is_floating_point():
            memo[id(param)] = nn.Parameter(torch.empty(param.shape, dtype=torch.float64), requires_grad=False)
    return copy.deepcopy(model, memo).eval().to(device="cpu", dtype=torch.float64)


def _positive(clone: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in clone.parameters():
            if not param.is_floating_point():
                continue
            if param.dim() >= 2:
                param.uniform_(0.5, 1.5, generator=generator).div_(max(1, param[0].numel()))
            else:
                param.fill_(1.0)
        for name, buffer in clone.named_buffers():
            if name.endswith("running_mean"):
                buffer.zero_()
            elif name.endswith("running_var"):
                buffer.fill_(1.0)
    return clone


def _unit_positions(length: int) -> torch.Tensor:
    """Six positions along one axis of a map: the first two, the middle two, the last two (repeats if short)."""
    middle = (length - 1) // 2
    return torch.tensor([0, 1, middle, middle + 1, length - 2, length - 1]).clamp(0, length - 1)


def _layer_output(support: nn.Module, layer: str, image: torch.Tensor) -> torch.Tensor:
    """The first output of `layer` on `image` (with the graph for autograd), under `_SupportMode`."""
    captured = {}

    def grab(_module, _inputs, output):
        captured["out"] = output
        raise StopForward

    with hooked(support, {layer: grab}), _SupportMode():
        try:
            support(image)
        except StopForward:
            pass
    if "out" not in captured:
        raise ReceptiveFieldError(f"layer {layer!r} is not called in the model's forward pass")
    output = captured["out"]
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ReceptiveFieldError(f"layer {layer!r} has no spatial map (output {shape}, expected [N, C, H, W])")
    return output


def _supports(support: nn.Module, layer: str, size, channels: int, generator: torch.Generator):
    """Gradient supports of six units per axis of `layer` on an input of `size`, in one batched backward pass.

    Returns per axis (unit positions [6], first supported pixel [6], last supported pixel + 1 [6]) and the
    layer's map size. Item i of the batch differentiates unit (rows[i], cols[i]) only.
    """
    with torch.inference_mode(False), torch.enable_grad():
        image = torch.rand(6, channels, *size, generator=generator, dtype=torch.float64) + 0.5
        image.requires_grad_(True)
        output = _layer_output(support, layer, image)
        height, width = output.shape[-2:]
        ys, xs = _unit_positions(height), _unit_positions(width)
        output[torch.arange(6), :, ys, xs].sum().backward()
    touched = image.grad.abs().sum(dim=1) > 0  # [6, H, W]
    if not touched.flatten(1).any(dim=1).all():
        raise ReceptiveFieldError(f"layer {layer!r}: a unit's output has a zero gradient everywhere")
    axes = []
    for units, seen in ((ys, touched.any(dim=2)), (xs, touched.any(dim=1))):  # seen: [6, extent]
        index = torch.arange(seen.shape[1])
        first = torch.where(seen, index, seen.shape[1]).amin(dim=1)
        last = torch.where(seen, index, -1).amax(dim=1) + 1
        axes.append((units, first, last))
    return axes, (int(height), int(width))


_IRREGULAR = "irregular"


def _resolve_axis(units: torch.Tensor, first: torch.Tensor, last: torch.Tensor, extent: int):
    """(jump, offset, size) of one axis from the supports of its units, or None when every support is cut by
    the input's border (the field does not fit), or _IRREGULAR when neighbouring units are not a fixed number of
    pixels apart (no regular grid).

    A support edge counts only where the input's border did not cut it (first > 0, last < extent): the stride
    from two neighbouring units' uncut edges, the offset from the uncut starts, the end from the uncut ends."""
    open_first, open_last = first > 0, last < extent
    neighbours = (units.view(1, -1) - units.view(-1, 1)) == 1  # [i, j]: unit j follows unit i
    jumps = torch.cat(
        [
            (first.view(1, -1) - first.view(-1, 1))[neighbours & open_first.view(-1, 1) & open_first.view(1, -1)],
            (last.view(1, -1) - last.view(-1, 1))[neighbours & open_last.view(-1, 1) & open_last.view(1, -1)],
        ]
    ).unique()
    if len(jumps) > 1 or (len(jumps) == 1 and int(jumps[0]) < 1):
        return _IRREGULAR
    if not len(jumps) or not open_first.any() or not open_last.any():
        return None
    jump = int(jumps[0])
    start = int((first - units * jump)[open_first].min())
    end = int((last - units * jump)[open_last].max())
    return _Axis(jump, start, end - start)


def gradient_receptive_field(
    model: nn.Module, layer: str, input_size: tuple[int, int], *, channels: int = 3, seed: int = 0
) -> ReceptiveField:
    """The receptive field of `layer`'s units for any graph, from the gradient support of six units per axis.

    A support is the set of input pixels with a non-zero gradient of one unit (summed over channels). It is
    computed on a float64 copy (`_support_copy`) whose weights are positive and whose non-linearities are
    identity and max pools average pools (`_SupportMode`, which also catches functional calls in `forward`):
    every path from a pixel to the unit then adds a positive amount, so no pixel's gradient is zero because a
    ReLU is inactive, a max pool routed it elsewhere or paths cancelled; the support is the set of pixels the
    unit depends on structurally, the field the arithmetic of `receptive_field` gives (tests check equality on
    chain networks). This was preferred to a union over random inputs of the real model, which can only
    approach the field from below (a path through a position that is never the max stays hidden).

    Stride and offset come from units whose support the border does not cut, so when none fits, the input is
    doubled along that axis (at most 4x the area of `input_size`). An axis that still does not fit (every unit
    sees the whole input, as after squeeze-and-excitation or attention, or the field is larger than 4 inputs)
    is reported as the whole input: `whole` is True for it, its size is the input's and its offset 0.
    """
    get_module(model, layer)
    support = _support_copy(model, seed)
    generator = torch.Generator().manual_seed(seed)
    size, found, nominal_map = list(input_size), [None, None], None
    while True:
        axes, map_size = _supports(support, layer, tuple(size), channels, generator)
        nominal_map = nominal_map or map_size
        for axis in range(2):
            if found[axis] is None:
                found[axis] = _resolve_axis(*axes[axis], size[axis])
        pending = [axis for axis in range(2) if found[axis] is None]
        grown = [extent * (2 if axis in pending else 1) for axis, extent in enumerate(size)]
        if not pending or grown[0] * grown[1] > 4 * input_size[0] * input_size[1]:
            break
        size = grown
    whole = tuple(not isinstance(axis, _Axis) for axis in found)
    fields = [
        _Axis(max(1, round(extent / cells)), 0, extent) if is_whole else axis
        for axis, is_whole, extent, cells in zip(found, whole, input_size, nominal_map, strict=True)
    ]
    return ReceptiveField(
        (fields[0].size, fields[1].size), (fields[0].jump, fields[1].jump), (fields[0].start, fields[1].start), whole
    )


_MEASURED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(layer, size, channels): field}


def layer_receptive_field(
    model: nn.Module, layer: str, input_size: tuple[int, int], *, channels: int = 3
) -> ReceptiveField:
    """The field of `layer` for any model: the exact arithmetic (`receptive_field`) where it applies (chain
    networks: fast, input-size free), else the gradient supports (`gradient_receptive_field`, with a log line
    saying why). Measured fields are cached per model, layer, input size and channels."""
    try:
        return receptive_field(model, layer)
    except ReceptiveFieldError as err:
        reason = str(err)
    cache = _MEASURED.setdefault(model, {})
    key = (layer, tuple(input_size), int(channels))
    if key not in cache:
        cache[key] = gradient_receptive_field(model, layer, tuple(input_size), channels=channels)
        print(
            f"receptive field of {layer!r}: the module graph does not give it ({reason}); measured from "
            f"gradient supports on {input_size[0]}×{input_size[1]} px inputs: {cache[key].describe()}",
            flush=True,
        )
    return cache[key]


def empirical_receptive_field(
    model: nn.Module,
    layer: str,
    unit: tuple[int, int],
    input_size: tuple[int, int],
    *,
    seed: int = 0,
    channels: int = 3,
) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the input pixels with a non-zero gradient of unit (y, x), summed over
    channels, on the positive support copy of `gradient_receptive_field` (so the box is the field clipped to
    the image)."""
    support = _support_copy(model, seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode(False), torch.enable_grad():
        image = torch.rand(1, channels, *input_size, generator=generator, dtype=torch.float64) + 0.5
        image.requires_grad_(True)
        output = _layer_output(support, layer, image)
        output[0, :, unit[0], unit[1]].sum().backward()
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
