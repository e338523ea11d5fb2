"""The Triton programs of the node kernels (`kernels.py` launches them as custom ops).

Triton decides when a program is defined, at this module's import, whether it is compiled for
the GPU or interpreted on the CPU (`TRITON_INTERPRET=1`, the tests' mode).
"""

import os
from types import SimpleNamespace

__all__ = ["TRITON_ERROR", "INTERPRET", "agg_relu_dw_fwd_kernel"]
__all__ += ["agg_relu_dw_bwd_kernel", "agg_relu_dw_pw_kernel"]

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
# Sized to fit the GPU, checked ahead of time by `benchmarks/kernels.py fit` (sm_80 and sm_90): the
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
def agg_relu_dw_fwd_kernel(
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
def agg_relu_dw_bwd_kernel(
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
def agg_relu_dw_pw_kernel(
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
