#!/usr/bin/env python
"""Whether the Triton node kernels fit a GPU, checked without one: every kernel variant the
shipped networks launch, compiled ahead of time down to a cubin for sm_80 (A100) and sm_90
(H100/H200) with the ptxas that Triton's wheel bundles.

    python benchmarks/gpu_fit.py                       # every shipped network, both targets
    python benchmarks/gpu_fit.py --networks c109 --targets 90 --dtypes bf16 --json fit.json
    python benchmarks/gpu_fit.py --costs --networks c109 --dtypes bf16   # the cost table

1. The launches: each network (C78 small, C109 and C154 regular at 224 px; the C109 and C154
   detection trunks at 800x1216) is built on the `meta` device with EXECUTION "triton" and run
   there (training step and inference; fp32, fp16 and bf16; NCHW and channels_last); every
   `torch.ops.randwire.*` call is recorded. Nothing is listed by hand.
2. The variants: each distinct call goes through the project's own launcher with meta tensors,
   whose kernel launch is replaced by Triton's own argument binding (`_pack_args`: the same
   specialization a launch makes) and `triton.compile` for the target.
3. Per variant: registers, spill stores (ptxas), shared memory per block (what Triton checks at
   launch), warps per SM by the occupancy rules below, and compile seconds (a fresh cache).

Occupancy (sm_80 and sm_90 alike, CUDA occupancy calculator rules): 64 warps and 32 blocks per
SM, 65,536 registers per SM allocated per warp in units of 256, shared memory per SM 164 KB
(sm_80) / 228 KB (sm_90) with 1 KB reserved per block, at most 163 KB / 227 KB per block.

Limits checked (the exit status is 1 if one fails): shared memory per block <= 100 KB (two
blocks fit an SM), 0 spill stores, >= 16 warps per SM for the training kernels, compile <= 20 s.

`--costs`: the static cost table per kernel of a classifier (one training step and one
inference at 224 px): MB per image by the traffic model's fused count and by the kernel's own
reads and writes (`kernel_bytes`), and the time that implies at the H100's and H200's HBM
bandwidth. An estimate: no speed is measured without a GPU.
"""

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
from typing import Dict, List

# First: importing randwire_d2 quiets the deprecation notes that Detectron2's imports print.
import randwire_d2  # noqa: F401  # isort: split
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from torch.utils._python_dispatch import TorchDispatchMode

from randwire_d2.config import load_config
from randwire_d2.modeling import kernels
from randwire_d2.modeling.randwire import RandWire
from randwire_d2.utils.tables import markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KB = 1024
# name -> (config, image size (H, W), detection trunk?)
NETWORKS = {
    "c78": ("configs/imagenet/randwire_ws_c78_small.yaml", (224, 224), False),
    "c109": ("configs/imagenet/randwire_ws_c109_regular.yaml", (224, 224), False),
    "c154": ("configs/imagenet/randwire_ws_c154_regular.yaml", (224, 224), False),
    "c109-det": ("configs/faster_rcnn_randwire_c109_fpn_1x.yaml", (800, 1216), True),
    "c154-det": ("configs/faster_rcnn_randwire_c154_fpn_1x.yaml", (800, 1216), True),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LAYOUTS = ("nchw", "channels_last")
TARGETS = (80, 90)
SMEM_PER_SM = {80: 164 * KB, 90: 228 * KB}
SMEM_PER_BLOCK = {80: 163 * KB, 90: 227 * KB}
LIMIT_SMEM = 100 * KB
LIMIT_COMPILE_S = 20.0
LIMIT_TRAINING_WARPS = 16
TRAINING_KERNELS = ("forward", "backward")
BATCH = 8  # images per recorded step (the cost table is per image)
# HBM bandwidth from the vendors' spec sheets (bytes/s): the cost table's time estimates.
BANDWIDTH = {"H100 SXM": 3.35e12, "H200": 4.8e12}
OPS = {
    "randwire.agg_relu_dw.default": "forward",
    "randwire.agg_relu_dw_backward.default": "backward",
    "randwire.agg_relu_dw_pw.default": "inference",
}


# ---------------------------------------------------------------------------------------------
# 1. The launches the networks make


class LaunchRecorder(TorchDispatchMode):
    """Records each `torch.ops.randwire.*` call as (kernel, K, stride, dtype, layout, C, CO)."""

    def __init__(self):
        super().__init__()
        self.layout = "nchw"  # the pass's: on meta a conv's output is contiguous whatever its
        # input (CUDA keeps channels_last), so the recorded layout is the one the pass runs in
        self.calls = set()
        self.shapes = []  # per call: (kernel, K, stride, dtype, layout, C, CO, N, H, W)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kind = OPS.get(str(func))
        if kind is not None:
            xs = args[1] if kind == "backward" else args[0]
            x = xs[0]
            stride = args[-1]
            co = args[3].shape[0] if kind == "inference" else 0
            layout = self.layout
            dtype = [k for k, v in DTYPES.items() if v == x.dtype][0]
            self.calls.add((kind, len(xs), stride, dtype, layout, x.shape[1], co))
            self.shapes.append(
                (kind, len(xs), stride, dtype, layout, x.shape[1], co, *x.shape[:1], *x.shape[2:])
            )
        return func(*args, **(kwargs or {}))


def trunk(name: str) -> RandWire:
    config, _, detection = NETWORKS[name]
    opts = ["MODEL.DEVICE", "meta", "MODEL.RANDWIRE.EXECUTION", "triton"]
    cfg = load_config(os.path.join(ROOT, config), opts, freeze=False)
    with torch.device("meta"):
        if detection:
            return build_backbone(cfg, ShapeSpec(channels=3)).bottom_up
        model = build_backbone(cfg, ShapeSpec(channels=3))
    return model


def launches(names: List[str], dtypes: List[str], layouts=LAYOUTS, recorder=None) -> List[tuple]:
    """Every distinct node-kernel call of the networks `names` (training step and inference)."""
    recorder = recorder or LaunchRecorder()
    for name in names:
        h, w = NETWORKS[name][1]
        model = trunk(name)
        for dtype in dtypes:
            for layout in layouts:
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                model = model.to(dtype=DTYPES[dtype], memory_format=fmt)
                x = torch.empty(
                    BATCH, 3, h, w, device="meta", dtype=DTYPES[dtype], memory_format=fmt
                )
                recorder.layout = layout
                with recorder, torch.random.fork_rng(devices=[]):
                    model.train()
                    x.requires_grad_(True)
                    outs = model(x)
                    sum(o.float().sum() for o in outs.values()).backward()
                    model.zero_grad(set_to_none=True)
                    model.eval()
                    with torch.no_grad():
                        model(x.detach())
    return sorted(recorder.calls)


# ---------------------------------------------------------------------------------------------
# 2. Each launch as the launcher makes it, compiled for a target


def bound_launches(call) -> List[tuple]:
    """[(kernel, signature, constexprs, attrs, options)] of the launcher's launches for `call`,
    bound as Triton binds a launch (for sm_90; the binding does not depend on the target)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    if kernels.INTERPRET:  # the kernels were defined for the interpreter, not compiled
        raise RuntimeError("gpu_fit compiles for GPUs: run it without TRITON_INTERPRET=1")
    kind, k, stride, dtype, layout, c, co = call
    backend = make_backend(GPUTarget("cuda", 90, 32))
    bound = []

    def record(fn, *args, grid, warmup, **kwargs):
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound_args, specialization, options = binder(*args, **kwargs)
        opts, signature, constexprs, attrs = fn._pack_args(
            backend, kwargs, bound_args, specialization, options
        )
        bound.append((fn, signature, constexprs, attrs, kwargs))

    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def t(*shape, dt=DTYPES[dtype], fmt=fmt):
        return torch.empty(shape, device="meta", dtype=dt, memory_format=fmt)

    h = w = 64  # any size: the kernels do not specialize on it
    xs = [t(2, c, h, w) for _ in range(k)]
    coef = t(k, dt=torch.float32, fmt=torch.contiguous_format)
    dw = t(c, 1, 3, 3, dt=torch.float32, fmt=torch.contiguous_format)
    run = JITFunction.run
    JITFunction.run = record
    try:
        if kind == "forward":
            kernels._agg_relu_dw_impl(xs, coef, dw, stride)
        elif kind == "backward":
            o = (h - 1) // stride + 1
            kernels._agg_relu_dw_backward_impl(t(2, c, o, o), xs, coef, dw, stride)
        else:
            pw = t(co, c, 1, 1, dt=torch.float32, fmt=torch.contiguous_format)
            bias = t(co, dt=torch.float32, fmt=torch.contiguous_format)
            kernels._agg_relu_dw_pw_impl(xs, coef, dw, pw, bias, stride)
    finally:
        JITFunction.run = run
    return bound


def _ptxas_numbers(log: str) -> Dict[str, int]:
    regs = re.findall(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {
        "registers": max(map(int, regs)) if regs else -1,
        "spill_stores": max(int(s) for s, _ in spills) if spills else -1,
        "spill_loads": max(int(s) for _, s in spills) if spills else -1,
    }


def warps_per_sm(arch: int, registers: int, shared: int, num_warps: int) -> int:
    """Resident warps per SM by the occupancy rules in the module docstring."""
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = (65536 // regs_per_warp) // num_warps
    by_smem = SMEM_PER_SM[arch] // (shared + KB)
    blocks = min(32, 64 // num_warps, by_regs, by_smem)
    return blocks * num_warps


def compile_one(job) -> Dict:
    """Compile one bound launch for one target in a fresh cache; its resource numbers."""
    call, index, arch = job
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, signature, constexprs, attrs, kwargs = bound_launches(call)[index]
    options = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages")}
    log = io.StringIO()
    with tempfile.TemporaryDirectory() as cache:
        knobs.cache.dir = cache
        knobs.nvidia.dump_ptxas_log = True
        start = time.perf_counter()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                ASTSource(fn, signature, constexprs, attrs),
                target=GPUTarget("cuda", arch, 32),
                options=options,
            )
        seconds = time.perf_counter() - start
    md = compiled.metadata
    ptx = compiled.asm["ptx"]
    out = _ptxas_numbers(log.getvalue())
    out.update(
        kernel=call[0],
        call=list(call),
        arch=arch,
        num_warps=md.num_warps,
        num_stages=md.num_stages,
        shared=md.shared,
        compile_s=round(seconds, 2),
        global_loads=len(re.findall(r"\bld\.global", ptx)),
        vector_loads=len(re.findall(r"\bld\.global[.\w]*\.v[248]\b", ptx)),
    )
    out["warps_per_sm"] = warps_per_sm(arch, out["registers"], md.shared, md.num_warps)
    out["failures"] = failures(out)
    return out


def failures(r: Dict) -> List[str]:
    """The limits a variant breaks (the module docstring's list)."""
    bad = []
    if r["shared"] > SMEM_PER_BLOCK[r["arch"]]:
        bad.append(f"cannot launch: {r['shared']} B of shared memory per block")
    elif r["shared"] > LIMIT_SMEM:
        bad.append(f"{r['shared']} B of shared memory per block (> {LIMIT_SMEM})")
    if r["spill_stores"] != 0:
        bad.append(f"{r['spill_stores']} B of spill stores")
    if r["kernel"] in TRAINING_KERNELS and r["warps_per_sm"] < LIMIT_TRAINING_WARPS:
        bad.append(f"{r['warps_per_sm']} warps per SM (< {LIMIT_TRAINING_WARPS})")
    if r["compile_s"] > LIMIT_COMPILE_S:
        bad.append(f"compiles in {r['compile_s']} s (> {LIMIT_COMPILE_S})")
    return bad


# ---------------------------------------------------------------------------------------------
# 3. What each kernel moves: a static estimate, no GPU


def kernel_bytes(kind, k, stride, dtype, layout, c, co, n, h, w) -> Dict[str, int]:
    """Bytes one call moves: `dram`, each tensor read or written once (plus the backward's second
    read of its inputs for the edge dots and its float32 partial sums), and `loads`, what its
    programs request from L1/L2 (every tap loads its tile; the inference kernel recomputes the
    depthwise tile once per block of output channels)."""
    e = DTYPES[dtype].itemsize
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    x, d = n * c * h * w * e, n * c * oh * ow * e
    cl = layout == "channels_last"
    if kind == "forward":
        return {"dram": k * x + d, "loads": 9 * k * n * c * oh * ow * e}
    if kind == "backward":
        bp, bc = kernels.BACKWARD_TILES[cl]
        tiles = n * -(-h * w // bp)
        parts = tiles * 9 * c * 4 + tiles * -(-c // bc) * k * 4
        return {"dram": 2 * k * x + d + k * x + parts, "loads": 2 * k * x + 9 * n * c * h * w * e}
    t = kernels.INFERENCE_TILES
    co_blocks = -(-co // t["BLOCK_CO"])
    z = n * co * oh * ow * e
    return {"dram": k * x + z + c * co * e, "loads": co_blocks * 9 * k * n * c * oh * ow * e}


def costs(name: str, dtype: str, layout: str) -> List[list]:
    """Per kernel of the classifier `name`, one training step and one inference at BATCH: calls
    per step, MB per image by the traffic model's fused count (benchmarks/traffic.py: each op's
    tensor inputs and outputs once) and by `kernel_bytes`, and the time that implies at each
    HBM bandwidth (kernel DRAM bytes / bandwidth: a lower bound, not a measurement)."""
    if __package__:  # python -m benchmarks.gpu_fit, or imported by the tests
        from . import traffic
    else:  # python benchmarks/gpu_fit.py: its folder is sys.path[0]
        import traffic

    config, (h, _), detection = NETWORKS[name]
    if detection:
        raise ValueError(f"the cost table is for the classifiers, not {name!r}")
    recorder = LaunchRecorder()
    launches([name], [dtype], [layout], recorder)
    counted = {}
    for train in (True, False):
        model = traffic.randwire_model(config, "triton")
        step = traffic.traffic(
            model, BATCH, h, dtype, train, "fused", layout == "channels_last", details=True
        )
        counted.update(step["by_op"])
    rows = []
    for kind, op in [(v, k) for k, v in OPS.items()]:
        calls = [c for c in recorder.shapes if c[0] == kind]
        moved = [kernel_bytes(*c) for c in calls]
        dram = sum(m["dram"] for m in moved) / BATCH
        loads = sum(m["loads"] for m in moved) / BATCH
        model_mb = counted.get(op, [0, 0])[1] / BATCH / 1e6
        row = [name, dtype, layout, kind, len(calls), f"{model_mb:.1f}", f"{dram / 1e6:.1f}"]
        row += [f"{loads / 1e6:.0f}"]
        row += [f"{dram / bw * 1e6:.1f}" for bw in BANDWIDTH.values()]
        rows.append(row)
    return rows


def cost_table(rows: List[list]) -> str:
    head = ["network", "dtype", "layout", "kernel", "calls/step", "traffic model MB/img"]
    head += ["kernel DRAM MB/img", "kernel L1/L2 loads MB/img"]
    head += [f"us/img at {gpu} ({bw / 1e12:.2f} TB/s)" for gpu, bw in BANDWIDTH.items()]
    return markdown_table(head, rows)


# ---------------------------------------------------------------------------------------------
# 4. The tables


def summary(rows: List[Dict]) -> str:
    """One row per (kernel, dtype, target): the worst variant on each measure."""
    groups = {}
    for r in rows:
        groups.setdefault((r["kernel"], r["call"][3], r["arch"]), []).append(r)
    table = []
    for (kernel, dtype, arch), rs in sorted(groups.items()):
        table.append(
            [
                kernel,
                dtype,
                f"sm_{arch}",
                len(rs),
                max(r["registers"] for r in rs),
                max(r["spill_stores"] for r in rs),
                f"{max(r['shared'] for r in rs) / KB:.1f}",
                min(r["warps_per_sm"] for r in rs),
                f"{max(r['compile_s'] for r in rs):.1f}",
                f"{sum(r['vector_loads'] for r in rs)}/{sum(r['global_loads'] for r in rs)}",
                sum(bool(r["failures"]) for r in rs),
            ]
        )
    head = [
        "kernel",
        "dtype",
        "target",
        "variants",
        "max registers",
        "max spill stores (B)",
        "max shared (KB)",
        "min warps/SM",
        "max compile (s)",
        "vector/all global loads (PTX)",
        "variants failing",
    ]
    return markdown_table(head, table)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--targets", nargs="+", type=int, default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--kernels", nargs="+", default=list(OPS.values()))
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), choices=range(1, 65)
    )
    parser.add_argument("--json", help="write every variant's numbers to this file")
    parser.add_argument(
        "--costs",
        action="store_true",
        help="only the cost table (bytes per image, time at HBM bandwidth) of the classifiers",
    )
    args = parser.parse_args(argv)
    if args.costs:
        rows = [
            row
            for name in args.networks
            if not NETWORKS[name][2]
            for dtype in args.dtypes
            for layout in args.layouts
            for row in costs(name, dtype, layout)
        ]
        print("Estimate from the spec-sheet HBM bandwidth, not a measurement (no GPU):")
        print(cost_table(rows))
        return 0

    calls = [c for c in launches(args.networks, args.dtypes, args.layouts) if c[0] in args.kernels]
    variants = {}  # the same specialization from different calls compiles once
    for call in calls:
        for i, (fn, signature, constexprs, attrs, kwargs) in enumerate(bound_launches(call)):
            key = repr((fn.__name__, signature, constexprs, attrs, sorted(kwargs.items())))
            variants.setdefault(key, (call, i))
    jobs = [(call, i, arch) for call, i in variants.values() for arch in args.targets]
    print(
        f"{len(calls)} distinct launches of {args.networks}: {len(variants)} kernel variants, "
        f"{len(jobs)} compiles",
        flush=True,
    )
    start = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(compile_one, jobs))
    print(summary(rows))
    bad = [r for r in rows if r["failures"]]
    for r in bad[:40]:
        print(f"FAIL sm_{r['arch']} {r['call']}: {'; '.join(r['failures'])}")
    print(
        f"{len(rows)} variants compiled in {time.perf_counter() - start:.0f} s "
        f"({args.jobs} processes): {len(bad)} break a limit"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
