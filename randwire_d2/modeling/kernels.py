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


def _jit(fn=None, **kwargs):
    if fn is None:  # @_jit(do_not_specialize=...)
        return lambda f: _jit(f, **kwargs)
    return triton.jit(fn, **kwargs) if triton is not None else fn


# ---------------------------------------------------------------------------------------------
# Kernels
#
# Sized to fit the GPU, checked ahead of time by `benchmarks/gpu_fit.py` (sm_80 and sm_90): the
# 9 taps are a runtime loop (unrolled, their 9 x K independent loads were hoisted and spilled),
# offsets inside an image are int32 (one int64 image base per program), the channel count and
# the layout are compile-time constants (vector loads along channels in channels_last where C
# allows them), the image size is not specialized on (one compile per node shape, not per
# image size), the depthwise weight is stored tap-major [9, C] and the 1x1 weight [CI, CO]
# (contiguous loads), and no loop is software-pipelined (`num_stages=1`: pipelining buffered
# every tap load of the inference kernel in shared memory, up to 1.2 MB).

_NOT_SPECIALIZED = ["H", "Wd", "OH", "OW"]


@_jit
def _aggregate(
    X0, X1, X2, X3, X4, X5, X6, X7, c0, c1, c2, c3, c4, c5, c6, c7, base, off, m,
    K: tl.constexpr,
):  # fmt: skip
    """sum_i c_i * x_i at offsets `off` (masked) of the image at `base`, in float32."""
    s = tl.load(X0 + base + off, mask=m, other=0.0).to(tl.float32) * c0
    if K > 1:
        s += tl.load(X1 + base + off, mask=m, other=0.0).to(tl.float32) * c1
    if K > 2:
        s += tl.load(X2 + base + off, mask=m, other=0.0).to(tl.float32) * c2
    if K > 3:
        s += tl.load(X3 + base + off, mask=m, other=0.0).to(tl.float32) * c3
    if K > 4:
        s += tl.load(X4 + base + off, mask=m, other=0.0).to(tl.float32) * c4
    if K > 5:
        s += tl.load(X5 + base + off, mask=m, other=0.0).to(tl.float32) * c5
    if K > 6:
        s += tl.load(X6 + base + off, mask=m, other=0.0).to(tl.float32) * c6
    if K > 7:
        s += tl.load(X7 + base + off, mask=m, other=0.0).to(tl.float32) * c7
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
def _offsets(h, w, ch, C: tl.constexpr, H, Wd, CL: tl.constexpr):
    """int32 offsets of positions (h, w) x channels ch inside one C x H x Wd image, [P, C]."""
    if CL:
        return ((h * Wd + w) * C)[:, None] + ch[None, :]
    return (h * Wd + w)[:, None] + (ch * (H * Wd))[None, :]


@_jit
def _positions(pid, H, Wd, BLOCK_P: tl.constexpr):
    """Image n of program `pid` (images x position tiles), its positions (row, col) of an H x Wd
    map and the mask of those inside it."""
    tiles = tl.cdiv(H * Wd, BLOCK_P)
    p = (pid % tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    return pid // tiles, p // Wd, p % Wd, p < H * Wd


@_jit
def _depthwise_tile(
    X0, X1, X2, X3, X4, X5, X6, X7, c0, c1, c2, c3, c4, c5, c6, c7, WT,
    n, ch, cm, oh, ow, pm, C: tl.constexpr, H, Wd,
    K: tl.constexpr, STRIDE: tl.constexpr, CL: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """dw3x3(ReLU(sum_i c_i x_i)) at output positions (oh, ow) x channels ch, float32 [P, C]."""
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    base = n.to(tl.int64) * (C * H * Wd)
    for t in tl.range(0, 9, loop_unroll_factor=1):
        ih = oh * STRIDE - 1 + t // 3
        iw = ow * STRIDE - 1 + t % 3
        ok = pm & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < Wd)
        m = ok[:, None] & cm[None, :]
        off = _offsets(ih, iw, ch, C, H, Wd, CL)
        s = _aggregate(
            X0, X1, X2, X3, X4, X5, X6, X7, c0, c1, c2, c3, c4, c5, c6, c7, base, off, m, K
        )
        # ReLU, rounded to the inputs' dtype as the eager ops store it
        r = tl.maximum(s, 0.0).to(X0.dtype.element_ty).to(tl.float32)
        wv = tl.load(WT + t * C + ch, mask=cm, other=0.0).to(tl.float32)
        acc += r * wv[None, :]
    return acc


@_jit(do_not_specialize=_NOT_SPECIALIZED)
def _agg_relu_dw_fwd_kernel(
    X0, X1, X2, X3, X4, X5, X6, X7, COEF, WT, D,
    H, Wd, OH, OW,
    C: tl.constexpr, K: tl.constexpr, STRIDE: tl.constexpr, CL: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    n, oh, ow, pm = _positions(tl.program_id(0), OH, OW, BLOCK_P)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = ch < C
    c0, c1, c2, c3, c4, c5, c6, c7 = _coefs(COEF, K)
    acc = _depthwise_tile(
        X0, X1, X2, X3, X4, X5, X6, X7, c0, c1, c2, c3, c4, c5, c6, c7, WT,
        n, ch, cm, oh, ow, pm, C, H, Wd, K, STRIDE, CL, BLOCK_P, BLOCK_C,
    )  # fmt: skip
    doff = _offsets(oh, ow, ch, C, OH, OW, CL)
    dbase = n.to(tl.int64) * (C * OH * OW)
    tl.store(D + dbase + doff, acc.to(D.dtype.element_ty), mask=pm[:, None] & cm[None, :])


@_jit
def _grad_slot(G, ci, g_s, base, off, m, i: tl.constexpr, K: tl.constexpr):
    if i < K:
        tl.store(G + base + off, (g_s * ci).to(G.dtype.element_ty), mask=m)


@_jit
def _dot_slot(X, base, off, m, g_s, PART_C, slot, i: tl.constexpr, K: tl.constexpr):
    if i < K:
        x = tl.load(X + base + off, mask=m, other=0.0).to(tl.float32)
        tl.store(PART_C + slot * K + i, tl.sum(tl.sum(g_s * x, axis=1), axis=0))


@_jit(do_not_specialize=_NOT_SPECIALIZED)
def _agg_relu_dw_bwd_kernel(
    X0, X1, X2, X3, X4, X5, X6, X7, COEF, WT, GD,
    G0, G1, G2, G3, G4, G5, G6, G7, PART_W, PART_C,
    H, Wd, OH, OW,
    C: tl.constexpr, K: tl.constexpr, STRIDE: tl.constexpr, CL: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Tiles of input positions: recompute s = sum_i c_i x_i, gather the gradient of r = ReLU(s)
    from the depthwise output's gradient (the transposed conv), write c_i * dL/ds for every
    input, and per-tile partial sums of the edge dots and of the depthwise-weight gradient
    (PART_W: [tiles, 9, C])."""
    pid0 = tl.program_id(0)
    pid1 = tl.program_id(1)
    n, ih, iw, pm = _positions(pid0, H, Wd, BLOCK_P)
    ch = pid1 * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = ch < C
    m = pm[:, None] & cm[None, :]
    base = n.to(tl.int64) * (C * H * Wd)
    off = _offsets(ih, iw, ch, C, H, Wd, CL)
    c0, c1, c2, c3, c4, c5, c6, c7 = _coefs(COEF, K)
    s = _aggregate(X0, X1, X2, X3, X4, X5, X6, X7, c0, c1, c2, c3, c4, c5, c6, c7, base, off, m, K)
    r = tl.maximum(s, 0.0).to(X0.dtype.element_ty).to(tl.float32)
    g_r = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    gbase = n.to(tl.int64) * (C * OH * OW)
    for t in tl.range(0, 9, loop_unroll_factor=1):
        th = ih + 1 - t // 3
        tw = iw + 1 - t % 3
        ok = pm & (th >= 0) & (tw >= 0) & (th % STRIDE == 0) & (tw % STRIDE == 0)
        oh = th // STRIDE
        ow = tw // STRIDE
        ok = ok & (oh < OH) & (ow < OW)
        goff = _offsets(oh, ow, ch, C, OH, OW, CL)
        g = tl.load(GD + gbase + goff, mask=ok[:, None] & cm[None, :], other=0.0).to(tl.float32)
        wv = tl.load(WT + t * C + ch, mask=cm, other=0.0).to(tl.float32)
        g_r += g * wv[None, :]
        tl.store(PART_W + (pid0 * 9 + t) * C + ch, tl.sum(r * g, axis=0), mask=cm)
    g_s = tl.where(s > 0.0, g_r, 0.0)
    _grad_slot(G0, c0, g_s, base, off, m, 0, K)
    _grad_slot(G1, c1, g_s, base, off, m, 1, K)
    _grad_slot(G2, c2, g_s, base, off, m, 2, K)
    _grad_slot(G3, c3, g_s, base, off, m, 3, K)
    _grad_slot(G4, c4, g_s, base, off, m, 4, K)
    _grad_slot(G5, c5, g_s, base, off, m, 5, K)
    _grad_slot(G6, c6, g_s, base, off, m, 6, K)
    _grad_slot(G7, c7, g_s, base, off, m, 7, K)
    slot = pid0 * tl.num_programs(1) + pid1
    _dot_slot(X0, base, off, m, g_s, PART_C, slot, 0, K)
    _dot_slot(X1, base, off, m, g_s, PART_C, slot, 1, K)
    _dot_slot(X2, base, off, m, g_s, PART_C, slot, 2, K)
    _dot_slot(X3, base, off, m, g_s, PART_C, slot, 3, K)
    _dot_slot(X4, base, off, m, g_s, PART_C, slot, 4, K)
    _dot_slot(X5, base, off, m, g_s, PART_C, slot, 5, K)
    _dot_slot(X6, base, off, m, g_s, PART_C, slot, 6, K)
    _dot_slot(X7, base, off, m, g_s, PART_C, slot, 7, K)


@_jit(do_not_specialize=_NOT_SPECIALIZED + ["CO"])
def _agg_relu_dw_pw_kernel(
    X0, X1, X2, X3, X4, X5, X6, X7, COEF, WT, PWT, BIAS, Z,
    CO, H, Wd, OH, OW,
    C: tl.constexpr, K: tl.constexpr, STRIDE: tl.constexpr, CL: tl.constexpr,
    HAS_BIAS: tl.constexpr, LOW_PRECISION_DOT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
):  # fmt: skip
    """z = W' dw3x3(ReLU(sum_i c_i x_i)) + b for a tile of output positions x output channels;
    the depthwise tile of each input-channel block lives only in registers. Axis 0 of the grid
    is the output-channel block, so the programs that recompute one depthwise tile run side by
    side and read their inputs from L2."""
    n, oh, ow, pm = _positions(tl.program_id(1), OH, OW, BLOCK_P)
    co = tl.program_id(0) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    com = co < CO
    c0, c1, c2, c3, c4, c5, c6, c7 = _coefs(COEF, K)
    acc = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.float32)
    for ci0 in tl.range(0, C, BLOCK_CI, num_stages=1, loop_unroll_factor=1):
        ch = ci0 + tl.arange(0, BLOCK_CI)
        cm = ch < C
        d = _depthwise_tile(
            X0, X1, X2, X3, X4, X5, X6, X7, c0, c1, c2, c3, c4, c5, c6, c7, WT,
            n, ch, cm, oh, ow, pm, C, H, Wd, K, STRIDE, CL, BLOCK_P, BLOCK_CI,
        )  # fmt: skip
        wt = tl.load(
            PWT + ch[:, None] * CO + co[None, :], mask=cm[:, None] & com[None, :], other=0.0
        )
        if LOW_PRECISION_DOT:
            acc += tl.dot(d.to(X0.dtype.element_ty), wt.to(X0.dtype.element_ty))
        else:
            # d rounded to the inputs' dtype as the eager depthwise conv stores it
            d = d.to(X0.dtype.element_ty).to(tl.float32)
            acc += tl.dot(d, wt.to(tl.float32), input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(BIAS + co, mask=com, other=0.0).to(tl.float32)[None, :]
    if CL:
        zoff = ((oh * OW + ow) * CO)[:, None] + co[None, :]
    else:
        zoff = (oh * OW + ow)[:, None] + (co * (OH * OW))[None, :]
    zbase = n.to(tl.int64) * CO * OH * OW
    tl.store(Z + zbase + zoff, acc.to(Z.dtype.element_ty), mask=pm[:, None] & com[None, :])


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
# the longer side), warps, and no software pipelining. Checked by benchmarks/gpu_fit.py.
FORWARD_TILES = {True: (32, 32), False: (64, 8)}  # channels_last: True
BACKWARD_TILES = {True: (16, 32), False: (64, 8)}
FORWARD_LAUNCH = {True: dict(num_warps=4, num_stages=1), False: dict(num_warps=8, num_stages=1)}
BACKWARD_LAUNCH = dict(num_warps=8, num_stages=1)
INFERENCE_TILES = dict(BLOCK_P=64, BLOCK_CI=16, BLOCK_CO=64)
INFERENCE_LAUNCH = dict(num_warps=4, num_stages=1)


def _agg_relu_dw_impl(xs: List[Tensor], coef: Tensor, weight: Tensor, stride: int) -> Tensor:
    cl = _check(xs, weight, stride)
    x = xs[0]
    n, c, h, w = x.shape
    oh, ow = _out_size(h, stride), _out_size(w, stride)
    d = _like(x, (n, c, oh, ow))
    bp, bc = FORWARD_TILES[cl]
    grid = (n * triton.cdiv(oh * ow, bp), triton.cdiv(c, bc))
    # fmt: off
    _agg_relu_dw_fwd_kernel[grid](
        *_slots(xs), coef.contiguous(), _taps(weight), d, h, w, oh, ow,
        C=c, K=len(xs), STRIDE=stride, CL=cl, BLOCK_P=bp, BLOCK_C=bc, **FORWARD_LAUNCH[cl],
    )
    # fmt: on
    return d


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
    _agg_relu_dw_bwd_kernel[grid](
        *_slots(xs), coef.contiguous(), _taps(weight), grad, *_slots(gxs), part_w, part_c,
        h, w, oh, ow,
        C=c, K=len(xs), STRIDE=stride, CL=cl, BLOCK_P=bp, BLOCK_C=bc, **BACKWARD_LAUNCH,
    )
    # fmt: on
    g_coef = part_c.sum(0).to(coef.dtype)
    g_weight = part_w.sum(0).t().reshape(c, 1, 3, 3).to(weight.dtype)
    return gxs, g_coef, g_weight


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
    _agg_relu_dw_pw_kernel[grid](
        *_slots(xs), coef.contiguous(), _taps(dw_weight), pwt, b, z,
        co, h, w, oh, ow,
        C=ci, K=len(xs), STRIDE=stride, CL=cl, HAS_BIAS=bias is not None,
        LOW_PRECISION_DOT=low, **tiles, **INFERENCE_LAUNCH,
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
# The function the kernels compute


def reference_agg_relu_dw(xs: List[Tensor], coef: Tensor, weight: Tensor, stride: int) -> Tensor:
    """`agg_relu_dw` with eager ops (the function the kernels compute)."""
    s = xs[0] * coef[0].to(xs[0].dtype)
    for i in range(1, len(xs)):
        s = s + xs[i] * coef[i].to(s.dtype)
    return torch.nn.functional.conv2d(s.relu(), weight.to(s.dtype), None, stride, 1, 1, s.shape[1])
