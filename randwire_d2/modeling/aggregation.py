"""Aggregation of a node's inputs, sum_i sigmoid(w_i) * x_i (Sec. 3.2), as the fast execution runs it:
accumulated in place, the removed edge's coefficient 0 (Sec. 4.2), with its own backward."""

from typing import Optional, Sequence

import torch

__all__ = ["removal_at", "coefficients", "aggregate", "aggregate_backward", "AggregateReLU"]


def removal_at(removed_edge, v: int):
    """Node v's share of a stage's edge removal `removed_edge`: None (no removal), (node, input
    position) of the removed edge, or {node: keep mask} (RandWire.use_edge_masks). Returns
    None, the removed input position, or the node's keep mask."""
    if removed_edge is None:
        return None
    if isinstance(removed_edge, dict):
        return removed_edge.get(v)
    return removed_edge[1] if removed_edge[0] == v else None


def coefficients(weight: Optional[torch.Tensor], removed, detach: bool = True):
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


def aggregate(inputs: Sequence[torch.Tensor], c: Optional[torch.Tensor]) -> torch.Tensor:
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


def aggregate_backward(g_s, inputs, weight, c, need_inputs):
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


class AggregateReLU(torch.autograd.Function):
    """r = ReLU(sum_i c_i * x_i): one output tensor, stored once (the next op stores it too)."""

    @staticmethod
    def forward(ctx, weight, removed, *inputs):
        c = coefficients(weight, removed)
        r = aggregate(inputs, c).relu_()
        ctx.c = c
        ctx.save_for_backward(weight, r, *inputs)
        return r

    @staticmethod
    def backward(ctx, g_r):
        weight, r, *inputs = ctx.saved_tensors
        g_s = torch.ops.aten.threshold_backward(g_r, r, 0)
        need = ctx.needs_input_grad[2:]
        grads, g_w = aggregate_backward(g_s, inputs, weight, ctx.c, need)
        return (g_w, None, *grads)
