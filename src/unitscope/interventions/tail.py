"""The network after the intervention layer (its "tail"), run on masked copies of the layer's output.

Every condition is a boolean mask over the layer's channels (True = ablated: set to zero, or to the
channel's mean over every image of the study). `build_tail` finds the tail of any CNN and prints one line
saying which of three paths it takes, and why:

- Exact tail. The model is traced with torch.fx, the layer kept as one leaf module. When everything the
  model computes after the layer depends on its input only through the layer's output (the layer runs once
  and no skip connection or branch crosses it), the tail is cut out of the graph: `body` maps the layer's
  output to the pooled features and `head` maps those to the logits. The network before the layer runs once
  per image (`layer_maps`); each condition re-runs only the tail, batched over conditions: [conditions x
  images] masked copies go through it in chunks that bound memory.
- Pool first. When the tail begins with global average pooling followed at most by a flatten
  (AdaptiveAvgPool2d(1), F.adaptive_avg_pool2d(x, 1) or x.mean((2, 3)); e.g. the last conv block of
  MobileNetV2 or a ResNet), masking commutes with the pool (a zeroed or constant map averages to 0 or that
  constant), so the conditions act on the stored per-image channel means and no image is decoded at all;
  with a head that is one Linear, logits come from the few channels that change (`_affine_logits`).
- Full re-runs. When the tail cannot be cut out (a skip or a branch crosses the layer, as inside a residual
  or a dense block; the layer runs twice; fx cannot trace the model), every condition re-runs the whole
  model on the preprocessed images, a hook replacing the layer's ablated channels; batched over conditions
  too (`hooked_condition` is the same run for one condition, the reference of the tests).

Pooled features (what the downstream probes read): the first node after the layer that every path from it
to the output passes through (so the logits are a function of it alone) and that is, in this order of
preference, (1) a global average pool, taken after the flatten that follows it, as [N, C]; (2) the input
of a Linear (the classifier's input, e.g. AlexNet's and VGG's flattened 6x6 / 7x7 maps); (3) the logits
themselves, with an empty head (as with SqueezeNet, whose conv classifier ends in the global pool: (1) is
its logits too). A node qualifies only if a hook can record
it (a module's output, or the input of the module that reads it), so the hooked runs record the same
features. When fx cannot trace the model they are the input of the first Linear module that runs after
the layer, else the logits.
"""

from __future__ import annotations

import operator
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from tqdm import tqdm

from unitscope.data.manifest import ManifestDataset, read_manifest
from unitscope.errors import one_line
from unitscope.hooks import ActivationRecorder, hooked
from unitscope.interventions.errors import InterventionError
from unitscope.models.preprocessing import build_transform
from unitscope.models.registry import resolve_layer
from unitscope.runtime import make_loader

CHUNK_BYTES = 1 << 28  # ~256 MiB of masked activations (or logits) per step
TAIL_EXPANSION = 8  # maps through the tail: budget the input at 1/8, as blocks expand channels ~6x
RERUN_EXPANSION = 16  # full re-runs: a stem's maps (64 x H/2 x W/2, kept alive a while) are ~16 times the image

PooledAt = tuple[tuple[str, ...], str]  # (modules, "input" | "output"): the first to run after the layer


@dataclass
class Tail:
    """The network after `layer`: `features(x)` -> pooled features; `head` -> logits; or, when `rerun`,
    the whole `model` re-run with a hook at the layer (`body` and `head` are then None)."""

    layer: str
    body: nn.Module | None  # the layer's output -> pooled features (exact tail)
    head: nn.Module | None  # pooled features [n, D] -> logits (exact tail)
    pool_first: bool  # the tail begins with the global pool: interventions can act on channel means
    pooled_at: PooledAt | None  # where a hook records the pooled features (None: they are the logits)
    model: nn.Module | None = None  # the whole model (what full re-runs run)
    affine: tuple[torch.Tensor, torch.Tensor] | None = None  # (W [L, D], b [L]) when the head is one Linear
    path: str = ""  # the line `build_tail` prints: which path and why

    @property
    def rerun(self) -> bool:
        return self.body is None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled, logits) from the layer's maps [n, C, H, W] (which the tail may overwrite in place), or from
        its channel means [n, C] when the tail starts with the global pool (the pool of a masked map is the
        masked mean)."""
        if self.rerun:
            raise InterventionError(
                f"layer {self.layer!r}: the tail cannot be cut out ({self.path}); use Tail.run on images"
            )
        if x.dim() == 2:
            if not self.pool_first:
                raise InterventionError(
                    f"layer {self.layer!r} is not followed by the global pool; the tail needs its maps"
                )
            pooled = x
        else:
            pooled = self.features(x)
        return pooled, self.head(pooled)

    def run(self, x: torch.Tensor, ablate: torch.Tensor, fill: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled [k, n, D], logits [k, n, L]) of k conditions `ablate` [k, C] on n inputs: the layer's maps or
        channel means (exact tail), or the model's preprocessed images (full re-runs)."""
        k = ablate.shape[0]
        if self.rerun:
            n = x.shape[0]
            batch = x.unsqueeze(0).expand(k, *x.shape).reshape(k * n, *x.shape[1:])
            pooled, logits = _hooked_run(self.model, self, batch, ablate.repeat_interleave(n, dim=0), fill)
        else:
            masked = ablate_activations(x, ablate, fill)  # [k, n, C, ...]
            pooled, logits = self(masked.reshape(-1, *masked.shape[2:]))
        return pooled.view(k, -1, pooled.shape[-1]), logits.view(k, -1, logits.shape[-1])


def build_tail(model: nn.Module, layer: str, model_name: str) -> Tail:
    """The network after `layer`, cut out of its torch.fx graph when it can be, else full re-runs (see the
    module docstring); prints which path and why. A layer the output does not depend on, or one at the
    classifier (no maps left to mask), is a one-line InterventionError."""
    resolve_layer(model, layer, model_name)
    try:
        traced = _trace(model, layer)
    except Exception as err:  # noqa: BLE001 - fx fails in many ways (control flow, unsupported ops); re-run instead
        linear = tuple(name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != layer)
        reason = f"torch.fx cannot trace {type(model).__name__} ({one_line(err, 120)})"
        return _announce(_rerun_tail(model, layer, (linear, "input") if linear else None, reason), model_name)
    graph = _Graph(traced, model_name)
    calls = [node for node in graph.order if node.op == "call_module" and node.target == layer]
    live = [node for node in calls if node in graph.live]
    if not live:
        raise InterventionError(
            f"model {model_name}: the output does not depend on layer {layer!r}; nothing to intervene on"
        )
    pooled, pooled_at = _pooled_node(graph, live[-1], layer, model_name)
    if len(calls) > 1:
        reason = f"the layer runs {len(calls)} times per forward pass"
        return _announce(_rerun_tail(model, layer, pooled_at, reason), model_name)
    crossing = graph.cut_at(live[0])
    if crossing is not None:
        reason = f"a skip connection or branch crosses the layer ({crossing[0].name} also reads {crossing[1].name})"
        return _announce(_rerun_tail(model, layer, pooled_at, reason), model_name)
    return _announce(_exact_tail(model, graph, live[0], pooled, pooled_at), model_name)


def _announce(tail: Tail, model_name: str) -> Tail:
    print(f"tail of {model_name} at {tail.layer!r}: {tail.path}", flush=True)
    return tail


def _rerun_tail(model: nn.Module, layer: str, pooled_at: PooledAt | None, reason: str) -> Tail:
    where = "the logits" if pooled_at is None else f"the {pooled_at[1]} of {pooled_at[0][0]}"
    if pooled_at is not None and len(pooled_at[0]) > 1:
        where = "the input of the first Linear module that runs after the layer"
    path = f"hooked full re-runs of the model per condition, as {reason}; pooled features: {where}"
    return Tail(layer, None, None, pool_first=False, pooled_at=pooled_at, model=model, path=path)


def _exact_tail(
    model: nn.Module, graph: _Graph, layer_node: fx.Node, pooled: fx.Node, pooled_at: PooledAt | None
) -> Tail:
    """Body (layer output -> pooled features) and head (pooled -> logits) cut out of the graph."""
    rank = _global_pool_rank(pooled, graph.modules)  # the pool itself (not flattened): the head gets its rank back
    body = graph.cut(layer_node, pooled)
    head = graph.cut(pooled, graph.result, unflatten=rank == 4, keep_input=True)
    for part in (body, head):
        part.training = model.training  # (without .train(): the modules are the model's own)
    pool_first = graph.pool_first(layer_node, pooled)
    affine = None if model.training else _affine(head)
    where = "the logits" if pooled_at is None else f"the {pooled_at[1]} of {pooled_at[0][0]}"
    path = (
        f"exact tail cut from the torch.fx graph ({len(graph.after(layer_node)) - 1} nodes); pooled features: {where}"
        + ("; global average pool first: conditions act on channel means" if pool_first else "")
        + ("; linear head" if affine is not None else "")
    )
    return Tail(layer_node.target, body, head, pool_first, pooled_at, model, affine, path)


# ---------------------------------------------------------------------------------------------- the fx graph


class _LeafTracer(fx.Tracer):
    """torch.fx's tracer that keeps the intervention layer as one call (its hooks see its output)."""

    def __init__(self, leaf: str):
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name == self.leaf or super().is_leaf_module(module, qualified_name)


def _trace(model: nn.Module, layer: str) -> fx.GraphModule:
    tracer = _LeafTracer(layer)
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


class _Graph:
    """A model traced with its layer as a leaf, and the node sets a tail is cut by: `live` (what the output
    depends on) and `varying` (what depends on the input; the rest, parameters and constants, may be copied)."""

    def __init__(self, module: fx.GraphModule, model_name: str):
        self.module = module
        self.modules = dict(module.named_modules())
        self.order = list(module.graph.nodes)
        output = next(node for node in self.order if node.op == "output")
        if not isinstance(output.args[0], fx.Node):
            kind = type(output.args[0]).__name__
            raise InterventionError(
                f"model {model_name} returns a {kind}, not one tensor of logits: interventions need one"
            )
        self.result = output.args[0]
        self.varying: set[fx.Node] = set()
        for node in self.order:
            if node.op == "placeholder" or any(arg in self.varying for arg in node.all_input_nodes):
                self.varying.add(node)
        self.live: set[fx.Node] = set()
        stack = [self.result]
        while stack:
            node = stack.pop()
            if node not in self.live:
                self.live.add(node)
                stack.extend(node.all_input_nodes)
        self.calls = Counter(node.target for node in self.order if node.op == "call_module")

    def after(self, start: fx.Node) -> list[fx.Node]:
        """`start` and the live nodes that depend on it, in execution order."""
        found = {start}
        for node in self.order[self.order.index(start) + 1 :]:
            if node in self.live and any(arg in found for arg in node.all_input_nodes):
                found.add(node)
        return [node for node in self.order if node in found]

    def cut_at(self, start: fx.Node) -> tuple[fx.Node, fx.Node] | None:
        """None when everything after `start` depends on the input only through it; else (a node after it,
        what that node reads from before it): the skip connection or branch that crosses `start`."""
        after = set(self.after(start))
        for node in self.order:
            if node in after and node is not start:
                for arg in node.all_input_nodes:
                    if arg in self.varying and arg not in after:
                        return node, arg
        return None

    def cut(self, start: fx.Node, end: fx.Node, *, unflatten: bool = False, keep_input: bool = False) -> fx.GraphModule:
        """The computation from `start`'s value (the one input; given as [n, C] and viewed as [n, C, 1, 1] when
        `unflatten`) to `end`'s, with the constants it reads; `cut_at(start)` must be None. `keep_input`: copy the
        input first if an op writes into it in place (the head's input, the pooled features, is returned too)."""
        graph = fx.Graph()
        x = graph.placeholder("x")
        as_map = (slice(None), slice(None), None, None)
        env = {start: graph.call_function(operator.getitem, (x, as_map)) if unflatten else x}
        after = set(self.after(start))
        for node in self.order[: self.order.index(end) + 1]:
            if node is not start and node in self.live and (node in after or node not in self.varying):
                env[node] = graph.node_copy(node, lambda arg: env[arg])
        graph.output(env[end])
        if keep_input and any(_overwrites(user, self.modules) for user in env[start].users):
            with graph.inserting_after(env[start]):
                copy = graph.call_method("clone", (env[start],))
            env[start].replace_all_uses_with(copy, delete_user_cb=lambda user: user is not copy)
        module = fx.GraphModule(self.module, graph, "Tail")
        module.graph.eliminate_dead_code()  # the constants only the network before `start` reads
        module.recompile()
        return module

    def pool_first(self, layer_node: fx.Node, pooled: fx.Node) -> bool:
        """Whether the pooled features are the global average pool of the layer's output (then flattened)."""
        after_pooled = set(self.after(pooled))
        between = [node for node in self.after(layer_node) if node is not layer_node and node not in after_pooled]
        between.append(pooled)
        pools = [node for node in between if _global_pool_rank(node, self.modules)]
        shape_only = {"size", "dim"}
        return (
            len(pools) == 1
            and pools[0].args[0] is layer_node
            and all(
                node is pools[0]
                or _is_flatten(node, self.modules)
                or (node.op == "call_method" and node.target in shape_only)
                for node in between
            )
        )


def _pooled_node(graph: _Graph, layer_node: fx.Node, layer: str, model_name: str) -> tuple[fx.Node, PooledAt | None]:
    """The pooled features (module docstring): the first node after the layer that the output depends on only
    through, and that a hook can record: a global average pool (after its flatten), a Linear's input, the logits."""
    after = graph.after(layer_node)[1:]
    pools = [node for node in after if _global_pool_rank(node, graph.modules)]
    candidates = [flat for pool in pools for flat in (_flattened(graph, pool), pool)]
    candidates += [node.args[0] for node in after if _is_linear(node, graph.modules)]
    for node in candidates:
        if node is layer_node or node not in graph.varying or graph.cut_at(node) is not None:
            continue
        pooled_at = _record_point(graph, node)
        if pooled_at is not None:
            return node, pooled_at
    if graph.result is layer_node:
        raise InterventionError(
            f"model {model_name}: cannot intervene at layer {layer!r}: it is the network's output; "
            f"pick a conv layer before the global pool"
        )
    return graph.result, None


def _record_point(graph: _Graph, node: fx.Node) -> PooledAt | None:
    """Where a forward hook on the model sees `node`'s value: the output of the module that computes it, the
    input of a module that reads it (and does not overwrite it), or the output of the module it flattens."""
    if _called_once(graph, node):
        return (node.target,), "output"
    for user in node.users:
        if _called_once(graph, user) and user.args[0] is node and not getattr(graph.modules[user.target], "inplace", 0):
            return (user.target,), "input"
    source = node.args[0] if node.args else None
    if _is_flatten(node, graph.modules) and _called_once(graph, source):
        return (source.target,), "output"
    return None


def _called_once(graph: _Graph, node) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_module" and graph.calls[node.target] == 1


def _flattened(graph: _Graph, pool: fx.Node) -> fx.Node:
    """The flatten that follows `pool` (the pooled features as [N, C]), else `pool` itself."""
    for user in pool.users:
        if user in graph.live and user.args[0] is pool and _is_flatten(user, graph.modules):
            return user
    return pool


def _global_pool_rank(node: fx.Node, modules: dict[str, nn.Module]) -> int | None:
    """The rank of the output (4, or 2 for a mean without keepdim) when `node` is a global average pool of its
    first argument: AdaptiveAvgPool2d(1), F.adaptive_avg_pool2d(x, 1), x.mean((2, 3)) or torch.mean; else None."""

    def arg(position: int, name: str, default=None):
        return node.args[position] if len(node.args) > position else node.kwargs.get(name, default)

    def is_one(size) -> bool:
        return size == 1 or (isinstance(size, tuple | list) and len(size) > 0 and all(s == 1 for s in size))

    if node.op == "call_module":
        module = modules[node.target]
        return 4 if isinstance(module, nn.AdaptiveAvgPool2d) and is_one(module.output_size) else None
    if node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d):
        return 4 if is_one(arg(1, "output_size")) else None
    if (node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean
    ):
        dims = arg(1, "dim")
        dims = (dims,) if isinstance(dims, int) else dims
        if isinstance(dims, tuple | list) and all(isinstance(d, int) for d in dims) and {d % 4 for d in dims} == {2, 3}:
            return 4 if arg(2, "keepdim", False) else 2
    return None


def _is_flatten(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """`node` flattens its first argument to [N, -1]: flatten(1), nn.Flatten(), view/reshape(n, -1)."""
    if node.op == "call_module":
        module = modules[node.target]
        return isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1
    if (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten"
    ):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if (node.op == "call_method" and node.target in ("view", "reshape")) or (
        node.op == "call_function" and node.target is torch.reshape
    ):
        shape = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], tuple | list) else node.args[1:]
        return len(shape) == 2 and shape[1] == -1
    return False


def _overwrites(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """`node` may write into its input: a module with inplace=True, an inplace=True call, a method like relu_."""
    if node.op == "call_module":
        return bool(getattr(modules.get(node.target), "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("_")
    return node.op == "call_function" and bool(node.kwargs.get("inplace", False))


def _is_linear(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.Linear)
    return node.op == "call_function" and node.target is F.linear


def _affine(head: fx.GraphModule) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(W, b) of a head that is one Linear, maybe after eval-mode Dropout, Identity, a flatten or a copy; else None."""
    modules = dict(head.named_modules())
    nodes = [node for node in head.graph.nodes if node.op not in ("placeholder", "output")]
    linear = [node for node in nodes if node.op == "call_module" and isinstance(modules[node.target], nn.Linear)]
    result = next(node for node in head.graph.nodes if node.op == "output").args[0]
    if len(linear) != 1 or result is not linear[0]:
        return None
    passive = (nn.Dropout, nn.Identity)
    for node in nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        copy = node.op == "call_method" and node.target == "clone"
        if not (node is linear[0] or copy or isinstance(module, passive) or _is_flatten(node, modules)):
            return None
    layer = modules[linear[0].target]
    bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
    return layer.weight.detach(), bias.detach()


# ---------------------------------------------------------------------------------------------- running conditions


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


def _hooked_run(
    model: nn.Module, tail: Tail, images: torch.Tensor, ablate: torch.Tensor, fill: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass of the whole model, a hook replacing the ablated channels at the layer (`ablate` [1, C]
    for every image, or [n, C] one row per image): (pooled features where `tail.pooled_at` says, logits)."""
    recorded = {}

    def intervene(_module, _inputs, output):
        if output.dim() < 2 or output.shape[1] != ablate.shape[1]:
            raise InterventionError(
                f"layer {tail.layer!r} outputs {list(output.shape)}; the conditions mask {ablate.shape[1]} channels"
            )
        recorded["layer"] = True
        shape = (1, -1) + (1,) * (output.dim() - 2)
        fill_map = fill.to(output.dtype).view(shape).expand_as(output)
        return torch.where(ablate.view((ablate.shape[0], -1) + (1,) * (output.dim() - 2)), fill_map, output)

    def record(mode: str):
        def hook(_module, inputs, output):
            if "layer" in recorded and "pooled" not in recorded:
                recorded["pooled"] = (inputs[0] if mode == "input" else output).detach().flatten(1).clone()

        return hook

    hooks = {tail.layer: intervene}
    if tail.pooled_at is not None:
        names, mode = tail.pooled_at
        hooks.update({name: record(mode) for name in names if name != tail.layer})
    with hooked(model, hooks), torch.inference_mode():
        logits = model(images)
    if not isinstance(logits, torch.Tensor):
        raise InterventionError(f"the model returns a {type(logits).__name__}, not one tensor of logits")
    return recorded.get("pooled", logits), logits


def hooked_condition(
    model: nn.Module, tail: Tail, images: torch.Tensor, ablate: torch.Tensor, fill: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference path: one full forward pass with a hook replacing the ablated channels [C] at the layer.

    Returns (pooled features as recorded by a hook, see the module docstring; logits).
    """
    return _hooked_run(model, tail, images, ablate[None], fill)


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

    `cache` holds what the conditions act on for every image (`layer_cache`): [N, C] channel means when
    `tail.pool_first`, [N, C, H, W] maps for an exact tail, the preprocessed images when `tail.rerun`.
    Chunks of [k conditions x n images] go through the tail (or the whole model) at once. With a linear
    head on channel means, logits come from the few channels that differ (`_affine_logits`) and the pooled
    features (the masked means) are only materialised if `with_pooled`.
    """
    device = torch.device(device)
    n_images, per_image = cache.shape[0], int(np.prod(cache.shape[1:]))
    n_conditions = ablate.shape[0]
    fill = fill.to(device)
    shortcut = cache.dim() == 2 and tail.affine is not None
    with torch.inference_mode():
        probe_pooled, probe_out = tail.run(cache[:1].to(device), ablate[:1].to(device), fill)
        if shortcut:
            all_means = cache.to(device)
            intact_logits = tail.head(all_means)
            affine = tuple(t.to(device) for t in tail.affine)
    width = max(per_image, probe_pooled.shape[-1], probe_out.shape[-1])
    if tail.rerun:
        chunk_bytes //= RERUN_EXPANSION  # every condition runs the whole network, its early maps largest
    elif cache.dim() > 2 and not shortcut:
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
            with torch.inference_mode():
                pooled, logits = tail.run(cache[first : first + images_per_step].to(device), masks, fill)
            pooled_parts.append(pooled.float().cpu())
            logit_parts.append(logits.float().cpu())
        bar.update(stop - start)
        yield slice(start, stop), torch.cat(pooled_parts, dim=1), torch.cat(logit_parts, dim=1)
    bar.close()


def _loaders(manifests: dict[str, str], preprocessing: dict, *, batch_size: int, num_workers: int, device):
    """(dataset name, manifest, in-order batches of its preprocessed images) for each manifest."""
    transform = build_transform(preprocessing)
    for name, path in manifests.items():
        manifest = read_manifest(path)
        dataset = ManifestDataset(manifest, transform)
        yield (
            name,
            manifest,
            make_loader(dataset, batch_size=batch_size, num_workers=num_workers, device=torch.device(device)),
        )


def _layer_pass(
    model: nn.Module,
    layer: str,
    manifests: dict[str, str],
    preprocessing: dict,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device | str,
) -> tuple[torch.Tensor, np.ndarray]:
    """One pass over every image of the manifests (in order), up to the layer: (its float32 maps, image ids)."""
    device = torch.device(device)
    maps, ids = [], []
    loading = {"batch_size": batch_size, "num_workers": num_workers, "device": device}
    with ActivationRecorder(model, [layer], keep_maps=True, maps_dtype=torch.float32, stop_early=True) as rec:
        for name, manifest, loader in _loaders(manifests, preprocessing, **loading):
            with torch.inference_mode():
                for batch, _ in tqdm(loader, desc=f"layer maps {name}", unit="batch", mininterval=2):
                    rec(batch.to(device))
                    maps.append(rec.maps[layer])
            ids.extend(manifest["image_id"])
    return torch.cat(maps), np.asarray(ids, dtype=object)


def _images(manifests: dict[str, str], preprocessing: dict, **loading) -> tuple[torch.Tensor, np.ndarray]:
    """Every preprocessed image of the manifests (in order) and their ids: what full re-runs start from."""
    images, ids = [], []
    for name, manifest, loader in _loaders(manifests, preprocessing, **loading):
        images.extend(batch.float() for batch, _ in tqdm(loader, desc=f"images {name}", unit="batch", mininterval=2))
        ids.extend(manifest["image_id"])
    return torch.cat(images), np.asarray(ids, dtype=object)


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
    loading = {"batch_size": batch_size, "num_workers": num_workers, "device": device}
    return _layer_pass(model, layer, manifests, preprocessing, **loading)


def layer_cache(
    model: nn.Module,
    tail: Tail,
    means: np.ndarray,
    image_id: np.ndarray,
    manifests: dict[str, str],
    preprocessing: dict,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the conditions act on, per-image channel means) for the images of `manifests` (in their order),
    whose stored channel means [N, C] and ids are `means` and `image_id`: the stored means twice when the tail
    starts with the global pool; else the layer's maps (computed once) and their means; or, when every condition
    re-runs the model, its preprocessed images and the stored means."""
    if tail.pool_first:
        print(f"{tail.layer} is followed by the global pool: conditions act on the stored channel means", flush=True)
        stored = torch.from_numpy(means)
        return stored, stored
    clock = time.perf_counter()
    loading = {"batch_size": batch_size, "num_workers": num_workers, "device": device}
    if tail.rerun:  # the model runs per condition: keep the images; the stores already hold the layer's means
        cache, ids = _images(manifests, preprocessing, **loading)
    else:
        cache, ids = _layer_pass(model, tail.layer, manifests, preprocessing, **loading)
    if list(ids) != list(image_id):
        raise InterventionError(
            f"the manifests' images differ from those of the stores at {tail.layer!r}; re-run extraction"
        )
    what = "images kept for the re-runs" if tail.rerun else "layer maps computed once"
    print(f"{what}: {list(cache.shape)} in {time.perf_counter() - clock:.1f} s", flush=True)
    if tail.rerun:
        return cache, torch.from_numpy(means)
    if cache.dim() < 3:
        raise InterventionError(f"layer {tail.layer!r} outputs {list(cache.shape)}: no channel maps to intervene on")
    return cache, cache.mean(dim=(2, 3)) if cache.dim() == 4 else cache.flatten(2).mean(2)
