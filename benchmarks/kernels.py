#!/usr/bin/env python
"""The Triton node kernels: their check on a GPU, and whether they fit one, checked without it.

    python benchmarks/kernels.py [--out DIR]      # check, on a CUDA machine (under 8 minutes)
    python benchmarks/kernels.py --dry-run        # the check on CPU: Triton's interpreter, tiny
    python benchmarks/kernels.py fit --networks c109 --targets 90 --dtypes bf16 --json fit.json
    python benchmarks/kernels.py costs --networks c109 --dtypes bf16 fp32

check  each kernel vs the eager ops at C109's node shapes (correctness, median time), C109
       triton vs reference (logits, gradients), C109 eager / triton vs ResNet-50 (img/s, and
       traffic-model bytes x img/s over the copy bandwidth); gpu_kernels.json / .md in --out.
fit    every kernel variant the shipped networks launch, compiled for sm_80 / sm_90 with
       Triton's ptxas; exit 1 on > 100 KB shared memory per block, a spill, < 16 warps per SM
       (training kernels; CUDA occupancy rules), or a compile over 20 s.
costs  per kernel: MB per image (traffic model; its own reads and writes), time at HBM speed.
"""

import argparse
import concurrent.futures
import contextlib
import copy
import io
import json
import os
import re
import statistics
import sys
import tempfile
import time

import torch

DRY = __name__ == "__main__" and sys.argv[1:2] not in (["fit"], ["costs"])
DRY = DRY and ("--dry-run" in sys.argv or not torch.cuda.is_available())
if DRY:  # Triton picks the interpreter when its kernels are defined: before randwire_d2 loads
    os.environ.setdefault("TRITON_INTERPRET", "1")

import randwire_d2  # noqa: E402,F401  # isort: split  (first: it quiets Detectron2's notes)
import torch.nn.functional as F  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import build_backbone  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from randwire_d2.config import load_config  # noqa: E402
from randwire_d2.modeling import kernels, triton_programs  # noqa: E402

if __package__:  # python -m benchmarks.kernels, or imported
    from . import bench_common as bc
    from . import traffic
else:  # python benchmarks/kernels.py: its folder is sys.path[0]
    import bench_common as bc
    import traffic

C109 = bc.RANDWIRE["rw-c109"]
TINY = ["MODEL.RANDWIRE.CHANNELS", 8, "MODEL.RANDWIRE.NUM_NODES", 6, "MODEL.RANDWIRE.REGIME"]
TINY += ["small", "MODEL.RANDWIRE.WS_K", 2, "MODEL.CLASSIFIER.HEAD_CHANNELS", 16]
TINY += ["MODEL.CLASSIFIER.NUM_CLASSES", 10]
# (stage, channels, size at 224 px, the previous stage's channels: what stride-2 nodes read)
STAGES = [("conv2", 109, 56, 54), ("conv3", 218, 28, 109), ("conv4", 436, 14, 218)]
STAGES += [("conv5", 872, 7, 436)]
TINY_STAGES = [("conv3", 8, 8, 4), ("conv4", 16, 4, 8)]
TOLERANCE, MODEL_TOLERANCE = 2e-2, 5e-2  # relative: kernels, the C109 classifier

# ---------------------------------------------------------------------------------------------
# check


def bench_ms(fn, reps=20) -> float:
    """Median milliseconds of fn(): triton.testing.do_bench on CUDA, wall clock on CPU."""
    if not DRY:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=5, rep=reps * 5, return_mode="median"))
    times = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def rel_err(got, want) -> float:
    got, want = got.float(), want.float()
    return ((got - want).norm() / (want.norm() + 1e-12)).item()


def node_case(k, channels, size, stride, layout, dtype, device, batch, seed):
    g = torch.Generator().manual_seed(seed)
    h = size * stride
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    xs = [torch.randn(batch, channels, h, h, generator=g) for _ in range(k)]
    xs = [x.to(device, dtype).contiguous(memory_format=fmt) for x in xs]
    coef = torch.rand(k, generator=g).to(device)
    dw = (torch.randn(channels, 1, 3, 3, generator=g) * 0.3).to(device)
    pw = (torch.randn(channels, channels, 1, 1, generator=g) / channels**0.5).to(device)
    return xs, coef, dw, pw, torch.randn(channels, generator=g).to(device)


def check_kernels(args, device, dtype):
    """Max relative errors of every kernel output against the eager ops (float32 on the same
    rounded inputs), over in-degrees, strides, layouts and the stages' widths."""
    rows = []
    for name, channels, size, _ in TINY_STAGES if DRY else STAGES:
        for stride in (1, 2):
            for layout in ("contiguous", "channels_last"):
                for k in (1, 2, 5, 8) if stride == 1 else (1,):
                    case = node_case(k, channels, size, stride, layout, dtype, device, 2, k)
                    xs, (coef, dw, pw, bias) = [x.requires_grad_() for x in case[0]], case[1:]
                    c, w = coef.clone().requires_grad_(), dw.clone().requires_grad_()
                    d = kernels.agg_relu_dw(xs, c, w, stride)
                    g = torch.randn_like(d)
                    grads = torch.autograd.grad(d, xs + [c, w], g)
                    x32 = [x.detach().float().requires_grad_() for x in xs]
                    c2, w2 = coef.clone().requires_grad_(), dw.clone().requires_grad_()
                    d_ref = kernels.reference_agg_relu_dw(x32, c2, w2, stride)
                    grads_ref = torch.autograd.grad(d_ref, x32 + [c2, w2], g.float())
                    with torch.no_grad():
                        xd = [x.detach() for x in xs]
                        z = kernels.agg_relu_dw_pw(xd, coef, dw, pw, bias, stride)
                        z_ref = F.conv2d(d_ref, pw, bias)
                    errs = [rel_err(d, d_ref), rel_err(z, z_ref)]
                    errs += [rel_err(a, b) for a, b in zip(grads, grads_ref)]
                    rows.append(dict(stage=name, C=channels, k=k, stride=stride, layout=layout))
                    rows[-1]["err"] = max(errs)
    worst = max(r["err"] for r in rows)
    return dict(cases=len(rows), max_rel_err=worst, ok=worst < TOLERANCE, rows=rows)


def classifier(execution, device):
    torch.manual_seed(0)
    return bc.build(C109, execution, str(device), TINY if DRY else ()).to(device)


def check_model(args, device, dtype):
    """C109 with EXECUTION triton vs reference: eval logits and training gradients."""
    ref = classifier("reference", device)
    size, batch = (32, 2) if DRY else (224, 8)
    x = torch.randn(batch, 3, size, size, device=device)
    # BatchNorm statistics of real activations (at initialisation, eval features vanish)
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        ref.train()(x)
    tri = copy.deepcopy(ref)
    tri.model.backbone.set_execution("triton")
    autocast = torch.autocast(device.type, dtype=dtype, enabled=not DRY)
    out = {}
    with autocast, torch.no_grad():
        out["eval_logits"] = rel_err(tri.eval()(x), ref.eval()(x))
    y = torch.randint(0, 10, (batch,), device=device)
    grads = []
    for m in (ref, tri):
        m.train().zero_grad()
        torch.manual_seed(0)  # the same dropout
        m.model.backbone.seed_edge_removal((0, 0, 0))  # and the same removed edge
        with autocast:
            F.cross_entropy(m(x).float(), y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    out["train_gradients"] = rel_err(grads[1], grads[0])
    out["ok"] = max(out.values()) < MODEL_TOLERANCE
    return out


def time_kernels(args, device, dtype):
    """Median ms of each kernel and of the eager ops it replaces, at C109's node shapes."""
    rows, batch = [], 2 if DRY else args.batch[0]
    for name, channels, size, prev in TINY_STAGES if DRY else STAGES:
        for layout in ("contiguous", "channels_last"):
            for k, stride in ((2, 1), (4, 1), (1, 2)):
                ch = prev if stride == 2 else channels
                case = node_case(k, ch, size, stride, layout, dtype, device, batch, 0)
                xs, coef, dw, pw, bias = case
                pw = pw[:, :ch] if stride == 2 else pw
                xg = [x.requires_grad_() for x in xs]
                gd = torch.randn_like(kernels.agg_relu_dw(xg, coef, dw, stride))
                d_eager = kernels.reference_agg_relu_dw(xg, coef, dw.requires_grad_(), stride)
                pw_c, bias_c = pw.to(dtype), bias.to(dtype)
                eager_bwd = lambda: torch.autograd.grad(
                    d_eager, xg + [dw], gd, retain_graph=True
                )  # noqa
                eager_fwd = lambda: kernels.reference_agg_relu_dw(xs, coef, dw, stride)  # noqa
                cases = {
                    "forward": (lambda: kernels.agg_relu_dw(xs, coef, dw, stride), eager_fwd),
                    "backward": (lambda: kernels.agg_relu_dw_backward(gd, xs, coef, dw, stride),
                                 eager_bwd),
                    "inference": (lambda: kernels.agg_relu_dw_pw(xs, coef, dw, pw, bias, stride),
                                  lambda: F.conv2d(eager_fwd(), pw_c, bias_c)),
                }  # fmt: skip
                for what, (fused, eager) in cases.items():
                    with torch.no_grad() if what != "backward" else torch.enable_grad():
                        t_fused, t_eager = bench_ms(fused), bench_ms(eager)
                    rows.append(dict(stage=name, C=ch, k=k, stride=stride, layout=layout, op=what,
                                     batch=batch, eager_ms=t_eager, kernel_ms=t_fused,
                                     speedup=t_eager / t_fused))  # fmt: skip
    return rows


def time_models(args, device, bandwidth, deadline):
    """C109 eager and triton vs ResNet-50 in bench_common's loop, per layout and batch."""
    size, dtype, rows = 32 if DRY else 224, "fp32" if DRY else "bf16", []
    for layout in ("contiguous", "channels_last"):
        models = {"randwire-eager": classifier("eager", device)}
        models["randwire-triton"] = classifier("triton", device)
        models["r50"] = bc.build("r50", device=str(device))
        for batch in [2] if DRY else args.batch:
            if time.time() > deadline:
                rows.append(dict(layout=layout, batch=batch, skipped="time budget spent"))
                continue
            cl = layout == "channels_last"
            benches = [bc.Bench(k, m, device, dtype, cl) for k, m in models.items()]
            inputs = {b.name: b.inputs(batch, (size, size), classes=10) for b in benches}
            rounds, steps = (1, 1) if DRY else (args.rounds, args.steps)
            warmup = 1 if DRY else 2  # Triton compiles, cuDNN picks algorithms
            bc.interleaved(benches, inputs, rounds, warmup, steps, order=("train", "infer"))
            ips = {(b.name, w): statistics.median(batch / t for t in b.times[w])
                   for b in benches for w in ("train", "infer")}  # fmt: skip
            for (k, what), v in ips.items():  # bytes: eager granularity of the model's execution
                m = bc.build(k, None, "meta") if k == "r50" else classifier(k[9:], "meta")
                b = traffic.traffic(m, 4, size, "bf16", what == "train", "eager", cl)
                b = b["bytes_per_image"]
                rows.append(dict(layout=layout, batch=batch, model=k, what=what, img_s=v,
                                 bytes_per_image=b, gb_s=v * b / 1e9,
                                 bw_fraction=v * b / 1e9 / bandwidth,
                                 vs_r50=v / ips[("r50", what)]))  # fmt: skip
        models = benches = None  # freed before the next layout
        if not DRY:
            torch.cuda.empty_cache()
    return rows


def best_layout_ratios(rows):
    """Per batch and (train, infer): RandWire's (triton, eager) best layout over R50's best."""
    out = {}
    for batch in sorted({r["batch"] for r in rows if "img_s" in r}):
        for what in ("train", "infer"):
            best = {}
            for r in rows:
                if r.get("batch") == batch and r.get("what") == what:
                    best[r["model"]] = max(best.get(r["model"], 0), r["img_s"])
            for m in ("randwire-triton", "randwire-eager"):
                if m in best and "r50" in best:
                    out[f"{m} {what} b{batch}"] = best[m] / best["r50"]
    return out


def markdown(result) -> str:
    model = "RandWire C=8 (tiny, dry run)" if DRY else "RandWire-C109"
    ck, cm = result["kernel_check"], result["model_check"]
    lines = [f"# Triton node kernels: {result['machine']}; {model} vs ResNet-50", ""]
    lines += ["**Dry run on CPU (Triton's interpreter): no speed was measured.**", ""] * DRY
    lines += [
        f"Kernel correctness: {ck['cases']} cases, max relative error {ck['max_rel_err']:.2e} "
        f"({'ok' if ck['ok'] else 'FAILED'}, tolerance {result['tolerance']})",
        f"{model} triton vs reference ({'fp32' if DRY else 'bf16 autocast'}): eval logits "
        f"{cm['eval_logits']:.2e}, training gradients {cm['train_gradients']:.2e} "
        f"({'ok' if cm['ok'] else 'FAILED'})",
        f"Copy bandwidth: {result['copy_gb_s']:.0f} GB/s",
        "",
    ]
    header = ["stage", "C", "k", "stride", "layout", "op", "eager ms", "kernel ms", "speedup"]
    # fmt: off
    lines.append(bc.table(header, [
        [r["stage"], r["C"], r["k"], r["stride"], r["layout"], r["op"], f"{r['eager_ms']:.3f}",
         f"{r['kernel_ms']:.3f}", f"{r['speedup']:.2f}"]
        for r in result["kernels"]
    ]))
    header = ["batch", "layout", "model", "step", "img/s", "x R50", "MB/img", "GB/s", "of copy bw"]
    lines += ["", bc.table(header, [
        [r["batch"], r["layout"], f"skipped: {r['skipped']}"] if "img_s" not in r else
        [r["batch"], r["layout"], r["model"], r["what"], f"{r['img_s']:.0f}",
         f"{r['vs_r50']:.2f}", f"{r['bytes_per_image'] / 1e6:.1f}",
         f"{r['gb_s']:.1f}", f"{100 * r['bw_fraction']:.0f}%"]
        for r in result["models"]
    ])]
    # fmt: on
    lines += ["", "Best layout of each model over ResNet-50's best (same batch):"]
    lines += [f"- {k}: {v:.2f}x" for k, v in result["best_layout_ratios"].items()]
    return "\n".join(lines + [f"\nTotal {result['seconds']:.0f} s."])


def check(args) -> int:
    start, device, dtype = time.time(), torch.device("cpu" if DRY else "cuda"), torch.bfloat16
    torch.backends.cudnn.benchmark = True
    result = dict(machine=bc.machine(device), dry_run=DRY, tolerance=TOLERANCE)
    print("== kernel correctness", flush=True)
    result["kernel_check"] = check_kernels(args, device, dtype)
    print("== C109 triton vs reference", flush=True)
    result["model_check"] = check_model(args, device, dtype)
    print("== kernel times", flush=True)
    result["kernels"] = time_kernels(args, device, dtype)
    result["copy_gb_s"] = bc.copy_bandwidth_gbs(device, (1 << 20) if DRY else (1 << 30))
    print("== models", flush=True)
    result["models"] = time_models(args, device, result["copy_gb_s"], start + args.budget)
    result["best_layout_ratios"] = best_layout_ratios(result["models"])
    result["seconds"] = time.time() - start
    os.makedirs(args.out, exist_ok=True)
    text = markdown(result)
    for ext, content in (("json", json.dumps(result, indent=1)), ("md", text)):
        with open(os.path.join(args.out, f"gpu_kernels.{ext}"), "w") as f:
            f.write(content + "\n")
    print(text)
    return 0 if result["kernel_check"]["ok"] and result["model_check"]["ok"] else 1


# ---------------------------------------------------------------------------------------------
# fit and costs

KB = 1024
# name -> (config, image size (H, W), detection trunk?)
NETWORKS = {
    "c78": (bc.RANDWIRE["rw-c78"], (224, 224), False),
    "c109": (C109, (224, 224), False),
    "c154": (bc.RANDWIRE["rw-c154"], (224, 224), False),
    "c109-det": ("configs/faster_rcnn_randwire_c109_fpn_1x.yaml", (800, 1216), True),
    "c154-det": ("configs/faster_rcnn_randwire_c154_fpn_1x.yaml", (800, 1216), True),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LAYOUTS = ("nchw", "channels_last")
TARGETS = (80, 90)
SMEM_PER_SM = {80: 164 * KB, 90: 228 * KB}
SMEM_PER_BLOCK = {80: 163 * KB, 90: 227 * KB}
LIMIT_SMEM, LIMIT_COMPILE_S, LIMIT_TRAINING_WARPS = 100 * KB, 20.0, 16
TRAINING_KERNELS = ("forward", "backward")
BATCH = 8  # images per recorded step (the cost table is per image)
# HBM bandwidth from the vendors' spec sheets (bytes/s): the cost table's time estimates.
BANDWIDTH = {"H100 SXM": 3.35e12, "H200": 4.8e12}
OPS = {
    "randwire.agg_relu_dw.default": "forward",
    "randwire.agg_relu_dw_backward.default": "backward",
    "randwire.agg_relu_dw_pw.default": "inference",
}


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
            x, stride = xs[0], args[-1]
            co = args[3].shape[0] if kind == "inference" else 0
            dtype = [k for k, v in DTYPES.items() if v == x.dtype][0]
            call = (kind, len(xs), stride, dtype, self.layout, x.shape[1], co)
            self.calls.add(call)
            self.shapes.append(call + (x.shape[0], *x.shape[2:]))
        return func(*args, **(kwargs or {}))


def trunk(name: str):
    config, _, detection = NETWORKS[name]
    opts = ["MODEL.DEVICE", "meta", "MODEL.RANDWIRE.EXECUTION", "triton"]
    cfg = load_config(os.path.join(bc.ROOT, config), opts, freeze=False)
    with torch.device("meta"):
        model = build_backbone(cfg, ShapeSpec(channels=3))
    return model.bottom_up if detection else model


def launches(names, dtypes, layouts=LAYOUTS, recorder=None):
    """Every distinct node-kernel call of the networks `names` (training step and inference)."""
    recorder = recorder or LaunchRecorder()
    for name in names:
        h, w = NETWORKS[name][1]
        model = trunk(name)
        for dtype in dtypes:
            for layout in layouts:
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                model = model.to(dtype=DTYPES[dtype], memory_format=fmt)
                x = torch.empty(BATCH, 3, h, w, device="meta", dtype=DTYPES[dtype])
                x = x.contiguous(memory_format=fmt)
                recorder.layout = layout
                with recorder, torch.random.fork_rng(devices=[]):
                    model.train()
                    outs = model(x.requires_grad_(True))
                    sum(o.float().sum() for o in outs.values()).backward()
                    model.zero_grad(set_to_none=True)
                    with torch.no_grad():
                        model.eval()(x.detach())
    return sorted(recorder.calls)


def bound_launches(call):
    """[(kernel name, signature, constexprs, attrs, options)] of the launcher's launches for
    `call`, bound as Triton binds a launch (for sm_90; the binding does not depend on the
    target): plain data, so that a compiling process takes it as it is."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    if kernels.INTERPRET:  # the kernels were defined for the interpreter, not compiled
        raise RuntimeError("fit compiles for GPUs: run it without TRITON_INTERPRET=1")
    kind, k, stride, dtype, layout, c, co = call
    backend, bound = make_backend(GPUTarget("cuda", 90, 32)), []

    def record(fn, *args, grid, warmup, **kwargs):
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound_args, specialization, options = binder(*args, **kwargs)
        packed = fn._pack_args(backend, kwargs, bound_args, specialization, options)
        bound.append((fn.__name__, *packed[1:], kwargs))

    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def t(*shape, dt=DTYPES[dtype], fmt=fmt):
        return torch.empty(shape, device="meta", dtype=dt, memory_format=fmt)

    def t32(*shape):
        return t(*shape, dt=torch.float32, fmt=torch.contiguous_format)

    h = w = 64  # any size: the kernels do not specialize on it
    xs, coef, dw = [t(2, c, h, w) for _ in range(k)], t32(k), t32(c, 1, 3, 3)
    run, JITFunction.run = JITFunction.run, record
    try:
        if kind == "forward":
            kernels._agg_relu_dw_impl(xs, coef, dw, stride)
        elif kind == "backward":
            o = (h - 1) // stride + 1
            kernels._agg_relu_dw_backward_impl(t(2, c, o, o), xs, coef, dw, stride)
        else:
            kernels._agg_relu_dw_pw_impl(xs, coef, dw, t32(co, c, 1, 1), t32(co), stride)
    finally:
        JITFunction.run = run
    return bound


def warps_per_sm(arch: int, registers: int, shared: int, num_warps: int) -> int:
    """Resident warps per SM by the occupancy rules in the module docstring."""
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = (65536 // regs_per_warp) // num_warps
    by_smem = SMEM_PER_SM[arch] // (shared + KB)
    return min(32, 64 // num_warps, by_regs, by_smem) * num_warps


def compile_one(job) -> dict:
    """Compile one bound launch (of `bound_launches`) for one target in a fresh cache; its
    resource numbers."""
    call, (name, signature, constexprs, attrs, kwargs), arch = job
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(triton_programs, name)
    options = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages")}
    log = io.StringIO()
    with tempfile.TemporaryDirectory() as cache:
        knobs.cache.dir, knobs.nvidia.dump_ptxas_log = cache, True
        start = time.perf_counter()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                ASTSource(fn, signature, constexprs, attrs),
                target=GPUTarget("cuda", arch, 32),
                options=options,
            )
        seconds = time.perf_counter() - start
    md, ptx, text = compiled.metadata, compiled.asm["ptx"], log.getvalue()
    regs = re.findall(r"Used (\d+) registers", text)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    out = dict(
        registers=max(map(int, regs)) if regs else -1,
        spill_stores=max(int(s) for s, _ in spills) if spills else -1,
        spill_loads=max(int(s) for _, s in spills) if spills else -1,
        kernel=call[0], call=list(call), arch=arch, num_warps=md.num_warps,
        num_stages=md.num_stages, shared=md.shared, compile_s=round(seconds, 2),
        global_loads=len(re.findall(r"\bld\.global", ptx)),
        vector_loads=len(re.findall(r"\bld\.global[.\w]*\.v[248]\b", ptx)),
    )  # fmt: skip
    out["warps_per_sm"] = warps_per_sm(arch, out["registers"], md.shared, md.num_warps)
    out["failures"] = failures(out)
    return out


def failures(r: dict) -> list:
    """The limits a variant breaks."""
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


def kernel_bytes(kind, k, stride, dtype, layout, c, co, n, h, w) -> dict:
    """Bytes one call moves: `dram`, each tensor read or written once (plus the backward's second
    read of its inputs and its float32 partial sums), and `loads`, what its programs request
    from L1/L2 (every tap loads its tile; the inference kernel recomputes the depthwise tile
    once per block of output channels)."""
    e = DTYPES[dtype].itemsize
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    x, d = n * c * h * w * e, n * c * oh * ow * e
    if kind == "forward":
        return {"dram": k * x + d, "loads": 9 * k * n * c * oh * ow * e}
    if kind == "backward":
        bp, bc_ = kernels.BACKWARD_TILES[layout == "channels_last"]
        tiles = n * -(-h * w // bp)
        parts = tiles * 9 * c * 4 + tiles * -(-c // bc_) * k * 4
        return {"dram": 2 * k * x + d + k * x + parts, "loads": 2 * k * x + 9 * n * c * h * w * e}
    co_blocks = -(-co // kernels.INFERENCE_TILES["BLOCK_CO"])
    z = n * co * oh * ow * e
    return {"dram": k * x + z + c * co * e, "loads": co_blocks * 9 * k * n * c * oh * ow * e}


def costs(name: str, dtype: str, layout: str) -> list:
    """Per kernel of the classifier `name` (a training step and an inference at BATCH): calls per
    step, MB per image by the traffic model's fused count and by `kernel_bytes`, and the time
    that implies at each HBM bandwidth (a lower bound, not a measurement)."""
    config, (h, _), detection = NETWORKS[name]
    if detection:
        raise ValueError(f"the cost table is for the classifiers, not {name!r}")
    recorder = LaunchRecorder()
    launches([name], [dtype], [layout], recorder)
    counted = {}
    for train in (True, False):
        model = traffic.randwire_model(config, "triton")
        cl = layout == "channels_last"
        counted.update(
            traffic.traffic(model, BATCH, h, dtype, train, "fused", cl, details=True)["by_op"]
        )
    rows = []
    for op, kind in OPS.items():
        moved = [kernel_bytes(*c) for c in recorder.shapes if c[0] == kind]
        dram = sum(m["dram"] for m in moved) / BATCH
        loads = sum(m["loads"] for m in moved) / BATCH
        model_mb = counted.get(op, [0, 0])[1] / BATCH / 1e6
        row = [name, dtype, layout, kind, len(moved), f"{model_mb:.1f}", f"{dram / 1e6:.1f}"]
        rows.append(
            row + [f"{loads / 1e6:.0f}"] + [f"{dram / bw * 1e6:.1f}" for bw in BANDWIDTH.values()]
        )
    return rows


def summary(rows) -> str:
    """One row per (kernel, dtype, target): the worst variant on each measure."""
    groups = {}
    for r in rows:
        groups.setdefault((r["kernel"], r["call"][3], r["arch"]), []).append(r)
    head = ["kernel", "dtype", "target", "variants", "max registers", "max spill stores (B)"]
    head += ["max shared (KB)", "min warps/SM", "max compile (s)", "vector/all global loads (PTX)"]
    # fmt: off
    return bc.table(head + ["variants failing"], [
        [kernel, dtype, f"sm_{arch}", len(rs), max(r["registers"] for r in rs),
         max(r["spill_stores"] for r in rs), f"{max(r['shared'] for r in rs) / KB:.1f}",
         min(r["warps_per_sm"] for r in rs), f"{max(r['compile_s'] for r in rs):.1f}",
         f"{sum(r['vector_loads'] for r in rs)}/{sum(r['global_loads'] for r in rs)}",
         sum(bool(r["failures"]) for r in rs)]
        for (kernel, dtype, arch), rs in sorted(groups.items())
    ])
    # fmt: on


def fit(args) -> int:
    if args.what == "costs":
        head = ["network", "dtype", "layout", "kernel", "calls/step", "traffic model MB/img"]
        head += ["kernel DRAM MB/img", "kernel L1/L2 loads MB/img"]
        head += [f"us/img at {gpu} ({bw / 1e12:.2f} TB/s)" for gpu, bw in BANDWIDTH.items()]
        # fmt: off
        rows = [row for name in args.networks if not NETWORKS[name][2] for dtype in args.dtypes
                for layout in args.layouts for row in costs(name, dtype, layout)]
        # fmt: on
        print("Estimate from the spec-sheet HBM bandwidth, not a measurement (no GPU):")
        print(bc.table(head, rows))
        return 0
    calls = launches(args.networks, args.dtypes, args.layouts)
    variants = {}  # the same specialization from different calls compiles once
    for call in calls:
        for launch in bound_launches(call):  # bound once, here
            key = repr((*launch[:4], sorted(launch[4].items())))
            variants.setdefault(key, (call, launch))
    jobs = [(call, launch, arch) for call, launch in variants.values() for arch in args.targets]
    print(f"{len(calls)} launches of {args.networks}: {len(variants)} variants", flush=True)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", nargs="?", default="check", choices=["check", "fit", "costs"])
    p.add_argument("--dry-run", action="store_true", help="check: CPU, interpreter, tiny shapes")
    p.add_argument("--out", default=os.environ.get("OUT") or "output/gpu_kernels")
    p.add_argument("--batch", type=int, nargs="+", default=[128, 32], help="check: model batches")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="check: steps per timed round")
    p.add_argument("--budget", type=float, default=420, help="check: seconds before skipping")
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    p.add_argument("--targets", nargs="+", type=int, default=list(TARGETS), choices=TARGETS)
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), choices=range(1, 65))
    p.add_argument("--json", help="fit: write every variant's numbers to this file")
    args = p.parse_args(argv)
    return check(args) if args.what == "check" else fit(args)


if __name__ == "__main__":
    sys.exit(main())
