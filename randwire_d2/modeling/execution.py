"""Fast, exact execution of a wired stage: the function of `WiredStage`'s per-node loop,
y_v = norm(op(ReLU(sum_i sigmoid(w_i) * y_u_i))), with far less memory traffic.

The plain loop makes a full-size tensor of every product and partial sum and stores four
activations per node. Here, from a `StagePlan` made once per stage:
- the stage input's ReLU is computed once, and in eval each output is freed after its last use;
- aggregation + ReLU is one in-place pass (`aggregation.AggregateReLU`);
- an affine norm (FrozenBN, BN in eval) is folded into the node's last conv (`norm_folding.py`);
- with `memory_efficient`, `lean_node.LeanNode` stores two activations per node and recomputes
  the cheap parts in backward (Pleiss et al. 2017), one with `recompute_convs`;
- separable-conv nodes may run on the Triton kernels (`kernels.py`) where
  `execution_path.choose_execution` says so;
- a node watched by forward hooks runs as its module, so hooks see what the reference shows.

The no-grad eval path uses plain tensor ops only, so it traces (TorchScript, ONNX, fvcore).
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .aggregation import AggregateReLU, aggregate, coefficients, removal_at
from .execution_path import runs_kernels
from .lean_node import LeanLayer, LeanNode, batch_norm_with_affine
from .norm_folding import affine_of_norm, foldable

__all__ = ["StagePlan", "NodeSpec", "STAGE_INPUT", "fast_stage_forward"]

STAGE_INPUT = -1


class StagePlan:
    """The execution plan of one wiring: per node its sources (node indices, or STAGE_INPUT),
    the output nodes, and per node the tensors whose last consumer it is (freed in eval)."""

    def __init__(self, preds: Sequence[Sequence[int]], outputs: Sequence[int]):
        self.sources: Tuple[Tuple[int, ...], ...] = tuple(
            tuple(p) if p else (STAGE_INPUT,) for p in preds
        )
        self.outputs = tuple(outputs)
        last = {}
        for v, src in enumerate(self.sources):
            for u in src:
                last[u] = v
        for u in self.outputs:
            last[u] = len(self.sources)  # kept to the end: the stage output reads them
        self.last_input_use = last[STAGE_INPUT]
        self.free_after: Tuple[Tuple[int, ...], ...] = tuple(
            tuple(u for u, v_last in last.items() if v_last == v and u != STAGE_INPUT)
            for v in range(len(self.sources))
        )


class NodeSpec:
    """How a node's transform decomposes for fast execution: `relu_first` (a leading ReLU, fused
    into the aggregation), `layers` (the op's layers, flattened) and `norm` (the last child)."""

    def __init__(self, node: nn.Module):
        transform = node.transform
        self.modules = list(node.modules())
        children = list(transform.children()) if isinstance(transform, nn.Sequential) else []
        self.relu_first = (
            len(children) >= 3 and type(children[0]) is nn.ReLU and not children[0].inplace
        )
        if self.relu_first:
            self.layers = _flatten(children[1:-1])
            self.norm = children[-1]
        else:
            self.layers, self.norm = [], None
        self.kernel_stride = _separable_stride(self.layers) if self.relu_first else None
        self.cache = {}  # no-grad constants (see `_constant`)

    @property
    def fused(self) -> bool:
        """Whether the Triton node kernels compute this node (a 3x3 separable conv)."""
        return self.kernel_stride is not None

    def hooked(self) -> bool:
        """Whether forward hooks watch the node or its layers (then it runs as its module)."""
        return any(m._forward_hooks or m._forward_pre_hooks for m in self.modules)


def _separable_stride(layers) -> Optional[int]:
    """The depthwise stride when `layers` are the kernels' op (3x3 depthwise, padding 1, then
    1x1, no biases); else None."""
    if len(layers) != 2 or not all(type(m) is nn.Conv2d for m in layers):
        return None
    dw, pw = layers
    channels = dw.in_channels
    if not (
        dw.out_channels == channels == dw.groups == pw.in_channels
        and dw.kernel_size == (3, 3)
        and dw.padding == (1, 1)
        and dw.dilation == (1, 1)
        and dw.stride[0] == dw.stride[1]
        and dw.stride[0] in (1, 2)
        and pw.kernel_size == (1, 1)
        and pw.stride == (1, 1)
        and pw.groups == 1
        and dw.bias is None
        and pw.bias is None
        and dw.padding_mode == pw.padding_mode == "zeros"
    ):
        return None
    return dw.stride[0]


def _flatten(modules) -> List[nn.Module]:
    out = []
    for m in modules:
        if isinstance(m, nn.Sequential):
            out.extend(_flatten(m.children()))
        else:
            out.append(m)
    return out


def fast_stage_forward(stage, x: torch.Tensor, removed_edge=None) -> torch.Tensor:
    """WiredStage's function, executed from `stage.plan` (see the module docstring)."""
    plan: StagePlan = stage.plan
    grad = torch.is_grad_enabled()
    lean = grad and stage.memory_efficient
    fused = runs_kernels(stage.path, x.dtype)
    y: List[Optional[torch.Tensor]] = [None] * len(plan.sources)
    # Per node, in lean mode: (z, a, b) when its output is y = a * z + b (BatchNorm of z).
    recon: List[Optional[tuple]] = [None] * len(plan.sources)
    shared = {}  # ReLU(x), computed once for every node fed by the stage input alone
    specs = stage.specs
    global_hooks = _global_hooks()
    for v, node in enumerate(stage.nodes):
        spec: NodeSpec = specs[v]
        src = plan.sources[v]
        removed = removal_at(removed_edge, v)
        is_input = src[0] == STAGE_INPUT
        inputs = [x] if is_input else [y[u] for u in src]
        if not spec.relu_first or global_hooks or spec.hooked():
            y[v] = node(inputs, removed)  # the module call runs the user's hooks
        elif fused and spec.fused:
            y[v] = _kernel_node_forward(stage, node, spec, inputs, removed)
        else:
            rec = [recon[u] if u >= 0 else None for u in src]
            y[v], recon[v] = _node_forward(
                stage, node, spec, inputs, rec, removed, lean, shared, is_input
            )
        for u in plan.free_after[v]:  # autograd keeps what backward needs
            y[u] = recon[u] = None
        if v == plan.last_input_use:
            shared.clear()
    outs = plan.outputs
    if len(outs) == 1:
        return y[outs[0]] / 1
    # add_/div_ on the new sum are safe under autograd: neither saves its operands.
    s = y[outs[0]] + y[outs[1]]
    for u in outs[2:]:
        s.add_(y[u])
    return s.div_(len(outs))


def _global_hooks() -> bool:
    from torch.nn.modules import module as _m

    return bool(_m._global_forward_hooks or _m._global_forward_pre_hooks)


def _node_forward(stage, node, spec: NodeSpec, inputs, recon, removed, lean, shared, is_input):
    """(y, recon entry) of one node whose transform is ReLU -> layers -> norm."""
    weight = node.weight
    norm = spec.norm
    last = spec.layers[-1]
    fold = stage.fold_norms and foldable(norm, last)
    if fold:
        folded = _folded(spec, norm, last)
    if lean:
        layers = [LeanLayer(l) for l in spec.layers[:-1]]
        layers.append(LeanLayer(last, folded if fold else None))
        params = [p for l in layers for p in l.params]
        meta = (layers, recon, removed, stage.recompute_convs)
        z = LeanNode.apply(meta, weight, *inputs, *params)
    else:
        if weight is None and is_input:
            if "x" not in shared:
                shared["x"] = F.relu(inputs[0])
            r = shared["x"]
        elif weight is None:
            r = F.relu(inputs[0])
        elif torch.is_grad_enabled():
            r = AggregateReLU.apply(weight, removed, *inputs)
        else:
            c = _constant(spec, "c", (weight,), lambda: coefficients(weight, removed), removed)
            r = aggregate(inputs, c).relu_()
        z = r
        for layer in spec.layers[:-1]:
            z = layer(z)
        if fold:
            fw, fb = (t.to(z.dtype) for t in folded)
            z = F.conv2d(z, fw, fb, last.stride, last.padding, last.dilation, last.groups)
        else:
            z = last(z)
    if fold:
        return z, None
    if lean and type(norm) is nn.BatchNorm2d:
        out, (a, b) = batch_norm_with_affine(norm, z)
        return out, (z, a, b)
    return norm(z), None


def _kernel_node_forward(stage, node, spec: NodeSpec, inputs, removed):
    """y of a separable-conv node on the Triton kernels: aggregation, ReLU and depthwise conv
    fused (without autograd, the 1x1 conv and folded norm too)."""
    from . import kernels

    dw, pw = spec.layers
    norm = spec.norm
    x = inputs[0]
    c = _constant(  # dw.weight: where the model lives when the node has no edge weights
        spec,
        "kc",
        (node.weight, dw.weight),
        lambda: _kernel_coefficients(node, x, removed),
        removed,
    )
    dtype = inputs[0].dtype
    for t in inputs[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    fmt = torch.channels_last if kernels.is_channels_last(x) else torch.contiguous_format
    inputs = [t.to(dtype=dtype).contiguous(memory_format=fmt) for t in inputs]
    if len(inputs) > kernels.MAX_SLOTS:  # the extra inputs as one slot of coefficient 1
        k = kernels.MAX_SLOTS - 1
        tail = inputs[k] * c[k].to(dtype)
        for i in range(k + 1, len(inputs)):
            tail = tail + inputs[i] * c[i].to(dtype)
        inputs = inputs[:k] + [tail]
        c = torch.cat([c[:k], c.new_ones(1)])
    fold = stage.fold_norms and foldable(norm, pw)
    weight, bias = _folded(spec, norm, pw) if fold else (pw.weight, None)
    stride = spec.kernel_stride
    if not torch.is_grad_enabled():
        z = kernels.agg_relu_dw_pw(inputs, c, dw.weight.contiguous(), weight, bias, stride)
    else:
        d = kernels.agg_relu_dw(inputs, c, dw.weight.contiguous(), stride)
        z = F.conv2d(d, weight.to(d.dtype), None if bias is None else bias.to(d.dtype))
    return z if fold else norm(z)


def _kernel_coefficients(node, x, removed):
    """The kernels' coefficients, with autograd: sigmoid(w), or 1 for a single-input node."""
    if node.weight is None:
        return torch.ones(1, device=x.device, dtype=torch.float32)
    return coefficients(node.weight, removed, detach=False)


def _folded(spec: NodeSpec, norm, conv):
    """(a * W, b) of an affine norm a * z + b folded into the conv before it."""

    def fold():
        a, b = affine_of_norm(norm)
        w = conv.weight
        return w * a.to(w.dtype).view(-1, 1, 1, 1), b.to(w.dtype)

    return _constant(
        spec, "fold", [conv.weight] + list(norm.parameters()) + list(norm.buffers()), fold
    )


def _fake(t: torch.Tensor) -> bool:
    """A tensor without data (torch.export's fake or functional tensors, meta)."""
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor) or t.is_meta or torch._is_functional_tensor(t)


def _constant(spec: NodeSpec, name: str, tensors, make, removed=None):
    """make(), cached while `tensors` are unchanged (object, storage, version, dtype, device) and
    no autograd graph is built, so eval pays no launches for coefficients or folded weights."""
    if torch.is_grad_enabled() or removed is not None:
        spec.cache.clear()
        return make()
    if torch.compiler.is_compiling() or any(_fake(t) for t in tensors if t is not None):
        return make()  # traced (torch.compile, torch.export): a constant of the graph itself
    key = tuple(
        (id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in tensors if t is not None
    )
    hit = spec.cache.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = make()
    spec.cache[name] = (key, value)
    return value
