"""Fused Triton kernels for a separable-conv node, z = pw(dw3x3(ReLU(sum_i c_i * x_i))): every
step is memory-bound, so the kernels cut traffic, not FLOPs.

- `agg_relu_dw` (training forward): keeps the aggregate and ReLU on chip, writes only the
  depthwise output d (the 1x1 conv's weight gradient needs it anyway). Stride 1 or 2.
- `agg_relu_dw_backward`: recomputes the aggregate and writes the input, coefficient and
  depthwise-weight gradients in one pass.
- `agg_relu_dw_pw` (inference): also the 1x1 conv with the folded norm; d never reaches memory.

Each is a custom op (`torch.ops.randwire.*`) with a fake implementation, so it runs on `meta`
and traces with `torch.compile`. A call takes at most `MAX_SLOTS` inputs. The programs are in
`triton_programs.py`; `runnable(device)` says whether this process can run them, and why not.
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .triton_programs import (
    INTERPRET,
    TRITON_ERROR,
    agg_relu_dw_bwd_kernel,
    agg_relu_dw_fwd_kernel,
    agg_relu_dw_pw_kernel,
    triton,
)

__all__ = ["MAX_SLOTS", "TRITON_ERROR", "INTERPRET", "runnable"]
__all__ += ["is_channels_last", "agg_relu_dw", "agg_relu_dw_backward", "agg_relu_dw_pw"]

MAX_SLOTS = 8  # inputs per kernel call (pointer arguments X0..X7 of the Triton programs)


def runnable(device: torch.device) -> Tuple[bool, str]:
    """(whether this process can run the kernels on `device`, why not)."""
    if device.type == "meta":
        return True, ""
    if triton is None:
        return False, TRITON_ERROR
    if device.type == "cuda":
        if INTERPRET:
            return False, "TRITON_INTERPRET=1 is set: the kernels were defined for the interpreter"
        major, _ = torch.cuda.get_device_capability(device)
        if major < 7:
            return False, f"GPU compute capability {major}.x is below 7.0"
        return True, ""
    if device.type == "cpu":
        if INTERPRET:
            return True, ""
        return False, (
            "on CPU the kernels run only under Triton's interpreter: set TRITON_INTERPRET=1 in "
            "the environment before Python starts (for tests; it is slow)"
        )
    return False, f"no Triton kernels for device {device.type!r}"


def _out_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # 3x3, padding 1


def is_channels_last(x: Tensor) -> bool:
    """Whether x is laid out channels_last (and not also contiguous)."""
    return (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def _like(x: Tensor, shape) -> Tensor:
    """A new tensor of `shape` in x's memory format (channels_last or contiguous)."""
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


def _slots(xs: List[Tensor]) -> List[Optional[Tensor]]:
    if not 1 <= len(xs) <= MAX_SLOTS:
        raise ValueError(f"a kernel call takes 1..{MAX_SLOTS} inputs, got {len(xs)}")
    return list(xs) + [None] * (MAX_SLOTS - len(xs))


def _check(xs: List[Tensor], weight: Tensor, stride: int) -> bool:
    """Checks a kernel call; whether its inputs are channels_last (else contiguous)."""
    x = xs[0]
    ok, why = runnable(x.device)
    if not ok:
        raise RuntimeError(f"the RandWire Triton kernels cannot run here: {why}")
    if stride not in (1, 2):
        raise ValueError(f"depthwise stride {stride} is not supported: expected 1 or 2")
    cl = is_channels_last(x)
    fmt = torch.channels_last if cl else torch.contiguous_format
    for t in xs:
        if t.shape != x.shape or t.dtype != x.dtype or not t.is_contiguous(memory_format=fmt):
            raise ValueError(
                "the inputs of a node kernel must share shape and dtype, all contiguous or all "
                "channels_last"
            )
    if x[0].numel() >= 2**31:
        raise ValueError(
            f"a node kernel's image of {x[0].numel()} elements ({tuple(x.shape[1:])}) exceeds its "
            "int32 offsets (2^31)"
        )
    if weight.shape != (x.shape[1], 1, 3, 3):
        raise ValueError(f"depthwise weight of shape {tuple(weight.shape)} is not a 3x3 kernel")
    return cl


def _taps(weight: Tensor) -> Tensor:
    """The depthwise weight [C, 1, 3, 3] tap-major, [9, C]: a tap's channels are contiguous."""
    return weight.reshape(weight.shape[0], 9).t().contiguous()


# Launch configuration, per kernel: (BLOCK_P, BLOCK_C) by layout (the contiguous dimension gets
# the longer side), warps, and no software pipelining. Checked by `benchmarks/kernels.py fit`.
FORWARD_TILES = {True: (32, 32), False: (64, 8)}  # channels_last: True
BACKWARD_TILES = {True: (16, 32), False: (64, 8)}
FORWARD_LAUNCH = {True: dict(num_warps=4, num_stages=1), False: dict(num_warps=8, num_stages=1)}
BACKWARD_LAUNCH = dict(num_warps=8, num_stages=1)
INFERENCE_TILES = dict(BLOCK_P=64, BLOCK_CI=16, BLOCK_CO=64)
INFERENCE_LAUNCH = dict(num_warps=4, num_stages=1)


# The launchers (also called by benchmarks/kernels.py fit on meta tensors), then the custom ops.
def _agg_relu_dw_impl(xs: List[Tensor], coef: Tensor, weight: Tensor, stride: int) -> Tensor:
    cl = _check(xs, weight, stride)
    x = xs[0]
    n, c, h, w = x.shape
    oh, ow = _out_size(h, stride), _out_size(w, stride)
    d = _like(x, (n, c, oh, ow))
    bp, bc = FORWARD_TILES[cl]
    grid = (n * triton.cdiv(oh * ow, bp), triton.cdiv(c, bc))
    # fmt: off
    agg_relu_dw_fwd_kernel[grid](
        *_slots(xs), coef.contiguous(), _taps(weight), d, h, w, oh, ow,
        C=c, K=len(xs), STRIDE=stride, CL=cl, BLOCK_P=bp, BLOCK_C=bc, **FORWARD_LAUNCH[cl],
    )
    # fmt: on
    return d


@torch.library.custom_op("randwire::agg_relu_dw", mutates_args=())
def agg_relu_dw(xs: List[Tensor], coef: Tensor, weight: Tensor, stride: int) -> Tensor:
    """d = dw3x3(ReLU(sum_i coef_i * xs_i), weight, stride, padding 1)."""
    return _agg_relu_dw_impl(xs, coef, weight, stride)


@agg_relu_dw.register_fake
def _(xs, coef, weight, stride):
    n, c, h, w = xs[0].shape
    return _like(xs[0], (n, c, _out_size(h, stride), _out_size(w, stride)))


def _agg_relu_dw_backward_impl(
    grad: Tensor, xs: List[Tensor], coef: Tensor, weight: Tensor, stride: int
) -> Tuple[List[Tensor], Tensor, Tensor]:
    cl = _check(xs, weight, stride)
    x = xs[0]
    n, c, h, w = x.shape
    oh, ow = _out_size(h, stride), _out_size(w, stride)
    if grad.shape != (n, c, oh, ow):
        raise ValueError(f"gradient of shape {tuple(grad.shape)}, expected {(n, c, oh, ow)}")
    fmt = torch.channels_last if cl else torch.contiguous_format
    grad = grad.to(x.dtype).contiguous(memory_format=fmt)
    bp, bc = BACKWARD_TILES[cl]
    grid = (n * triton.cdiv(h * w, bp), triton.cdiv(c, bc))
    gxs = [torch.empty_like(x) for _ in xs]
    part_w = torch.empty((grid[0], 9, c), dtype=torch.float32, device=x.device)
    part_c = torch.empty((grid[0] * grid[1], len(xs)), dtype=torch.float32, device=x.device)
    # fmt: off
    agg_relu_dw_bwd_kernel[grid](
        *_slots(xs), coef.contiguous(), _taps(weight), grad, *_slots(gxs), part_w, part_c,
        h, w, oh, ow,
        C=c, K=len(xs), STRIDE=stride, CL=cl, BLOCK_P=bp, BLOCK_C=bc, **BACKWARD_LAUNCH,
    )
    # fmt: on
    g_coef = part_c.sum(0).to(coef.dtype)
    g_weight = part_w.sum(0).t().reshape(c, 1, 3, 3).to(weight.dtype)
    return gxs, g_coef, g_weight


@torch.library.custom_op("randwire::agg_relu_dw_backward", mutates_args=())
def agg_relu_dw_backward(
    grad: Tensor, xs: List[Tensor], coef: Tensor, weight: Tensor, stride: int
) -> Tuple[List[Tensor], Tensor, Tensor]:
    """(gradients of xs, of coef, of weight) of `agg_relu_dw` given the gradient of d."""
    return _agg_relu_dw_backward_impl(grad, xs, coef, weight, stride)


@agg_relu_dw_backward.register_fake
def _(grad, xs, coef, weight, stride):
    return [torch.empty_like(x) for x in xs], torch.empty_like(coef), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    xs, coef, weight, stride = inputs
    ctx.save_for_backward(coef, weight, *xs)
    ctx.stride = stride


def _backward(ctx, grad):
    coef, weight, *xs = ctx.saved_tensors
    gxs, g_coef, g_weight = agg_relu_dw_backward(grad, xs, coef, weight, ctx.stride)
    return list(gxs), g_coef, g_weight, None


agg_relu_dw.register_autograd(_backward, setup_context=_setup_context)


def _agg_relu_dw_pw_impl(
    xs: List[Tensor],
    coef: Tensor,
    dw_weight: Tensor,
    pw_weight: Tensor,
    bias: Optional[Tensor],
    stride: int,
) -> Tensor:
    cl = _check(xs, dw_weight, stride)
    x = xs[0]
    n, ci, h, w = x.shape
    co = pw_weight.shape[0]
    if tuple(pw_weight.shape) != (co, ci, 1, 1):
        raise ValueError(f"pointwise weight of shape {tuple(pw_weight.shape)} is not {co}x{ci}x1x1")
    oh, ow = _out_size(h, stride), _out_size(w, stride)
    z = _like(x, (n, co, oh, ow))
    if z[0].numel() >= 2**31:
        raise ValueError(f"a node kernel's output image of {z[0].numel()} elements exceeds 2^31")
    tiles = INFERENCE_TILES
    grid = (triton.cdiv(co, tiles["BLOCK_CO"]), n * triton.cdiv(oh * ow, tiles["BLOCK_P"]))
    low = x.dtype in (torch.float16, torch.bfloat16) and not (
        INTERPRET and x.dtype == torch.bfloat16
    )
    pwt = pw_weight.reshape(co, ci).t().to(x.dtype).contiguous()  # [CI, CO]
    b = bias.to(torch.float32).contiguous() if bias is not None else None
    # fmt: off
    agg_relu_dw_pw_kernel[grid](
        *_slots(xs), coef.contiguous(), _taps(dw_weight), pwt, b, z,
        co, h, w, oh, ow,
        C=ci, K=len(xs), STRIDE=stride, CL=cl, HAS_BIAS=bias is not None,
        LOW_PRECISION_DOT=low, **tiles, **INFERENCE_LAUNCH,
    )
    # fmt: on
    return z


@torch.library.custom_op("randwire::agg_relu_dw_pw", mutates_args=())
def agg_relu_dw_pw(
    xs: List[Tensor],
    coef: Tensor,
    dw_weight: Tensor,
    pw_weight: Tensor,
    bias: Optional[Tensor],
    stride: int,
) -> Tensor:
    """z = pw_weight * dw3x3(ReLU(sum_i coef_i * xs_i)) + bias: inference only (no autograd)."""
    return _agg_relu_dw_pw_impl(xs, coef, dw_weight, pw_weight, bias, stride)


@agg_relu_dw_pw.register_fake
def _(xs, coef, dw_weight, pw_weight, bias, stride):
    n, _, h, w = xs[0].shape
    return _like(xs[0], (n, pw_weight.shape[0], _out_size(h, stride), _out_size(w, stride)))


def reference_agg_relu_dw(xs: List[Tensor], coef: Tensor, weight: Tensor, stride: int) -> Tensor:
    """`agg_relu_dw` with eager ops (the function the kernels compute)."""
    s = xs[0] * coef[0].to(xs[0].dtype)
    for i in range(1, len(xs)):
        s = s + xs[i] * coef[i].to(s.dtype)
    return torch.nn.functional.conv2d(s.relu(), weight.to(s.dtype), None, stride, 1, 1, s.shape[1])
