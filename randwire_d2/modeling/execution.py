"""Fast, exact execution of a wired stage: the same function as the per-node loop, less traffic.

`WiredStage` computes y_v = norm(op(ReLU(sum_i sigmoid(w_i) * y_u_i))) node by node (Fig. 2).
Written plainly, that loop spends most of its time moving memory, not computing: each product
sigmoid(w_i) * y_u_i and each partial sum is a new full-size tensor, forward and backward; every
node stores four activations for backward (its aggregate after ReLU, the depthwise output, the
1x1 output and its own output), and every node fed by the stage input applies its own ReLU to it.

This module executes the same parameters, keys and function from a plan made once per stage:

- `StagePlan`: flat per-node source lists (no per-call dict or list building), the stage input's
  ReLU computed once for all nodes it feeds, and, in eval, each node output freed after its last
  consumer ran.
- Aggregation + ReLU in one pass (`_AggregateReLU`): sum_i c_i * y_i accumulated in place, ReLU
  in place; backward takes the weight gradients as dot products.
- Forward hooks: a node watched by a hook (on it or its layers, e.g. the Fig. 5 damage
  analysis) runs as its module, so the hooks see what they see in the reference loop.
- Norm folding: an affine norm (FrozenBN always, BN in eval) is folded into the node's last
  convolution (W' = a * W, bias b) instead of being a pass of its own.
- Lean training memory (`memory_efficient=True`, off by default: it trades training speed for
  memory, measured in docs/speed_and_memory.md; Pleiss et al. 2017 applied per node):
  `_LeanNode` runs aggregation, ReLU and the node op in one autograd node that stores its
  inputs and its inner convolution outputs and recomputes the cheap parts (aggregate, ReLU,
  pooling) in backward. A BatchNorm'd input is stored as its pre-norm tensor z (which
  BatchNorm stores anyway) plus the per-channel affine of the batch statistics,
  y = a * z + b, so a separable-conv node keeps two activations instead of four. With
  `recompute_convs=True` the depthwise conv is recomputed too (one activation per node); the
  last convolution is never recomputed.

- Fused kernels (`execution="triton"`; `"fast"` only on GPU generations where a GPU run measured
  them faster, `KERNELS_MEASURED_FASTER`, none yet; `"eager"` is the fast execution without
  them): a node whose op is the separable conv runs its aggregation, ReLU and depthwise conv as
  one Triton kernel (`kernels.py`), in inference the 1x1 conv and folded norm too; other nodes
  run as above. `choose_execution` decides once per stage, when the model is built (for the
  device it runs on) or its execution is set, and says which path runs and why in the log.

`execution="reference"` keeps the plain loop (`WiredStage.forward_reference`), used by the FLOP
counter and as the ground truth of the tests. The eval path without gradients uses plain tensor
ops only, so it traces (TorchScript, ONNX, fvcore) like the reference.
"""

import logging
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

__all__ = [
    "EXECUTIONS",
    "StagePlan",
    "NodeSpec",
    "fast_stage_forward",
    "ExecutionPath",
    "choose_execution",
    "check_triton",
    "KERNELS_MEASURED_FASTER",
    "removal_at",
    "affine_of_norm",
    "foldable",
]

logger = logging.getLogger(__name__)

# Stage execution modes, selected by MODEL.RANDWIRE.EXECUTION.
EXECUTIONS = ("fast", "reference", "triton", "eager")

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
    """How a node's transform (ReLU -> op -> norm) decomposes for fast execution.

    `relu_first`: the transform starts with a ReLU (every registered op does), which is fused
    into the aggregation. `layers`: the op's layers in order (nested Sequentials flattened).
    `norm`: the last child (folded into the last layer where `foldable`).
    """

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
        """Whether forward hooks watch the node or its layers (the fast path calls no modules;
        such a node runs as its module)."""
        return any(m._forward_hooks or m._forward_pre_hooks for m in self.modules)


def _separable_stride(layers) -> Optional[int]:
    """The depthwise stride when `layers` are a 3x3 depthwise conv (padding 1, no bias) then a
    1x1 conv (stride 1, no bias), the kernels' op; else None."""
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


# ---------------------------------------------------------------------------------------------
# Norms as affine maps


def affine_of_norm(norm: nn.Module):
    """(a, b) with norm(z) = a * z + b per channel, for FrozenBN and BN using running stats."""
    if isinstance(norm, FrozenBatchNorm2d):
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        return scale, norm.bias - norm.running_mean * scale
    scale = (norm.running_var + norm.eps).rsqrt()
    if norm.weight is not None:
        scale = norm.weight * scale
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift


def foldable(norm: nn.Module, conv: Optional[nn.Module] = None) -> bool:
    """Whether `norm` is now a fixed per-channel affine map (FrozenBN, or BatchNorm2d in eval
    with running statistics: `affine_of_norm`) that folds into the conv before it. Given `conv`,
    also whether the fast execution can run that conv with the folded weight and bias (a
    zero-padded Conv2d without bias); `frozen.py`, which rewrites the conv, asks about the norm."""
    if type(norm) not in (nn.BatchNorm2d, FrozenBatchNorm2d):
        return False
    if type(norm) is nn.BatchNorm2d and (norm.training or norm.running_mean is None):
        return False
    if conv is None:
        return True
    return isinstance(conv, nn.Conv2d) and conv.bias is None and conv.padding_mode == "zeros"


def _batch_norm_with_affine(bn: nn.BatchNorm2d, z: torch.Tensor):
    """bn(z) exactly as nn.BatchNorm2d.forward computes it (running statistics included), plus
    the detached per-channel (a, b) with bn(z) = a * z + b for this batch."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    y, mean, invstd = torch.native_batch_norm(
        z,
        bn.weight,
        bn.bias,
        bn.running_mean if track else None,
        bn.running_var if track else None,
        use_batch,
        factor,
        bn.eps,
    )
    with torch.no_grad():
        if use_batch:
            a = invstd.float() if bn.weight is None else bn.weight * invstd
            b = -mean * a if bn.bias is None else bn.bias - mean * a
        else:
            a, b = affine_of_norm(bn)
    return y, (a.detach(), b.detach())


# ---------------------------------------------------------------------------------------------
# Aggregation


def removal_at(removed_edge, v: int):
    """Node v's share of a stage's edge removal `removed_edge`: None (no removal), (node, input
    position) of the removed edge, or {node: keep mask} (RandWire.use_edge_masks). Returns
    None, the removed input position, or the node's keep mask."""
    if removed_edge is None:
        return None
    if isinstance(removed_edge, dict):
        return removed_edge.get(v)
    return removed_edge[1] if removed_edge[0] == v else None


def _coefficients(weight: Optional[torch.Tensor], removed, detach: bool = True):
    """sigmoid(w) with the removed edge's coefficient 0 (Sec. 4.2, and so no gradient there),
    detached unless `detach` is False. `removed`: None, the removed input position, or a keep
    mask (1 per input, 0 on the removed edge)."""
    if weight is None:
        return None
    c = torch.sigmoid(weight.detach() if detach else weight)
    if isinstance(removed, torch.Tensor):
        c = c * removed.to(c.dtype)
    elif removed is not None:
        c = c * (torch.arange(len(c), device=c.device) != removed).to(c.dtype)
    return c


def _aggregate(inputs: Sequence[torch.Tensor], c: Optional[torch.Tensor]) -> torch.Tensor:
    """sum_i c_i * inputs_i in one new tensor (in-place accumulation)."""
    if c is None:
        return inputs[0].clone()
    s = torch.mul(inputs[0], c[0].to(inputs[0].dtype))
    for i in range(1, len(inputs)):
        s.addcmul_(inputs[i], c[i].to(s.dtype))
    return s


def _flat(t: torch.Tensor) -> torch.Tensor:
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)
    return t.reshape(-1)


def _aggregate_backward(g_s, inputs, weight, c, need_inputs):
    """Gradients of s = sum_i c_i * inputs_i, c = sigmoid(w) (0 where removed)."""
    if c is None:
        return [g_s if need_inputs[0] else None], None
    grads = [g_s * c[i].to(g_s.dtype) if need_inputs[i] else None for i in range(len(inputs))]
    g_w = None
    if weight is not None and weight.requires_grad:
        if g_s.dtype in (torch.float32, torch.float64):
            gf = _flat(g_s)
            dots = torch.stack([torch.dot(gf, _flat(x).to(gf.dtype)) for x in inputs])
        else:  # accumulate low-precision products in float32, as autograd's sum does
            dots = torch.stack([torch.sum(g_s * x, dtype=torch.float32) for x in inputs])
        # d sigmoid = c (1 - c); c = 0 on the removed edge, so it gets no gradient.
        g_w = (dots * (c * (1 - c)).to(dots.dtype)).to(weight.dtype)
    return grads, g_w


class _AggregateReLU(torch.autograd.Function):
    """r = ReLU(sum_i c_i * x_i): one output tensor, stored once (the next op stores it too)."""

    @staticmethod
    def forward(ctx, weight, removed, *inputs):
        c = _coefficients(weight, removed)
        r = _aggregate(inputs, c).relu_()
        ctx.c = c
        ctx.save_for_backward(weight, r, *inputs)
        return r

    @staticmethod
    def backward(ctx, g_r):
        weight, r, *inputs = ctx.saved_tensors
        g_s = torch.ops.aten.threshold_backward(g_r, r, 0)
        need = ctx.needs_input_grad[2:]
        grads, g_w = _aggregate_backward(g_s, inputs, weight, ctx.c, need)
        return (g_w, None, *grads)


# ---------------------------------------------------------------------------------------------
# Lean node: aggregation -> ReLU -> op, storing only the inputs


class _Layer:
    """One op layer as the lean node runs it: a zero-padded Conv2d through the functional conv
    (its weight may be a folded one), anything else as its module."""

    def __init__(self, module: nn.Module, conv_params=None):
        self.module = module
        self.is_conv = isinstance(module, nn.Conv2d) and module.padding_mode == "zeros"
        if self.is_conv:
            params = conv_params or (module.weight, module.bias)
            self.has_bias = params[1] is not None
            self.params = [p for p in params if p is not None]
        else:
            self.params = list(module.parameters())

    def forward(self, x, params):
        if not self.is_conv:
            return self.module(x)
        m = self.module
        bias = params[1].to(x.dtype) if self.has_bias else None
        return F.conv2d(x, params[0].to(x.dtype), bias, m.stride, m.padding, m.dilation, m.groups)

    def backward(self, x, params, g_out):
        """(grad of the input, grads of params) given the layer's input x."""
        if self.is_conv:
            m, weight = self.module, params[0]
            bias = params[1] if self.has_bias else None
            gi, gw, gb = torch.ops.aten.convolution_backward(
                g_out.to(x.dtype),
                x,
                weight.to(x.dtype),
                [bias.shape[0]] if self.has_bias else None,
                list(m.stride),
                list(m.padding),
                list(m.dilation),
                False,
                [0, 0],
                m.groups,
                [True, weight.requires_grad, self.has_bias and bias.requires_grad],
            )
            grads = [None if gw is None else gw.to(weight.dtype)]
            if self.has_bias:
                grads.append(None if gb is None else gb.to(bias.dtype))
            return gi, grads
        with torch.enable_grad():
            xi = x.detach().requires_grad_()
            out = self.module(xi)
            wanted = [xi] + [p for p in params if p.requires_grad]
            got = torch.autograd.grad(out, wanted, g_out.to(out.dtype), allow_unused=True)
        it = iter(got[1:])
        return got[0], [next(it) if p.requires_grad else None for p in params]


def _split(flat, counts):
    groups, k = [], 0
    for n in counts:
        groups.append(flat[k : k + n])
        k += n
    return groups


def _rebuild(stored, recon, dtypes):
    """The node inputs from what was stored: y_i itself, or a_i * z_i + b_i."""
    out = []
    for t, r, dtype in zip(stored, recon, dtypes):
        if r is None:
            out.append(t)
        else:
            a, b = (v.view(1, -1, 1, 1) for v in r)
            out.append(torch.addcmul(b, t, a).to(dtype))
    return out


class _LeanNode(torch.autograd.Function):
    """z = op(ReLU(sum_i c_i * y_i)) storing its inputs and (unless `recompute_convs`) the
    outputs of its inner convolutions; backward recomputes the aggregate, the ReLU and the rest
    of the layers but the last. Inputs given with (z_i, a_i, b_i) are stored as z_i (which
    their BatchNorm stores anyway) and rebuilt as y_i = a_i * z_i + b_i."""

    @staticmethod
    def forward(ctx, meta, weight, *flat):
        layers, recon, removed, recompute_convs = meta
        n_in = len(recon)
        inputs, params = flat[:n_in], flat[n_in:]
        groups = _split(params, [len(l.params) for l in layers])
        c = _coefficients(weight, removed)
        kept, kept_at = [], []
        with torch.no_grad():
            x = _aggregate(inputs, c).relu_()
            for j, (layer, p) in enumerate(zip(layers, groups)):
                x = layer.forward(x, p)
                if j < len(layers) - 1 and layer.is_conv and not recompute_convs:
                    kept.append(x)
                    kept_at.append(j + 1)
        stored = [t if r is None else r[0] for t, r in zip(inputs, recon)]
        ctx.layers, ctx.c, ctx.kept_at = layers, c, kept_at
        ctx.recon = [None if r is None else (r[1], r[2]) for r in recon]
        ctx.dtypes = [t.dtype for t in inputs]
        ctx.n_params = len(params)
        ctx.save_for_backward(weight, *stored, *params, *kept)
        return x

    @staticmethod
    def backward(ctx, g_out):
        layers = ctx.layers
        n_in = len(ctx.recon)
        weight, *rest = ctx.saved_tensors
        inputs = _rebuild(rest[:n_in], ctx.recon, ctx.dtypes)
        params = rest[n_in : n_in + ctx.n_params]
        kept = dict(zip(ctx.kept_at, rest[n_in + ctx.n_params :]))
        groups = _split(params, [len(l.params) for l in layers])
        with torch.no_grad():
            r = _aggregate(inputs, ctx.c).relu_()
            acts = [r]
            for j, (layer, p) in enumerate(zip(layers[:-1], groups[:-1])):
                acts.append(kept[j + 1] if j + 1 in kept else layer.forward(acts[-1], p))
        g, param_grads = g_out, []
        for j in range(len(layers) - 1, -1, -1):
            g, pg = layers[j].backward(acts[j], groups[j], g)
            acts[j] = None
            param_grads = pg + param_grads
        g_s = torch.ops.aten.threshold_backward(g, r, 0)
        del r, g
        need = ctx.needs_input_grad[2 : 2 + n_in]
        grads, g_w = _aggregate_backward(g_s, inputs, weight, ctx.c, need)
        return (None, g_w, *grads, *param_grads)


# ---------------------------------------------------------------------------------------------
# Kernel selection: decided once per stage, when the model is built or its execution is set

# GPU generations (compute capability major) on which `benchmarks/gpu_kernels.py` measured the
# Triton node kernels faster than the eager fast path; EXECUTION "fast" runs them there only.
# No GPU run has measured them yet: "fast" is the eager fast path everywhere, "triton" opts in.
KERNELS_MEASURED_FASTER: Tuple[int, ...] = ()

# The kernels' dtypes; another (float64) runs the eager fast path.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_LOGGED = set()  # (execution, device, reason) already said in the log


class ExecutionPath:
    """How a wired stage runs, decided once for the device its model runs on: `requested`
    (MODEL.RANDWIRE.EXECUTION), `kernels` (whether separable-conv nodes run the Triton node
    kernels; the other nodes, and every node of a float64 model, run the eager fast path) and
    `reason` (why, as the log says it)."""

    def __init__(self, requested: str, kernels: bool, reason: str):
        self.requested, self.kernels, self.reason = requested, kernels, reason

    def __repr__(self):
        return f"ExecutionPath({self.requested!r}, kernels={self.kernels}: {self.reason})"


def check_triton(device: torch.device, key: str = "MODEL.RANDWIRE.EXECUTION") -> None:
    """EXECUTION "triton" (at config `key`) where the Triton node kernels cannot run on `device`
    is an error naming the reason (checked at setup and when the model is built)."""
    from . import kernels

    ok, why = kernels.runnable(device)
    if not ok:
        raise RuntimeError(
            f"{key}='triton' cannot run on {device}: {why}. Use EXECUTION 'fast' (the eager fast "
            "path) or 'reference'."
        )


def choose_execution(requested: str, device) -> ExecutionPath:
    """The path of EXECUTION `requested` for a model running on `device`, said in the log (once
    per execution, device and reason). "triton" where the kernels cannot run is an error."""
    device = torch.device(device)
    if requested not in EXECUTIONS:
        raise ValueError(f"EXECUTION={requested!r} is unknown: expected one of {list(EXECUTIONS)}")
    if requested == "reference":
        path = ExecutionPath(requested, False, "the per-node loop of Fig. 2 as written")
    elif requested == "eager":
        path = ExecutionPath(requested, False, "the eager fast path, as requested")
    elif requested == "triton" or device.type == "meta":  # meta: shapes only, the fake ops
        if requested == "triton":
            check_triton(device)
        path = ExecutionPath(
            requested, requested == "triton", "the fused Triton node kernels, as requested"
        )
    elif device.type != "cuda":
        path = ExecutionPath(
            requested,
            False,
            f"the eager fast path: the node kernels run on CUDA only, not {device}",
        )
    else:
        major, minor = torch.cuda.get_device_capability(device)
        if major in KERNELS_MEASURED_FASTER:
            check_triton(device)
            path = ExecutionPath(
                requested,
                True,
                f"the fused Triton node kernels, measured faster than the eager fast path on "
                f"compute capability {major}.x (execution.KERNELS_MEASURED_FASTER)",
            )
        else:
            path = ExecutionPath(
                requested,
                False,
                f"the eager fast path: no run of benchmarks/gpu_kernels.py has measured the Triton "
                f"node kernels faster on compute capability {major}.{minor} "
                f"(execution.KERNELS_MEASURED_FASTER = {KERNELS_MEASURED_FASTER}); "
                "EXECUTION 'triton' runs them",
            )
    said = (requested, str(device), path.reason)
    if said not in _LOGGED:
        _LOGGED.add(said)
        logger.info(f"EXECUTION {requested} on {device}: {path.reason}")
    return path


def _runs_kernels(path: ExecutionPath, dtype: torch.dtype) -> bool:
    if not path.kernels:
        return False
    if dtype in KERNEL_DTYPES:
        return True
    said = ("dtype", str(dtype), "")
    if said not in _LOGGED:
        _LOGGED.add(said)
        logger.info(
            f"the Triton node kernels take {KERNEL_DTYPES}: {dtype} runs the eager fast path"
        )
    return False


# ---------------------------------------------------------------------------------------------
# The stage


def fast_stage_forward(stage, x: torch.Tensor, removed_edge=None) -> torch.Tensor:
    """WiredStage's function, executed from `stage.plan` (see the module docstring)."""
    plan: StagePlan = stage.plan
    grad = torch.is_grad_enabled()
    lean = grad and stage.memory_efficient
    fused = _runs_kernels(stage.path, x.dtype)
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
        if src[0] == STAGE_INPUT:
            inputs = [x]
        else:
            inputs = [y[u] for u in src]
        if not spec.relu_first or global_hooks or spec.hooked():
            y[v] = node(inputs, removed)  # the module call runs the user's hooks
        elif fused and spec.fused:
            y[v] = _kernel_node_forward(stage, node, spec, inputs, removed)
        else:
            rec = [recon[u] if u >= 0 else None for u in src]
            is_input = src[0] == STAGE_INPUT
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
        layers = [_Layer(l) for l in spec.layers[:-1]]
        layers.append(_Layer(last, folded if fold else None))
        params = [p for l in layers for p in l.params]
        meta = (layers, recon, removed, stage.recompute_convs)
        z = _LeanNode.apply(meta, weight, *inputs, *params)
    else:
        if weight is None and is_input:
            if "x" not in shared:
                shared["x"] = F.relu(inputs[0])
            r = shared["x"]
        elif weight is None:
            r = F.relu(inputs[0])
        elif torch.is_grad_enabled():
            r = _AggregateReLU.apply(weight, removed, *inputs)
        else:
            c = _constant(spec, "c", (weight,), lambda: _coefficients(weight, removed), removed)
            r = _aggregate(inputs, c).relu_()
        z = r
        for layer in spec.layers[:-1]:
            z = layer(z)
        if fold:
            z = F.conv2d(
                z,
                folded[0].to(z.dtype),
                folded[1].to(z.dtype),
                last.stride,
                last.padding,
                last.dilation,
                last.groups,
            )
        else:
            z = last(z)
    if fold:
        return z, None
    if lean and type(norm) is nn.BatchNorm2d:
        out, (a, b) = _batch_norm_with_affine(norm, z)
        return out, (z, a, b)
    return norm(z), None


def _kernel_node_forward(stage, node, spec: NodeSpec, inputs, removed):
    """y of a separable-conv node through the Triton kernels: the training op (aggregation,
    ReLU and depthwise conv fused; the 1x1 conv and norm eager) or, without autograd, one kernel
    up to the 1x1 conv and the folded norm."""
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
    """The kernels' coefficients, with autograd: sigmoid(w) (see `_coefficients`), or 1 for a
    node with a single input."""
    if node.weight is None:
        return torch.ones(1, device=x.device, dtype=torch.float32)
    return _coefficients(node.weight, removed, detach=False)


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
    """make(), computed once while `tensors` are unchanged (same objects, storage, version,
    dtype and device) when no autograd graph is built: in eval, a node's coefficients and
    folded weights cost no kernel launches of their own. Training calls clear the cache."""
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
