"""The lean training node (`MEMORY_EFFICIENT True`): aggregation, ReLU and the node op in one
autograd node that stores only its inputs (and its inner convolution outputs unless
`recompute_convs`) and recomputes the rest in backward (Pleiss et al. 2017, applied per node)."""

import torch
import torch.nn.functional as F
from torch import nn

from .aggregation import aggregate, aggregate_backward, coefficients
from .norm_folding import affine_of_norm

__all__ = ["LeanLayer", "LeanNode", "batch_norm_with_affine"]


def batch_norm_with_affine(bn: nn.BatchNorm2d, z: torch.Tensor):
    """bn(z) exactly as nn.BatchNorm2d.forward computes it (running statistics included), plus
    the detached per-channel (a, b) with bn(z) = a * z + b for this batch."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    stats = (bn.running_mean, bn.running_var) if track else (None, None)
    y, mean, invstd = torch.native_batch_norm(
        z, bn.weight, bn.bias, *stats, use_batch, factor, bn.eps
    )
    with torch.no_grad():
        if use_batch:
            a = invstd.float() if bn.weight is None else bn.weight * invstd
            b = -mean * a if bn.bias is None else bn.bias - mean * a
        else:
            a, b = affine_of_norm(bn)
    return y, (a.detach(), b.detach())


class LeanLayer:
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


class LeanNode(torch.autograd.Function):
    """z = op(ReLU(sum_i c_i * y_i)) storing its inputs and (unless `recompute_convs`) its inner
    conv outputs; backward recomputes the rest. An input given with (z_i, a_i, b_i) is stored as
    z_i (its BatchNorm stores it anyway) and rebuilt as a_i * z_i + b_i."""

    @staticmethod
    def forward(ctx, meta, weight, *flat):
        layers, recon, removed, recompute_convs = meta
        n_in = len(recon)
        inputs, params = flat[:n_in], flat[n_in:]
        groups = _split(params, [len(l.params) for l in layers])
        c = coefficients(weight, removed)
        kept, kept_at = [], []
        with torch.no_grad():
            x = aggregate(inputs, c).relu_()
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
            r = aggregate(inputs, ctx.c).relu_()
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
        grads, g_w = aggregate_backward(g_s, inputs, weight, ctx.c, need)
        return (None, g_w, *grads, *param_grads)
