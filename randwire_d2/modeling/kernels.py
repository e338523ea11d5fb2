"""Fused Triton kernels for a separable-conv node: the node's memory traffic, not its FLOPs.

A node of the paper's default op computes z = pw(dw3x3(ReLU(sum_i c_i * x_i))), c = sigmoid(w),
then a norm. Every step is memory-bound, so the eager ops (a product and a sum per input, a
ReLU, the depthwise conv, each reading and writing full tensors, and as many again in backward)
cost far more than the arithmetic. Three kernels replace them:

- `agg_relu_dw` (training forward): reads each input once per tile, keeps the aggregate and
  its ReLU on chip, writes only the depthwise output d (which the 1x1 conv needs for its weight
  gradient anyway). Stride 1 and 2, padding 1.
- `agg_relu_dw_backward`: given the gradient of d, recomputes the aggregate from the inputs
  (nothing else was stored) and writes the gradient of every input, the edge-coefficient
  gradients and the depthwise-weight gradients in one pass.
- `agg_relu_dw_pw` (inference): aggregate, ReLU, depthwise and the 1x1 conv with the folded norm
  (z = W'd + b) in one kernel: the depthwise output never reaches device memory.

The 1x1 conv and BatchNorm of a training step stay with cuDNN and ATen (see
docs/speed_and_memory.md).

Each kernel is a PyTorch custom op (`torch.ops.randwire.*`) with a fake implementation, so the
ops run on the `meta` device (the traffic benchmark counts them there), trace with
`torch.compile`, and carry their own autograd formula. A node has at most `MAX_SLOTS` inputs per
kernel call; the execution folds a larger in-degree's extra inputs into one slot first.

Triton decides at import whether its kernels are compiled for the GPU or interpreted on the CPU
(`TRITON_INTERPRET=1`, the tests' mode); `runnable(device)` says whether this process can run
them on a device, and why not.
"""

import os
from types import SimpleNamespace
from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "MAX_SLOTS",
    "TRITON_ERROR",
    "INTERPRET",
    "runnable",
    "is_channels_last",
    "agg_relu_dw",
    "agg_relu_dw_backward",
    "agg_relu_dw_pw",
]

MAX_SLOTS = 8  # inputs per kernel call (pointer arguments X0..X7)

try:
    import triton
    import triton.language as tl

    TRITON_ERROR = ""
except Exception as e:  # pragma: no cover - triton ships with the CUDA build of torch
    triton, tl = None, SimpleNamespace(constexpr=int)  # annotations only
    TRITON_ERROR = f"triton cannot be imported ({type(e).__name__}: {e})"

# Triton reads TRITON_INTERPRET when a kernel is defined (below, at this module's import).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _jit(fn):
    return triton.jit(fn) if triton is not None else fn


# ---------------------------------------------------------------------------------------------
# Kernels


@_jit
def _aggregate(
    X0, X1, X2, X3, X4, X5, X6, X7, c0, c1, c2, c3, c4, c5, c6, c7, off, m, K: tl.constexpr
):
    """sum_i c_i * x_i at offsets `off` (masked), in float32."""
    s = tl.load(X0 + off, mask=m, other=0.0).to(tl.float32) * c0
    if K > 1:
        s += tl.load(X1 + off, mask=m, other=0.0).to(tl.float32) * c1
    if K > 2:
        s += tl.load(X2 + off, mask=m, other=0.0).to(tl.float32) * c2
    if K > 3:
        s += tl.load(X3 + off, mask=m, other=0.0).to(tl.float32) * c3
    if K > 4:
        s += tl.load(X4 + off, mask=m, other=0.0).to(tl.float32) * c4
    if K > 5:
        s += tl.load(X5 + off, mask=m, other=0.0).to(tl.float32) * c5
    if K > 6:
        s += tl.load(X6 + off, mask=m, other=0.0).to(tl.float32) * c6
    if K > 7:
        s += tl.load(X7 + off, mask=m, other=0.0).to(tl.float32) * c7
    return s


@_jit
def _coef(COEF, i: tl.constexpr, K: tl.constexpr):
    # slot i >= K is never used (every use is guarded by K): load a valid element anyway, so
    # both cases are the same float32 scalar
    return tl.load(COEF + (i % K)).to(tl.float32)


@_jit
def _coefs(COEF, K: tl.constexpr):
    """The K coefficients as float32 scalars (0 in the unused slots)."""
    return (
        _coef(COEF, 0, K),
        _coef(COEF, 1, K),
        _coef(COEF, 2, K),
        _coef(COEF, 3, K),
        _coef(COEF, 4, K),
        _coef(COEF, 5, K),
        _coef(COEF, 6, K),
        _coef(COEF, 7, K),
    )


@_jit
def _positions(H, W, BLOCK_P: tl.constexpr):
    """This program's image n and its tile of positions (row, col) of an H x W map, with the
    mask of those inside it (axis 0 of the grid: images x position tiles)."""
    pid0 = tl.program_id(0)
    tiles = tl.cdiv(H * W, BLOCK_P)
    p = (pid0 % tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    return pid0 // tiles, p // W, p % W, p < H * W


@_jit
def _depthwise_tile(
    X0, X1, X2, X3, X4, X5, X6, X7, c0, c1, c2, c3, c4, c5, c6, c7, W,
    n, ch, cm, oh, ow, pm, H, Wd, sxn, sxc, sxh, sxw,
    K: tl.constexpr, STRIDE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """dw3x3(ReLU(sum_i c_i x_i)) at output positions (oh, ow) x channels ch, float32 [P, C]."""
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    base = n.to(tl.int64) * sxn + ch[None, :].to(tl.int64) * sxc
    for kh in tl.static_range(3):
        ih = oh * STRIDE - 1 + kh
        for kw in tl.static_range(3):
            iw = ow * STRIDE - 1 + kw
            ok = pm & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < Wd)
            m = ok[:, None] & cm[None, :]
            off = base + (ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw)[:, None]
            s = _aggregate(
                X0, X1, X2, X3, X4, X5, X6, X7, c0, c1, c2, c3, c4, c5, c6, c7, off, m, K
            )
            # ReLU, rounded to the inputs' dtype as the eager ops store it
            r = tl.maximum(s, 0.0).to(X0.dtype.element_ty).to(tl.float32)
            wv = tl.load(W + ch * 9 + (kh * 3 + kw), mask=cm, other=0.0).to(tl.float32)
            acc += r * wv[None, :]
    return acc


@_jit
def _agg_relu_dw_fwd_kernel(
    X0, X1, X2, X3, X4, X5, X6, X7, COEF, W, D,
    C, H, Wd, OH, OW,
    sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw,
    K: tl.constexpr, STRIDE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    n, oh, ow, pm = _positions(OH, OW, BLOCK_P)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = ch < C
    c0, c1, c2, c3, c4, c5, c6, c7 = _coefs(COEF, K)
    acc = _depthwise_tile(
        X0, X1, X2, X3, X4, X5, X6, X7, c0, c1, c2, c3, c4, c5, c6, c7, W,
        n, ch, cm, oh, ow, pm, H, Wd, sxn, sxc, sxh, sxw, K, STRIDE, BLOCK_P, BLOCK_C,
    )  # fmt: skip
    doff = (
        n.to(tl.int64) * sdn
        + ch[None, :].to(tl.int64) * sdc
        + (oh.to(tl.int64) * sdh + ow.to(tl.int64) * sdw)[:, None]
    )
    tl.store(D + doff, acc.to(D.dtype.element_ty), mask=pm[:, None] & cm[None, :])


@_jit
def _grad_slot(G, ci, g_s, goff, m, i: tl.constexpr, K: tl.constexpr):
    if i < K:
        tl.store(G + goff, (g_s * ci).to(G.dtype.element_ty), mask=m)


@_jit
def _dot_slot(X, off, m, g_s, PART_C, slot, i: tl.constexpr, K: tl.constexpr):
    if i < K:
        x = tl.load(X + off, mask=m, other=0.0).to(tl.float32)
        tl.store(PART_C + slot * K + i, tl.sum(tl.sum(g_s * x, axis=1), axis=0))


@_jit
def _agg_relu_dw_bwd_kernel(
    X0, X1, X2, X3, X4, X5, X6, X7, COEF, W, GD,
    G0, G1, G2, G3, G4, G5, G6, G7, PART_W, PART_C,
    C, H, Wd, OH, OW,
    sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw,
    K: tl.constexpr, STRIDE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Tiles of input positions: recompute s = sum_i c_i x_i, gather the gradient of r = ReLU(s)
    from the depthwise output's gradient (the transposed conv), write c_i * dL/ds for every
    input, and per-tile partial sums of the edge dots and of the depthwise-weight gradient."""
    pid0 = tl.program_id(0)
    pid1 = tl.program_id(1)
    n, ih, iw, pm = _positions(H, Wd, BLOCK_P)
    ch = pid1 * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = ch < C
    m = pm[:, None] & cm[None, :]
    off = (
        n.to(tl.int64) * sxn
        + ch[None, :].to(tl.int64) * sxc
        + (ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw)[:, None]
    )
    c0, c1, c2, c3, c4, c5, c6, c7 = _coefs(COEF, K)
    s = _aggregate(X0, X1, X2, X3, X4, X5, X6, X7, c0, c1, c2, c3, c4, c5, c6, c7, off, m, K)
    r = tl.maximum(s, 0.0).to(X0.dtype.element_ty).to(tl.float32)
    g_r = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    gbase = n.to(tl.int64) * sgn + ch[None, :].to(tl.int64) * sgc
    for kh in tl.static_range(3):
        th = ih + 1 - kh
        for kw in tl.static_range(3):
            tw = iw + 1 - kw
            ok = pm & (th >= 0) & (tw >= 0) & (th % STRIDE == 0) & (tw % STRIDE == 0)
            oh = th // STRIDE
            ow = tw // STRIDE
            ok = ok & (oh < OH) & (ow < OW)
            gm = ok[:, None] & cm[None, :]
            goff = gbase + (oh.to(tl.int64) * sgh + ow.to(tl.int64) * sgw)[:, None]
            g = tl.load(GD + goff, mask=gm, other=0.0).to(tl.float32)
            wv = tl.load(W + ch * 9 + (kh * 3 + kw), mask=cm, other=0.0).to(tl.float32)
            g_r += g * wv[None, :]
            tl.store(PART_W + pid0 * C * 9 + ch * 9 + (kh * 3 + kw), tl.sum(r * g, axis=0), mask=cm)
    g_s = tl.where(s > 0.0, g_r, 0.0)
    _grad_slot(G0, c0, g_s, off, m, 0, K)
    _grad_slot(G1, c1, g_s, off, m, 1, K)
    _grad_slot(G2, c2, g_s, off, m, 2, K)
    _grad_slot(G3, c3, g_s, off, m, 3, K)
    _grad_slot(G4, c4, g_s, off, m, 4, K)
    _grad_slot(G5, c5, g_s, off, m, 5, K)
    _grad_slot(G6, c6, g_s, off, m, 6, K)
    _grad_slot(G7, c7, g_s, off, m, 7, K)
    slot = pid0 * tl.num_programs(1) + pid1
    _dot_slot(X0, off, m, g_s, PART_C, slot, 0, K)
    _dot_slot(X1, off, m, g_s, PART_C, slot, 1, K)
    _dot_slot(X2, off, m, g_s, PART_C, slot, 2, K)
    _dot_slot(X3, off, m, g_s, PART_C, slot, 3, K)
    _dot_slot(X4, off, m, g_s, PART_C, slot, 4, K)
    _dot_slot(X5, off, m, g_s, PART_C, slot, 5, K)
    _dot_slot(X6, off, m, g_s, PART_C, slot, 6, K)
    _dot_slot(X7, off, m, g_s, PART_C, slot, 7, K)


@_jit
def _agg_relu_dw_pw_kernel(
    X0, X1, X2, X3, X4, X5, X6, X7, COEF, W, PW, BIAS, Z,
    CI, CO, H, Wd, OH, OW,
    sxn, sxc, sxh, sxw, szn, szc, szh, szw,
    K: tl.constexpr, STRIDE: tl.constexpr, HAS_BIAS: tl.constexpr,
    LOW_PRECISION_DOT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
):  # fmt: skip
    """z = W' dw3x3(ReLU(sum_i c_i x_i)) + b for a tile of output positions x output channels;
    the depthwise tile of each input-channel block lives only in registers."""
    n, oh, ow, pm = _positions(OH, OW, BLOCK_P)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    com = co < CO
    c0, c1, c2, c3, c4, c5, c6, c7 = _coefs(COEF, K)
    acc = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.float32)
    for ci0 in range(0, CI, BLOCK_CI):
        ch = ci0 + tl.arange(0, BLOCK_CI)
        cm = ch < CI
        d = _depthwise_tile(
            X0, X1, X2, X3, X4, X5, X6, X7, c0, c1, c2, c3, c4, c5, c6, c7, W,
            n, ch, cm, oh, ow, pm, H, Wd, sxn, sxc, sxh, sxw, K, STRIDE, BLOCK_P, BLOCK_CI,
        )  # fmt: skip
        wt = tl.load(
            PW + co[None, :] * CI + ch[:, None], mask=cm[:, None] & com[None, :], other=0.0
        )
        if LOW_PRECISION_DOT:
            acc += tl.dot(d.to(X0.dtype.element_ty), wt.to(X0.dtype.element_ty))
        else:
            # d rounded to the inputs' dtype as the eager depthwise conv stores it
            d = d.to(X0.dtype.element_ty).to(tl.float32)
            acc += tl.dot(d, wt.to(tl.float32), input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(BIAS + co, mask=com, other=0.0).to(tl.float32)[None, :]
    zoff = (
        n.to(tl.int64) * szn
        + co[None, :].to(tl.int64) * szc
        + (oh.to(tl.int64) * szh + ow.to(tl.int64) * szw)[:, None]
    )
    tl.store(Z + zoff, acc.to(Z.dtype.element_ty), mask=pm[:, None] & com[None, :])


# ---------------------------------------------------------------------------------------------
# Launchers


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


def _check(xs: List[Tensor], weight: Tensor, stride: int):
    x = xs[0]
    ok, why = runnable(x.device)
    if not ok:
        raise RuntimeError(f"the RandWire Triton kernels cannot run here: {why}")
    if stride not in (1, 2):
        raise ValueError(f"depthwise stride {stride} is not supported: expected 1 or 2")
    layout = [st for st, size in zip(x.stride(), x.shape) if size > 1]
    for t in xs[1:]:  # (a size-1 dimension's stride is never used)
        same = [st for st, size in zip(t.stride(), t.shape) if size > 1] == layout
        if t.shape != x.shape or not same or t.dtype != x.dtype:
            raise ValueError("the inputs of a node kernel must share shape, strides and dtype")
    if weight.shape != (x.shape[1], 1, 3, 3) or not weight.is_contiguous():
        raise ValueError(f"depthwise weight of shape {tuple(weight.shape)} is not a 3x3 kernel")


def _tiles(x: Tensor) -> Tuple[int, int]:
    """(BLOCK_P, BLOCK_C): the contiguous dimension gets the longer side of a tile."""
    if x.stride(1) == 1:  # channels_last: channels are contiguous
        return 64, 32
    return 128, 16


def _agg_relu_dw_impl(xs: List[Tensor], coef: Tensor, weight: Tensor, stride: int) -> Tensor:
    _check(xs, weight, stride)
    x = xs[0]
    n, c, h, w = x.shape
    oh, ow = _out_size(h, stride), _out_size(w, stride)
    d = _like(x, (n, c, oh, ow))
    bp, bc = _tiles(x)
    grid = (n * triton.cdiv(oh * ow, bp), triton.cdiv(c, bc))
    # fmt: off
    _agg_relu_dw_fwd_kernel[grid](
        *_slots(xs), coef.contiguous(), weight, d, c, h, w, oh, ow, *x.stride(), *d.stride(),
        K=len(xs), STRIDE=stride, BLOCK_P=bp, BLOCK_C=bc,
    )
    # fmt: on
    return d


def _agg_relu_dw_backward_impl(
    grad: Tensor, xs: List[Tensor], coef: Tensor, weight: Tensor, stride: int
) -> Tuple[List[Tensor], Tensor, Tensor]:
    _check(xs, weight, stride)
    x = xs[0]
    n, c, h, w = x.shape
    oh, ow = _out_size(h, stride), _out_size(w, stride)
    if grad.shape != (n, c, oh, ow):
        raise ValueError(f"gradient of shape {tuple(grad.shape)}, expected {(n, c, oh, ow)}")
    grad = grad.to(x.dtype)
    bp, bc = _tiles(x)
    grid = (n * triton.cdiv(h * w, bp), triton.cdiv(c, bc))
    gxs = [torch.empty_like(x) for _ in xs]
    part_w = torch.empty((grid[0], c, 9), dtype=torch.float32, device=x.device)
    part_c = torch.empty((grid[0] * grid[1], len(xs)), dtype=torch.float32, device=x.device)
    # fmt: off
    _agg_relu_dw_bwd_kernel[grid](
        *_slots(xs), coef.contiguous(), weight, grad, *_slots(gxs), part_w, part_c,
        c, h, w, oh, ow, *x.stride(), *grad.stride(),
        K=len(xs), STRIDE=stride, BLOCK_P=bp, BLOCK_C=bc,
    )
    # fmt: on
    g_coef = part_c.sum(0).to(coef.dtype)
    g_weight = part_w.sum(0).view(c, 1, 3, 3).to(weight.dtype)
    return gxs, g_coef, g_weight


def _agg_relu_dw_pw_impl(
    xs: List[Tensor],
    coef: Tensor,
    dw_weight: Tensor,
    pw_weight: Tensor,
    bias: Optional[Tensor],
    stride: int,
) -> Tensor:
    _check(xs, dw_weight, stride)
    x = xs[0]
    n, ci, h, w = x.shape
    co = pw_weight.shape[0]
    if tuple(pw_weight.shape) != (co, ci, 1, 1):
        raise ValueError(f"pointwise weight of shape {tuple(pw_weight.shape)} is not {co}x{ci}x1x1")
    oh, ow = _out_size(h, stride), _out_size(w, stride)
    z = _like(x, (n, co, oh, ow))
    block_p = 64
    block_ci = 32 if ci > 16 else 16
    block_co = max(16, min(128, triton.next_power_of_2(co)))
    grid = (n * triton.cdiv(oh * ow, block_p), triton.cdiv(co, block_co))
    low = x.dtype in (torch.float16, torch.bfloat16) and not (
        INTERPRET and x.dtype == torch.bfloat16
    )
    pw = pw_weight.reshape(co, ci).to(x.dtype).contiguous()
    b = bias.to(torch.float32).contiguous() if bias is not None else None
    # fmt: off
    _agg_relu_dw_pw_kernel[grid](
        *_slots(xs), coef.contiguous(), dw_weight, pw, b, z,
        ci, co, h, w, oh, ow, *x.stride(), *z.stride(),
        K=len(xs), STRIDE=stride, HAS_BIAS=bias is not None, LOW_PRECISION_DOT=low,
        BLOCK_P=block_p, BLOCK_CI=block_ci, BLOCK_CO=block_co,
    )
    # fmt: on
    return z


# ---------------------------------------------------------------------------------------------
# Custom ops: one per kernel, with fake (meta) implementations and the training op's autograd


@torch.library.custom_op("randwire::agg_relu_dw", mutates_args=())
def agg_relu_dw(xs: List[Tensor], coef: Tensor, weight: Tensor, stride: int) -> Tensor:
    """d = dw3x3(ReLU(sum_i coef_i * xs_i), weight, stride, padding 1)."""
    return _agg_relu_dw_impl(xs, coef, weight, stride)


@agg_relu_dw.register_fake
def _(xs, coef, weight, stride):
    n, c, h, w = xs[0].shape
    return _like(xs[0], (n, c, _out_size(h, stride), _out_size(w, stride)))


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


# ---------------------------------------------------------------------------------------------
# A working Triton


def reference_agg_relu_dw(xs: List[Tensor], coef: Tensor, weight: Tensor, stride: int) -> Tensor:
    """`agg_relu_dw` with eager ops (the function the kernels compute)."""
    s = xs[0] * coef[0].to(xs[0].dtype)
    for i in range(1, len(xs)):
        s = s + xs[i] * coef[i].to(s.dtype)
    return torch.nn.functional.conv2d(s.relu(), weight.to(s.dtype), None, stride, 1, 1, s.shape[1])


def self_check(device: torch.device) -> str:
    """ "" when the three kernels compile and agree with the eager ops on `device` (a small random
    node, both strides, forward and backward), else the reason."""
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        for stride, k in ((1, 3), (2, 1)):
            xs = [
                torch.randn(2, 5, 9, 7, generator=g).to(device).requires_grad_() for _ in range(k)
            ]
            coef = torch.rand(k, generator=g).to(device).requires_grad_()
            w = torch.randn(5, 1, 3, 3, generator=g).to(device).requires_grad_()
            pw = torch.randn(6, 5, 1, 1, generator=g).to(device)
            d = agg_relu_dw(xs, coef, w, stride)
            grads = torch.autograd.grad(d.square().sum(), xs + [coef, w])
            d_ref = reference_agg_relu_dw(xs, coef, w, stride)
            grads_ref = torch.autograd.grad(d_ref.square().sum(), xs + [coef, w])
            with torch.no_grad():
                z = agg_relu_dw_pw(
                    [x.detach() for x in xs], coef.detach(), w.detach(), pw, None, stride
                )
                z_ref = torch.nn.functional.conv2d(d_ref.detach(), pw)
            for name, got, want in [("forward", d, d_ref), ("inference", z, z_ref)] + [
                ("backward", a, b) for a, b in zip(grads, grads_ref)
            ]:
                if not torch.allclose(got, want, rtol=1e-3, atol=1e-3):
                    err = (got - want).abs().max().item()
                    return f"the {name} kernel differs from the eager ops by {err:.3g} (stride {stride})"
        return ""
    except Exception as e:  # a Triton that cannot compile or launch here
        return f"the kernels failed on {device} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
