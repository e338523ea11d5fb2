#!/usr/bin/env python
"""The GPU check of the Triton node kernels: one command, under 8 minutes, one table last.

    python benchmarks/gpu_kernels.py [--out DIR]     # a CUDA machine (default DIR: $OUT, else
                                                     # output/gpu_kernels)
    python benchmarks/gpu_kernels.py --dry-run       # CPU: Triton's interpreter, tiny shapes

1. Correctness on fresh random inputs: each kernel against the eager ops at the node shapes of
   RandWire-C109 (C = 109, 218, 436, 872; in-degrees 1..8; stride 1 and 2; both layouts; bf16),
   and the whole C109 classifier with EXECUTION triton against EXECUTION reference (logits and
   gradients, bf16 autocast).
2. Each kernel's median time (`triton.testing.do_bench`) against the eager ops it replaces.
3. RandWire-C109 (EXECUTION eager and triton) against ResNet-50, training step (forward,
   cross-entropy, backward, SGD) and inference, bf16 autocast, batch 128 and 32, NCHW and
   channels_last, rounds interleaved in one process; img/s, the ratio to ResNet-50 in the same
   layout and batch, and the achieved bandwidth: img/s x bytes per image of the traffic model
   (benchmarks/traffic.py, eager granularity of that model's execution) over the GPU's measured
   copy bandwidth.

The dry run checks the plumbing on CPU (a C=8 model, 32 px, batch 2): it measures no speed.
Writes gpu_kernels.json and gpu_kernels.md to the output folder; the table is printed last.
"""

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch

DRY = "--dry-run" in sys.argv or not torch.cuda.is_available()
if DRY:  # Triton picks the interpreter when its kernels are defined: before randwire_d2 loads
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import randwire_d2  # noqa: E402,F401
from randwire_d2.config import load_config  # noqa: E402
from randwire_d2.modeling import kernels  # noqa: E402
from randwire_d2.modeling.classifier import ClassifierLogits  # noqa: E402
from randwire_d2.utils.tables import markdown_table  # noqa: E402

if __package__:  # python -m benchmarks.gpu_kernels
    from . import traffic
    from .bench_common import machine
else:  # python benchmarks/gpu_kernels.py: its folder is sys.path[0]
    import traffic
    from bench_common import machine

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
C109 = "configs/imagenet/randwire_ws_c109_regular.yaml"
# (stage, channels, size at 224 px) of C109's random stages; stride-2 nodes read the stage
# input (the previous stage's channels at twice the size).
STAGES = [("conv2", 109, 56, 54), ("conv3", 218, 28, 109), ("conv4", 436, 14, 218)]
STAGES += [("conv5", 872, 7, 436)]
TINY_STAGES = [("conv3", 8, 8, 4), ("conv4", 16, 4, 8)]


def now():
    if not DRY:
        torch.cuda.synchronize()
    return time.perf_counter()


def bench_ms(fn, reps=20) -> float:
    """Median milliseconds of fn(): triton.testing.do_bench on CUDA, wall clock on CPU."""
    if not DRY:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=5, rep=reps * 5, return_mode="median"))
    times = []
    for _ in range(3):
        t = now()
        fn()
        times.append((now() - t) * 1e3)
    return statistics.median(times)


def rel_err(got, want) -> float:
    got, want = got.float(), want.float()
    return ((got - want).norm() / (want.norm() + 1e-12)).item()


def node_case(k, channels, size, stride, layout, dtype, device, batch, seed):
    g = torch.Generator().manual_seed(seed)
    h = size * stride
    xs = [torch.randn(batch, channels, h, h, generator=g) for _ in range(k)]
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    xs = [x.to(device, dtype).contiguous(memory_format=fmt) for x in xs]
    coef = torch.rand(k, generator=g).to(device)
    dw = (torch.randn(channels, 1, 3, 3, generator=g) * 0.3).to(device)
    pw = (torch.randn(channels, channels, 1, 1, generator=g) / channels**0.5).to(device)
    bias = torch.randn(channels, generator=g).to(device)
    return xs, coef, dw, pw, bias


def check_kernels(args, device, dtype):
    """Max relative errors of every kernel output against the eager ops (float32 on the same
    rounded inputs), over in-degrees, strides, layouts and the stages' widths."""
    rows = []
    stages = TINY_STAGES if DRY else STAGES
    for name, channels, size, _ in stages:
        for stride in (1, 2):
            for layout in ("contiguous", "channels_last"):
                for k in (1, 2, 5, 8) if stride == 1 else (1,):
                    xs, coef, dw, pw, bias = node_case(
                        k, channels, size, stride, layout, dtype, device, 2, seed=k
                    )
                    xs = [x.requires_grad_() for x in xs]
                    c, w = coef.clone().requires_grad_(), dw.clone().requires_grad_()
                    d = kernels.agg_relu_dw(xs, c, w, stride)
                    g = torch.randn_like(d)
                    grads = torch.autograd.grad(d, xs + [c, w], g)
                    x32 = [x.detach().float().requires_grad_() for x in xs]
                    c2, w2 = coef.clone().requires_grad_(), dw.clone().requires_grad_()
                    d_ref = kernels.reference_agg_relu_dw(x32, c2, w2, stride)
                    grads_ref = torch.autograd.grad(d_ref, x32 + [c2, w2], g.float())
                    with torch.no_grad():
                        z = kernels.agg_relu_dw_pw(
                            [x.detach() for x in xs], coef, dw, pw, bias, stride
                        )
                        z_ref = F.conv2d(d_ref, pw, bias)
                    errs = [rel_err(d, d_ref), rel_err(z, z_ref)]
                    errs += [rel_err(a, b) for a, b in zip(grads, grads_ref)]
                    rows.append(
                        dict(
                            stage=name, C=channels, k=k, stride=stride, layout=layout, err=max(errs)
                        )
                    )
    worst = max(r["err"] for r in rows)
    return dict(cases=len(rows), max_rel_err=worst, ok=worst < args.tolerance, rows=rows)


def classifier(config, execution, device, tiny):
    cfg = load_config(os.path.join(ROOT, config), freeze=False)
    cfg.MODEL.DEVICE = str(device)
    cfg.MODEL.RANDWIRE.SEED = 1
    cfg.MODEL.RANDWIRE.EXECUTION = execution
    if tiny:
        cfg.MODEL.RANDWIRE.CHANNELS, cfg.MODEL.RANDWIRE.NUM_NODES = 8, 6
        cfg.MODEL.RANDWIRE.REGIME, cfg.MODEL.RANDWIRE.WS_K = "small", 2
        cfg.MODEL.CLASSIFIER.HEAD_CHANNELS, cfg.MODEL.CLASSIFIER.NUM_CLASSES = 16, 10
    torch.manual_seed(0)
    return ClassifierLogits(build_model(cfg), normalize=False).to(device)


def check_model(args, device, dtype):
    """C109 with EXECUTION triton vs reference: eval logits and training gradients."""
    ref = classifier(C109, "reference", device, DRY)
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
            loss = F.cross_entropy(m(x).float(), y)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    out["train_gradients"] = rel_err(grads[1], grads[0])
    out["ok"] = max(out.values()) < args.model_tolerance
    return out


def time_kernels(args, device, dtype):
    """Median ms of each kernel and of the eager ops it replaces, at C109's node shapes."""
    rows = []
    stages = TINY_STAGES if DRY else STAGES
    batch = 2 if DRY else args.batch[0]
    for name, channels, size, prev in stages:
        for layout in ("contiguous", "channels_last"):
            for k, stride in ((2, 1), (4, 1), (1, 2)):
                ch = prev if stride == 2 else channels
                xs, coef, dw, pw, bias = node_case(
                    k, ch, size, stride, layout, dtype, device, batch, 0
                )
                pw = pw[:, :ch] if stride == 2 else pw
                xg = [x.requires_grad_() for x in xs]
                d = kernels.agg_relu_dw(xg, coef, dw, stride)
                gd = torch.randn_like(d)
                d_eager = kernels.reference_agg_relu_dw(xg, coef, dw.requires_grad_(), stride)
                pw_c = pw.to(dtype)
                bias_c = bias.to(dtype)
                cases = {
                    "forward": (
                        lambda: kernels.agg_relu_dw(xs, coef, dw, stride),
                        lambda: kernels.reference_agg_relu_dw(xs, coef, dw, stride),
                    ),
                    "backward": (
                        lambda: kernels.agg_relu_dw_backward(gd, xs, coef, dw, stride),
                        lambda: torch.autograd.grad(d_eager, xg + [dw], gd, retain_graph=True),
                    ),
                    "inference": (
                        lambda: kernels.agg_relu_dw_pw(xs, coef, dw, pw, bias, stride),
                        lambda: F.conv2d(
                            kernels.reference_agg_relu_dw(xs, coef, dw, stride), pw_c, bias_c
                        ),
                    ),
                }
                for what, (fused, eager) in cases.items():
                    with torch.no_grad() if what != "backward" else torch.enable_grad():
                        t_fused, t_eager = bench_ms(fused), bench_ms(eager)
                    rows.append(
                        dict(stage=name, C=ch, k=k, stride=stride, layout=layout, op=what,
                             batch=batch, eager_ms=t_eager, kernel_ms=t_fused,
                             speedup=t_eager / t_fused)
                    )  # fmt: skip
    return rows


def copy_bandwidth(device) -> float:
    """Device-to-device copy bandwidth in GB/s (read + write), median of 5."""
    n = (1 << 20) if DRY else (1 << 30)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * n / (ms * 1e-3) / 1e9


def models_for(layout, device):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    out = {}
    for label, execution in (("randwire-eager", "eager"), ("randwire-triton", "triton")):
        out[label] = classifier(C109, execution, device, DRY)
    out["r50"] = torchvision.models.resnet50(num_classes=10 if DRY else 1000).to(device)
    return {k: m.to(memory_format=fmt) for k, m in out.items()}


def bytes_per_image(label, layout, train, size):
    """Eager-granularity bytes per image of the model (its own execution), on meta."""
    if label == "r50":
        m = torchvision.models.resnet50(num_classes=10 if DRY else 1000)
    else:
        m = classifier(C109, label.split("-")[1], torch.device("cpu"), DRY)
    r = traffic.traffic(m, batch=4, size=size, dtype="bf16", train=train,
                        channels_last=layout == "channels_last")  # fmt: skip
    return r["bytes_per_image"]


def time_models(args, device, dtype, bandwidth, deadline):
    size = 32 if DRY else 224
    rows = []
    for layout in ("contiguous", "channels_last"):
        models = models_for(layout, device)
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        for batch in [2] if DRY else args.batch:
            if time.time() > deadline:
                rows.append(dict(layout=layout, batch=batch, skipped="time budget spent"))
                continue
            x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
            y = torch.randint(0, 10, (batch,), device=device)
            opts = {
                k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in models.items()
            }

            def train_step(k):
                m = models[k].train()
                with torch.autocast(device.type, dtype=dtype, enabled=not DRY):
                    loss = F.cross_entropy(m(x).float(), y)
                loss.backward()
                opts[k].step()
                opts[k].zero_grad(set_to_none=True)

            def infer(k):
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=not DRY):
                    models[k].eval()(x)

            times = {(k, w): [] for k in models for w in ("train", "infer")}
            for k in models:  # warm-up: Triton compiles, cuDNN picks algorithms
                for _ in range(1 if DRY else 2):
                    train_step(k)
                    infer(k)
            steps = 1 if DRY else args.steps
            for _ in range(1 if DRY else args.rounds):  # rounds interleave the models
                for k in models:
                    for what, fn in (("train", train_step), ("infer", infer)):
                        t = now()
                        for _ in range(steps):
                            fn(k)
                        times[(k, what)].append(batch * steps / (now() - t))
            for k in models:
                for what in ("train", "infer"):
                    ips = statistics.median(times[(k, what)])
                    b = bytes_per_image(k, layout, what == "train", size)
                    rows.append(dict(layout=layout, batch=batch, model=k, what=what,
                                     img_s=ips, bytes_per_image=b, gb_s=ips * b / 1e9,
                                     bw_fraction=ips * b / 1e9 / bandwidth))  # fmt: skip
            for r in rows:
                if r.get("batch") == batch and r.get("layout") == layout and "img_s" in r:
                    base = [q for q in rows if q.get("model") == "r50" and q.get("what") == r["what"]
                            and q.get("batch") == batch and q.get("layout") == layout]  # fmt: skip
                    r["vs_r50"] = r["img_s"] / base[0]["img_s"]
        del models
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
            if "r50" in best:
                for m in ("randwire-triton", "randwire-eager"):
                    if m in best:
                        out[f"{m} {what} b{batch}"] = best[m] / best["r50"]
    return out


def markdown(result) -> str:
    model = "RandWire C=8 (tiny, dry run)" if DRY else "RandWire-C109"
    lines = [f"# Triton node kernels: {result['machine']}; {model} vs ResNet-50", ""]
    if DRY:
        lines += ["**Dry run on CPU (Triton's interpreter): no speed was measured.**", ""]
    ck, cm = result["kernel_check"], result["model_check"]
    lines += [
        f"Kernel correctness: {ck['cases']} cases, max relative error {ck['max_rel_err']:.2e} "
        f"({'ok' if ck['ok'] else 'FAILED'}, tolerance {result['tolerance']})",
        f"{model} triton vs reference ({'fp32' if DRY else 'bf16 autocast'}): eval logits {cm['eval_logits']:.2e}, training "
        f"gradients {cm['train_gradients']:.2e} ({'ok' if cm['ok'] else 'FAILED'})",
        f"Copy bandwidth: {result['copy_gb_s']:.0f} GB/s",
        "",
    ]
    header = ["stage", "C", "k", "stride", "layout", "op", "eager ms", "kernel ms", "speedup"]
    # fmt: off
    lines.append(markdown_table(header, [
        [r["stage"], r["C"], r["k"], r["stride"], r["layout"], r["op"], f"{r['eager_ms']:.3f}",
         f"{r['kernel_ms']:.3f}", f"{r['speedup']:.2f}"]
        for r in result["kernels"]
    ]))
    header = ["batch", "layout", "model", "step", "img/s", "x R50", "MB/img", "GB/s", "of copy bw"]
    lines += ["", markdown_table(header, [
        [r["batch"], r["layout"], f"skipped: {r['skipped']}"] if "img_s" not in r else
        [r["batch"], r["layout"], r["model"], r["what"], f"{r['img_s']:.0f}",
         f"{r.get('vs_r50', float('nan')):.2f}", f"{r['bytes_per_image'] / 1e6:.1f}",
         f"{r['gb_s']:.1f}", f"{100 * r['bw_fraction']:.0f}%"]
        for r in result["models"]
    ])]
    # fmt: on
    lines += ["", "Best layout of each model over ResNet-50's best (same batch):"]
    for k, v in result["best_layout_ratios"].items():
        lines.append(f"- {k}: {v:.2f}x")
    lines.append(f"\nTotal {result['seconds']:.0f} s.")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dry-run", action="store_true", help="CPU, interpreter, tiny shapes")
    p.add_argument("--out", default=os.environ.get("OUT") or "output/gpu_kernels")
    p.add_argument("--batch", type=int, nargs="+", default=[128, 32])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per timed round")
    p.add_argument("--budget", type=float, default=420, help="seconds before skipping")
    p.add_argument("--tolerance", type=float, default=2e-2, help="kernel check, relative")
    p.add_argument("--model-tolerance", type=float, default=5e-2)
    args = p.parse_args(argv)
    start = time.time()
    device = torch.device("cpu" if DRY else "cuda")
    dtype = torch.bfloat16
    torch.backends.cudnn.benchmark = True
    result = dict(machine=machine(device), dry_run=DRY, tolerance=args.tolerance)
    print("== kernel correctness", flush=True)
    result["kernel_check"] = check_kernels(args, device, dtype)
    print("== C109 triton vs reference", flush=True)
    result["model_check"] = check_model(args, device, dtype)
    print("== kernel times", flush=True)
    result["kernels"] = time_kernels(args, device, dtype)
    result["copy_gb_s"] = copy_bandwidth(device)
    print("== models", flush=True)
    result["models"] = time_models(args, device, dtype, result["copy_gb_s"], start + args.budget)
    result["best_layout_ratios"] = best_layout_ratios(result["models"])
    result["seconds"] = time.time() - start
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_kernels.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = markdown(result)
    with open(os.path.join(args.out, "gpu_kernels.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    ok = result["kernel_check"]["ok"] and result["model_check"]["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
