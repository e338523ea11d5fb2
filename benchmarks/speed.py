#!/usr/bin/env python
"""RandWire vs ResNet speed in one process, rounds interleaved, medians over rounds.

    python benchmarks/speed.py throughput --threads 2 --modes reference fast fast-lean --detector
    python benchmarks/speed.py throughput --device cuda --dtype bf16 --channels-last --batch 128
    python benchmarks/speed.py layouts --device cuda --batch 128      # NCHW/channels_last x dtypes
    python benchmarks/speed.py profile --threads 2 --modes reference fast
    python benchmarks/speed.py train-step --config-file CONFIG --iters 20 --warmup 5 KEY VALUE...
    python benchmarks/speed.py export --threads 1 --iters 20          # exported graphs, latency

throughput  inference (eval, no_grad) and training step (SGD) img/s, ÷ ResNet-50 in the same
            round; training MiB/img (CUDA: peak slope, --batch to 2x; CPU: peak-RSS slope over
            --memory-batches); CUDA: GB/s of the traffic model; --detector: FPN backbones.
layouts     (model, layout, --dtypes) ÷ ResNet-50 alike, and the fastest training layout/dtype.
profile     one training step by kind of op (torch.profiler; idle gaps), the SGD step alone.
train-step  tools/train_cls.py's step end-to-end vs model-only (one batch repeated); --compare
            KEY A B also compares losses (--loss-tol: exit 1 beyond). KEY VALUE: overrides.
export      op counts traced "reference" / "fast" / "export", eager vs onnxruntime latency.
--modes: reference, fast (default), eager (no Triton), triton, fast-lean (MEMORY_EFFICIENT),
fast-min (+ RECOMPUTE_CONVS), fast-nofold (norms not folded), compiled (torch.compile).
"""

import argparse
import collections
import copy
import datetime
import gc
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types

import torch
from torch.profiler import ProfilerActivity, profile

from randwire_d2.modeling.execution_path import choose_execution
from randwire_d2.utils.args import bounded_int

if __package__:  # python -m benchmarks.speed, or imported
    from . import bench_common as bc
    from .traffic import traffic
else:  # python benchmarks/speed.py: its folder is sys.path[0]
    import bench_common as bc
    from traffic import traffic


# ---------------------------------------------------------------------------------------------
# throughput


def make_bench(name: str, mode: str, args) -> bc.Bench:
    torch.manual_seed(0)
    label = name + (" compiled" if mode == "compiled" else "") if name in bc.RESNETS else ""
    bench = bc.Bench(
        label or f"{name} {mode}", bc.build(name, mode, args.device), args.device, args.dtype,
        args.channels_last, compiled=mode == "compiled",
    )  # fmt: skip
    bench.spec = (name, mode)
    return bench


def memory_child(spec: str, batch: int, args) -> None:
    bench = make_bench(*spec.split(":"), args)
    x = bench.inputs(batch, (args.size, args.size))
    for _ in range(2):
        bench.train_step(x)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)


def cpu_memory_per_image_mib(spec: str, args) -> float:
    """Slope of the peak RSS (MiB) of two training steps at --memory-batches, each in a fresh
    process (a fork would inherit this one's peak and its OpenMP threads)."""
    peaks, opts = [], f"--device {args.device} --dtype {args.dtype} --size {args.size}".split()
    opts += (["--channels-last"] if args.channels_last else []) + (
        ["--threads", str(args.threads)] if args.threads else []
    )
    for batch in args.memory_batches:
        cmd = [sys.executable, os.path.abspath(__file__), "throughput", "--memory-child", spec]
        out = subprocess.run(cmd + [str(batch)] + opts, check=True, capture_output=True, text=True)
        peaks.append(float(out.stdout.strip().splitlines()[-1]))
    b1, b2 = args.memory_batches
    return (peaks[1] - peaks[0]) / (b2 - b1)


def cuda_memory_per_image_mib(bench: bc.Bench, args) -> float:
    """max_memory_allocated of one training step, slope between --batch and twice it."""
    peaks = []
    for b in (args.batch, 2 * args.batch):
        x = bench.inputs(b, (args.size, args.size))
        bench.train_step(x)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        bench.train_step(x)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
        del x
    return (peaks[1] - peaks[0]) / args.batch / 2**20


def fast_runs_kernels(device: str) -> bool:
    """Whether EXECUTION fast runs the Triton node kernels on `device`."""
    return bool(choose_execution("fast", device).kernels)


def traffic_per_image(name: str, mode: str, args, train: bool) -> float:
    """Bytes per image of the eager traffic model of (model, mode) on meta at --batch, --size,
    --dtype (cast), --channels-last; a fast mode is counted with the Triton kernels where
    EXECUTION fast runs them on --device."""
    module = bc.build(name, mode, "meta")
    if name in bc.RANDWIRE and bc.MODES[mode][0] == "fast" and fast_runs_kernels(args.device):
        for m in module.modules():
            if hasattr(m, "set_execution") and hasattr(m, "plan"):  # a wired stage
                m.set_execution("triton")
    counted = traffic(module, args.batch, args.size, args.dtype, train, "eager", args.channels_last)
    return counted["bytes_per_image"]


def speed_table(rows, base: str, memory=False, keys={"model": "model"}) -> str:
    header = [*keys, "inference img/s", f"÷ {base}", "training img/s", f"÷ {base}"]
    header += ["training MiB/img", f"÷ {base}"] if memory else []
    # fmt: off
    return bc.table(header, [
        [r[k] for k in keys.values()] + [f"{r['infer_ips']:.3g}", f"{r['infer_ratio']:.2f}",
                                f"{r['train_ips']:.3g}", f"{r['train_ratio']:.2f}"]
        + ([f"{r['mem_mib']:.0f}", f"{r['mem_ratio']:.2f}"] if memory else [])
        for r in rows
    ])
    # fmt: on


def timed_rows(benches, baseline, args, size, batch, memory=None):
    bc.interleaved(
        benches, {b.name: b.inputs(batch, size) for b in benches}, args.rounds, args.warmup
    )
    return bc.medians(benches, baseline, batch, memory)


def throughput(args):
    if args.memory_child:
        return memory_child(args.memory_child[0], int(args.memory_child[1]), args)
    args.models += ["r50"] * ("r50" not in args.models)  # every ratio is to ResNet-50's
    compiled = ["compiled"] if "compiled" in args.modes else []
    modes = {n: ["eager"] + compiled if n in bc.RESNETS else args.modes for n in args.models}
    specs = [(n, m) for n in args.models for m in modes[n]]
    memory = {}
    if args.memory != "none" and args.device == "cpu":  # fresh processes: nothing built here yet
        for name, mode in specs:
            if name not in bc.RESNETS or mode == "eager":
                print(f"memory {name} {mode}", file=sys.stderr, flush=True)
                label = name if name in bc.RESNETS else f"{name} {mode}"
                memory[label] = cpu_memory_per_image_mib(f"{name}:{mode}", args)
    benches = [make_bench(name, mode, args) for name, mode in specs]
    baseline = {b.name: "r50 compiled" if b.spec[1] == "compiled" else "r50" for b in benches}
    if args.memory != "none" and args.device == "cuda":
        memory = {b.name: cuda_memory_per_image_mib(b, args) for b in benches}
    host = bc.machine(args.device)
    print(
        f"# {host}; batch {args.batch}, {args.size}x{args.size}, {args.dtype}, "
        f"{'channels_last' if args.channels_last else 'NCHW'}, {args.rounds} rounds, medians"
    )
    rows = timed_rows(benches, baseline, args, (args.size, args.size), args.batch, memory)
    print(speed_table(rows, "ResNet-50", bool(memory)))
    out = {"classifiers": rows}
    if args.device == "cuda":
        out["copy_gbs"] = copy_gbs = bc.copy_bandwidth_gbs()
        for row, bench in zip(rows, benches):
            for what, train in (("infer", False), ("train", True)):
                nbytes = traffic_per_image(*bench.spec, args, train)
                row[f"{what}_mb_per_img"] = nbytes / 1e6
                row[f"{what}_gbs"] = row[f"{what}_ips"] * nbytes / 1e9
                row[f"{what}_copy_frac"] = row[f"{what}_gbs"] / copy_gbs
        kernels = "with" if fast_runs_kernels(args.device) else "without"
        print(
            f"\n# achieved bandwidth: img/s x eager traffic model bytes/img (MB = 1e6; EXECUTION "
            f"fast counted {kernels} the Triton node kernels, as it runs here); device-to-device "
            f"copy {copy_gbs:.0f} GB/s"
        )
        header = ["model", "inference MB/img", "GB/s", "of copy", "training MB/img", "GB/s"]
        # fmt: off
        print(bc.table(header + ["of copy"], [
            [r["model"], f"{r['infer_mb_per_img']:.0f}", f"{r['infer_gbs']:.0f}",
             f"{r['infer_copy_frac']:.0%}", f"{r['train_mb_per_img']:.0f}",
             f"{r['train_gbs']:.0f}", f"{r['train_copy_frac']:.0%}"]
            for r in rows
        ]))
        # fmt: on
    else:
        print("\n# achieved GB/s (img/s x traffic model bytes/img): CUDA only, skipped on CPU")
    if args.detector:
        dets = []
        for name, config in DETECTORS:
            for mode in [m for m in args.modes if m != "compiled"] if "rw" in name else ["-"]:
                cfg = bc.load_config(os.path.join(bc.ROOT, config), ["MODEL.DEVICE", args.device])
                module = bc.build_model(cfg).backbone
                if mode != "-":
                    nofold = mode == "fast-nofold"
                    module.bottom_up.set_execution(*bc.MODES[mode], fold_norms=not nofold)
                label = name if mode == "-" else f"{name} {mode}"
                dets.append(bc.Bench(label, module, args.device, args.dtype, args.channels_last))
        print(
            "\n# detector backbones (FPN included), batch 2, 800x1344 (800x1333 padded), "
            "FrozenBN trunks as configured"
        )
        drows = timed_rows(dets, {b.name: "r50-fpn" for b in dets}, args, (800, 1344), 2)
        print(speed_table(drows, "R-50-FPN"))
        out["detector_backbones"] = drows
    return dump(args, {"machine": host, **out})


DETECTORS = (("rw-c109-fpn", "configs/faster_rcnn_randwire_c109_fpn_1x.yaml"),)
DETECTORS += (("r50-fpn", "configs/faster_rcnn_R_50_FPN_1x.yaml"),)


def dump(args, out: dict) -> dict:
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), **out}, f, indent=1)
    return out


# ---------------------------------------------------------------------------------------------
# layouts

LAYOUTS = {"nchw": "NCHW", "channels_last": "channels_last"}


def fastest_lines(rows) -> list:
    """One line per RandWire model (C109 first): its fastest training layout and dtype."""
    lines = []
    for name in sorted({r["name"] for r in rows} & set(bc.RANDWIRE), key=lambda n: n != "rw-c109"):
        mine = sorted((r for r in rows if r["name"] == name), key=lambda r: -r["train_ips"])
        best = mine[0]
        rest = "; ".join(f"{r['layout']} {r['dtype']} {r['train_ips']:.3g} img/s" for r in mine[1:])
        lines.append(
            f"fastest {name} training: {best['layout']} {best['dtype']} "
            f"({best['train_ips']:.3g} img/s, {best['train_ratio']:.2f}x ResNet-50)"
            + (f"; then {rest}" if rest else "")
        )
    return lines


def layouts(args):
    args.dtypes = args.dtypes or (["bf16", "fp16"] if args.device == "cuda" else ["fp32"])
    args.models += ["r50"] * ("r50" not in args.models)  # ratios: to ResNet-50 in the same layout
    benches, baseline = [], {}
    for name in args.models:
        for layout in LAYOUTS:
            for dtype in args.dtypes:
                torch.manual_seed(0)
                module = bc.build(name, args.modes[0], args.device)
                label = f"{name} {LAYOUTS[layout]} {dtype}"
                cl = layout == "channels_last"
                benches.append(bc.Bench(label, module, args.device, dtype, cl))
                baseline[label] = f"r50 {LAYOUTS[layout]} {dtype}"
    rows = timed_rows(benches, baseline, args, (args.size, args.size), args.batch)
    for row in rows:
        row["name"], row["layout"], row["dtype"] = row["model"].split(" ")
    date, host = datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), bc.machine(args.device)
    print(
        f"# {host}, {date}; batch {args.batch}, {args.size}x{args.size}, RandWire "
        f"EXECUTION {args.modes[0]}, {args.rounds} rounds interleaved, medians"
    )
    print(
        speed_table(rows, "ResNet-50", keys={"model": "name", "layout": "layout", "dtype": "dtype"})
    )
    fastest = fastest_lines(rows)
    print("\n".join(fastest))
    dump(args, {"machine": host, "date": date, "rows": rows, "fastest": fastest})
    return rows


# ---------------------------------------------------------------------------------------------
# profile: each kernel (CUDA) or op's self time (CPU) is charged to a category by the op that
# launched it and that op's callers (`categorize`).

IDLE = "idle gaps"
CATEGORIES = (
    "depthwise conv forward", "depthwise conv backward", "pointwise conv forward",
    "pointwise conv backward", "other conv forward", "other conv backward", "BN forward",
    "BN backward", "fused node kernels forward", "fused node kernels backward", "elementwise",
    "optimizer", "other", IDLE,
)  # fmt: skip
# Elementwise aten ops (names without "aten::" and the in-place "_").
ELEMENTWISE = {
    "abs", "add", "addcdiv", "addcmul", "cat", "clamp", "clamp_min", "clone", "contiguous",
    "copy", "div", "exp", "fill", "gelu", "gelu_backward", "hardtanh", "lerp", "masked_fill",
    "maximum", "minimum", "mul", "neg", "pow", "reciprocal", "relu", "rsqrt", "sigmoid",
    "sigmoid_backward", "silu", "sqrt", "sub", "threshold", "threshold_backward", "to",
    "_to_copy", "where", "zero", "zeros", "zeros_like", "ones_like", "full", "full_like",
}  # fmt: skip
# Names, lower-cased, of kernels whose launching op was not recorded.
ELEMENTWISE_KERNELS = ("elementwise", "vectorized", "unrolled", "memcpy", "memset", "fill")


def conv_kind(weight, in_channels) -> str:
    """depthwise (groups == in_channels: weight [C, 1, 3, 3]), pointwise (1x1), other."""
    if weight[1] == 1 and list(weight[2:]) == [3, 3] and (in_channels or 2) > 1:
        return "depthwise"
    return "pointwise" if list(weight[2:]) == [1, 1] else "other"


def categorize(name: str, chain) -> str:
    """The category of a kernel (or CPU op) `name` whose launching op and that op's callers are
    `chain`, innermost first, each (op name, recorded input shapes)."""
    ops = [op for op, _ in chain]
    if any(op.startswith("Optimizer.") for op in ops):
        return "optimizer"
    fused = [op for op in ops if op.startswith("randwire::") and "agg_relu_dw" in op]
    if fused or (not ops and "agg_relu_dw" in name):
        backward = "backward" in (fused[0] if fused else "") or "bwd" in name
        return "fused node kernels " + ("backward" if backward else "forward")
    if ops and ops[0].split("::")[-1].rstrip("_") in ELEMENTWISE:
        return "elementwise"
    convs = [
        (op, shapes)
        for op, shapes in chain
        if "conv" in op.lower() and ("::" in op or op.endswith("Backward0"))
    ]
    for op, shapes in convs:  # the weight shape: input 1 of a forward conv, 2 of a backward
        backward = "backward" in op.lower()
        w, x = (2, 1) if backward else (1, 0)
        if len(shapes) > w and len(shapes[w]) == 4:
            channels = shapes[x][1] if len(shapes[x]) == 4 else None
            return f"{conv_kind(shapes[w], channels)} conv {'backward' if backward else 'forward'}"
    if convs:
        backward = any("backward" in op.lower() for op, _ in convs)
        return "other conv " + ("backward" if backward else "forward")
    norms = [op for op in ops if "batchnorm" in op.lower().replace("_", "")]
    if norms:
        return "BN " + ("backward" if "backward" in norms[0].lower() else "forward")
    if not ops and any(k in name.lower() for k in ELEMENTWISE_KERNELS):
        return "elementwise"
    return "other"


def busy_time(intervals) -> float:
    """Length of the union of (start, end) intervals."""
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total, end = total + b - a, b
        elif b > end:
            total, end = total + b - end, b
    return total


def summarize(items, wall: float, busy=None) -> dict:
    """{category: {"time", "share", "count"}} of (name, chain, time) items over a step of
    `wall` time, with IDLE = wall - busy (busy: the items' summed time unless given)."""
    times, counts = collections.Counter(), collections.Counter()
    for name, chain, t in items:
        c = categorize(name, chain)
        times[c] += t
        counts[c] += 1
    times[IDLE] = max(0.0, wall - (sum(times.values()) if busy is None else busy))
    return {
        c: {"time": times[c], "share": times[c] / wall if wall > 0 else 0.0, "count": counts[c]}
        for c in CATEGORIES
        if times[c] > 0 or c == IDLE
    }


def chain_of(event) -> list:
    """The event's (name, input shapes) and its callers'; an autograd wrapper's starts at the
    aten op it calls."""
    if "::" not in event.name or event.name.startswith("autograd::"):
        child = _first_aten_child(event)
        event = child if child is not None else event
    chain = []
    while event is not None:
        chain.append((event.name, event.input_shapes or []))
        event = event.cpu_parent
    return chain


def _first_aten_child(event, depth: int = 3):
    for child in event.cpu_children:
        if child.name.startswith("aten::"):
            return child
        if depth > 1 and not child.name.startswith("Optimizer."):
            found = _first_aten_child(child, depth - 1)
            if found is not None:
                return found
    return None


def profiled_items(prof, cuda: bool):
    """(items, busy us): on CUDA each kernel (name, chain of its launching op, duration us) and
    the union of the device's kernel intervals; on CPU each op's self time (busy None)."""
    from torch.autograd import DeviceType

    events, items = prof.events(), []
    if not cuda:
        for e in events:
            if e.device_type == DeviceType.CPU and not e.is_async and e.self_cpu_time_total > 0:
                items.append((e.name, chain_of(e), e.self_cpu_time_total))
        return items, None
    launchers = set()
    for e in events:
        if e.device_type == DeviceType.CPU and e.kernels:
            launchers.add(e.id)
            items += [(k.name, chain_of(e), k.duration) for k in e.kernels]
    device = [e for e in events if e.device_type == DeviceType.CUDA]
    # Kernels launched outside any recorded op: by their own names (categorize's fallback).
    if device and hasattr(device[0], "linked_correlation_id"):
        for e in device:
            if e.linked_correlation_id not in launchers:
                items.append((e.name, [], e.time_range.elapsed_us()))
    else:  # a torch without the link: what the ops do not account for, as one item
        rest = sum(e.time_range.elapsed_us() for e in device) - sum(t for *_, t in items)
        if rest > 0:
            items.append(("kernels without a recorded launching op", [], rest))
    return items, busy_time((e.time_range.start, e.time_range.end) for e in device)


def optimizer_step_seconds(bench, x) -> float:
    """The SGD step alone, after a forward and backward."""
    bench.module.train()
    with bench.autocast():
        bench.loss(bench.module(x)).backward()
    t = bc.timed(bench.opt.step, bench.device)
    bench.opt.zero_grad(set_to_none=True)
    return t


def profile_model(bench, x, args) -> dict:
    cuda = args.device == "cuda"
    for _ in range(2):
        bench.train_step(x)
    wall = statistics.median(
        bc.timed(lambda: bench.train_step(x), args.device) for _ in range(args.steps)
    )
    opt = statistics.median(optimizer_step_seconds(bench, x) for _ in range(args.steps))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        bench.train_step(x)
        bc.sync(args.device)
    items, busy = profiled_items(prof, cuda)
    rows = summarize(items, wall * 1e6, busy)
    per_op = collections.Counter()
    for name, chain, t in items:
        per_op[(chain[0][0] if chain else name)[:70]] += t
    busy_ms = (busy if busy is not None else sum(t for *_, t in items)) / 1e3
    return dict(model=bench.name, wall_ms=wall * 1e3, busy_ms=busy_ms, optimizer_step_ms=opt * 1e3,
                categories={c: {**r, "time": r["time"] / 1e3} for c, r in rows.items()},
                top_ops=[(n, t / 1e3) for n, t in per_op.most_common(8)])  # fmt: skip


def profile_steps(args):
    results, host = [], bc.machine(args.device)
    print(f"# {host}")
    clock, count = ("device kernel", "kernels") if args.device == "cuda" else ("CPU op self", "ops")
    for name in args.models:
        for mode in ["eager"] if name in bc.RESNETS else args.modes:
            bench = make_bench(name, mode, args)
            r = profile_model(bench, bench.inputs(args.batch, (args.size, args.size)), args)
            results.append(r)
            print(
                f"\n## {r['model']}: one training step, batch {args.batch}, {args.dtype}, "
                f"{'channels_last' if args.channels_last else 'NCHW'}: {r['wall_ms']:.1f} ms "
                f"wall (median of {args.steps}), {r['busy_ms']:.1f} ms of {clock} time"
            )
            # fmt: off
            print(bc.table(["category", "ms", "share of step", count], [
                [c, f"{v['time']:.2f}", f"{100 * v['share']:.1f}%", v["count"]]
                for c, v in r["categories"].items()
            ]))
            # fmt: on
            print(f"SGD step timed alone: {r['optimizer_step_ms']:.2f} ms")
            print("top ops: " + "; ".join(f"{n} {t:.2f} ms" for n, t in r["top_ops"]), flush=True)
            del bench
    dump(args, {"machine": host, "results": results})
    return results


# ---------------------------------------------------------------------------------------------
# train-step

RUNS = {"e2e": "end-to-end", "model": "model-only"}


def model_only_trainer():
    from randwire_d2.engine import ClassificationTrainer

    class ModelOnlyTrainer(ClassificationTrainer):
        """The trainer whose loader yields the real loader's first batch at every step."""

        @classmethod
        def build_train_loader(cls, cfg, start_iter: int = 0, seed=None):
            batches = iter(super().build_train_loader(cfg, start_iter, seed))
            first = next(batches)
            del batches  # the workers stop
            return iter(lambda: first, None)

    return ModelOnlyTrainer


def latest_loss(trainer) -> float:
    """The total loss the trainer recorded at its current iteration (nan if none)."""
    values = getattr(trainer.storage.histories().get("total_loss"), "values", list)()
    value, it = values[-1] if values else (math.nan, -1)
    return float(value) if it == trainer.iter else math.nan


def measure_training(cfg, run: str, iters: int, warmup: int) -> dict:
    """Train cfg.SOLVER.MAX_ITER (= warmup + iters) iterations of one run, each step timed."""
    from detectron2.engine import hooks
    from detectron2.utils.env import seed_all_rng

    from randwire_d2.engine import ClassificationTrainer
    from randwire_d2.engine.trainer import release_output_dir

    seed_all_rng(cfg.SEED)  # as default_setup does: every run starts from the same weights
    start = time.perf_counter()
    trainer = (model_only_trainer() if run == "model" else ClassificationTrainer)(cfg)
    trainer.resume_or_load(resume=False)
    bc.sync(cfg.MODEL.DEVICE)
    build_s = time.perf_counter() - start
    # Checkpoints and evaluation are not part of a training step.
    skip = (hooks.EvalHook, hooks.PeriodicCheckpointer)
    trainer._hooks = [h for h in trainer._hooks if not isinstance(h, skip)]
    times, losses, step = [], [], trainer.run_step

    def timed_step():
        times.append(bc.timed(step, cfg.MODEL.DEVICE))
        losses.append(latest_loss(trainer))

    trainer.run_step = timed_step
    try:
        trainer.train()
    finally:
        release_output_dir(cfg.OUTPUT_DIR)
    metrics = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
    if os.path.exists(metrics):  # kept per run
        os.replace(metrics, os.path.join(cfg.OUTPUT_DIR, f"metrics_{run}.json"))
    del trainer, step, timed_step
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    step_s = statistics.median(times[warmup:] or times[-1:])
    out = dict(run=RUNS[run], img_per_s=cfg.SOLVER.IMS_PER_BATCH / step_s, step_ms=1e3 * step_s)
    return out | dict(warmup_s=sum(times[:warmup]), build_s=build_s, step_s=times, losses=losses)


def compare_runs(rows, variants, args) -> dict:
    """Per run: B's img/s ÷ A's, warm-up seconds, loss differences (and `within_tol`)."""
    key, a, b = args.compare
    out = {}
    for run in map(RUNS.get, args.runs):
        ra, rb = ([r for r in rows if (r["variant"], r["run"]) == (v, run)][0] for v, _ in variants)
        pairs = [p for p in zip(ra["losses"], rb["losses"]) if not any(map(math.isnan, p))]
        diffs = [abs(x - y) for x, y in pairs]
        rel = [d / max(abs(x), abs(y), 1e-12) for d, (x, y) in zip(diffs, pairs)]
        cmp = {"iterations": len(pairs), "max_abs": max(diffs, default=math.nan)}
        cmp["max_rel"] = max(rel, default=math.nan)
        cmp["speed_ratio"] = rb["img_per_s"] / ra["img_per_s"]
        cmp["warmup_s"] = {a: ra["warmup_s"], b: rb["warmup_s"]}
        within = ""
        if args.loss_tol is not None:
            cmp["within_tol"] = cmp["iterations"] > 0 and cmp["max_rel"] <= args.loss_tol
            within = f", within {args.loss_tol:g}: {'yes' if cmp['within_tol'] else 'NO'}"
        out[run] = cmp
        print(
            f"{run}: {key} {b or repr(b)} ÷ {a or repr(a)} {cmp['speed_ratio']:.2f} (img/s); "
            f"warm-up {rb['warmup_s']:.1f} s vs {ra['warmup_s']:.1f} s; losses of "
            f"{cmp['iterations']} iterations: max |Δ| {cmp['max_abs']:.3g}, relative "
            f"{cmp['max_rel']:.3g}{within}"
        )
    return out


def train_step(args) -> int:
    from randwire_d2.engine import pretrain
    from randwire_d2.engine.trainer import release_output_dir

    if not args.config_file:
        raise SystemExit("train-step: --config-file is required")
    opts, keys = list(args.opts), args.opts[::2]
    temporary = "OUTPUT_DIR" not in keys
    if temporary:
        output_dir = tempfile.mkdtemp(prefix="train_step_")
    else:
        i = 2 * keys.index("OUTPUT_DIR")
        output_dir, opts = opts[i + 1], opts[:i] + opts[i + 2 :]
    opts += ["SOLVER.MAX_ITER", str(args.warmup + args.iters)]
    variants = [("", [])]
    if args.compare:
        key, a, b = args.compare
        variants = [(f"{key}={v or repr(v)}", [key, v]) for v in (a, b)]
    rows = []
    try:
        for label, extra in variants:
            argv = ["--config-file", args.config_file, *opts, *extra, "OUTPUT_DIR", output_dir]
            cfg = pretrain.setup(pretrain.build_parser().parse_args(argv)).cfg
            release_output_dir(cfg.OUTPUT_DIR)  # each trainer claims it for its run
            for run in args.runs:
                print(f"== {label} {RUNS[run]}".strip(), file=sys.stderr, flush=True)
                rows.append(
                    {"variant": label, **measure_training(cfg, run, args.iters, args.warmup)}
                )
    finally:
        if temporary:
            shutil.rmtree(output_dir, ignore_errors=True)
    date, host = datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), bc.machine(cfg.MODEL.DEVICE)
    print(
        f"\n# {host}, {date}; {args.config_file}, batch {cfg.SOLVER.IMS_PER_BATCH}, {args.iters} "
        f"timed iterations after {args.warmup} warm-up; overrides: {' '.join(args.opts) or '-'}"
    )
    header = ["run", "img/s (median)", "step ms (median)", "warm-up s", "build s"]
    # fmt: off
    print(bc.table(header, [
        [f"{r['variant']} {r['run']}".strip(), f"{r['img_per_s']:.4g}", f"{r['step_ms']:.1f}",
         f"{r['warmup_s']:.2f}", f"{r['build_s']:.2f}"]
        for r in rows
    ]))
    # fmt: on
    out = dict(machine=host, date=date, config=args.config_file, opts=args.opts, runs=rows)
    out.update(batch=cfg.SOLVER.IMS_PER_BATCH, iters=args.iters, warmup=args.warmup, ratios={})
    for label, _ in variants:
        by_run = {r["run"]: r for r in rows if r["variant"] == label}
        if len(by_run) == 2:
            ratio = by_run["end-to-end"]["img_per_s"] / by_run["model-only"]["img_per_s"]
            out["ratios"][f"{label} end-to-end/model-only".strip()] = ratio
            print(f"{label} end-to-end ÷ model-only: {ratio:.2f}".strip())
    if args.compare:
        out["compare"] = compare_runs(rows, variants, args)
    dump(args, out)
    return 1 if any(not c.get("within_tol", True) for c in out.get("compare", {}).values()) else 0


# ---------------------------------------------------------------------------------------------
# export

EXPORT_CONFIGS = ["configs/demo/randwire_cls_demo.yaml", bc.RANDWIRE["rw-c109"]]
FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript", "pt2": "torch.export"}
FORMATS = list(FORMAT_NAMES)


def Call(name, fn):  # a function timed by bc.interleaved as a Bench's inference
    return types.SimpleNamespace(name=name, device="cpu", infer=fn, times={"infer": []})


def export_latency(args):
    from randwire_d2 import export as rx
    from randwire_d2.export.compare import _variant
    from randwire_d2.utils.quiet_warnings import quiet_export_warnings

    results, warmup = [], 3
    for config in args.configs:
        cfg = bc.load_config(config, ["MODEL.DEVICE", "cpu"])
        model, size = bc.build_model(cfg).eval(), args.size or cfg.PRETRAIN.TEST_CROPS[0]
        x = rx.classifier_samples(size, args.batch, 1)[0]
        start = time.perf_counter()
        counts = rx.op_counts(model, rx.ClassifierExport, (x,), FORMATS)
        print(f"{config}: traced in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        with quiet_export_warnings(), tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            calls = [
                Call(f"eager {e}", rx.ClassifierExport(_variant(model, e)).eval())
                for e in rx.EXECUTIONS_COMPARED
            ]
            path = os.path.join(tmp, "model.onnx")
            rx.export_onnx(calls[-1].infer, (x,), path, ["images"])
            session = rx.onnx_session(path)
            feed = {session.get_inputs()[0].name: x.cpu().numpy()}
            calls.append(Call("onnxruntime", lambda _x: session.run(None, feed)))
            bc.interleaved(
                calls, {c.name: x for c in calls}, warmup + args.iters, 0, order=["infer"]
            )
        ms = {c.name: 1e3 * statistics.median(c.times["infer"][warmup:]) for c in calls}
        results.append({"config": config, "size": size, "counts": counts, "ms": ms})
    print(
        f"Machine: {bc.machine()}; batch {args.batch}, median of {args.iters} interleaved runs.\n"
    )
    ways = " / ".join(rx.EXECUTIONS_COMPARED)
    header = ["config", "input"] + [f"{FORMAT_NAMES[f]} ops ({ways})" for f in FORMATS]
    names = list(results[0]["ms"])
    # fmt: off
    print(bc.table(header, [
        [os.path.basename(r["config"]), f"{r['size']}x{r['size']}"]
        + [" / ".join(str(r["counts"][e][f]) for e in rx.EXECUTIONS_COMPARED) for f in FORMATS]
        for r in results
    ]) + "\n")
    header = ["config", "input"] + [f"{n} (ms)" for n in names] + ["eager fast / onnxruntime"]
    print(bc.table(header, [
        [os.path.basename(r["config"]), f"{r['size']}x{r['size']}"]
        + [f"{r['ms'][n]:.2f}" for n in names]
        + [f"{r['ms']['eager fast'] / r['ms']['onnxruntime']:.2f}x"]
        for r in results
    ]))
    # fmt: on
    return dump(args, {"machine": bc.machine(), "results": results})


# ---------------------------------------------------------------------------------------------

WHAT = {"throughput": throughput, "layouts": layouts, "profile": profile_steps}
WHAT.update({"train-step": train_step, "export": export_latency})
DEFAULTS = {  # options whose default depends on what is measured
    "throughput": dict(batch=16, models=["rw-c109", "r50"], modes=["reference", "fast"]),
    "layouts": dict(batch=128, models=["rw-c78", "rw-c109", "rw-c154", "r50"], modes=["fast"]),
    "profile": dict(batch=16, models=["rw-c109", "r50"], modes=["reference", "fast"]),
    "train-step": dict(warmup=5),
    "export": dict(batch=1, size=0),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=list(WHAT), help="what to measure")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cpu (layouts: cuda if any)")
    p.add_argument("--batch", type=bounded_int(1, 4096), help="default by mode: 16/128/1")
    p.add_argument("--size", type=bounded_int(0, 4096), default=None, help="input side (224)")
    p.add_argument("--threads", type=bounded_int(1, 1024), help="torch (and onnxruntime) threads")
    p.add_argument("--dtype", default="fp32", choices=list(bc.DTYPES), help="autocast dtype")
    p.add_argument("--dtypes", nargs="+", choices=list(bc.DTYPES), help="layouts' dtypes")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--models", nargs="+", choices=sorted(bc.RANDWIRE) + sorted(bc.RESNETS))
    p.add_argument("--modes", nargs="+", choices=sorted(bc.MODES), help="RandWire executions")
    p.add_argument("--rounds", type=bounded_int(1, 1000), default=3)
    p.add_argument("--warmup", type=bounded_int(0, 100_000), help="untimed steps first (1; 5)")
    p.add_argument("--memory", default="auto", choices=["auto", "none"], help="throughput")
    p.add_argument("--memory-batches", type=int, nargs=2, default=[8, 24], help="CPU memory")
    p.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--detector", action="store_true", help="also RandWire-C109-FPN vs R-50-FPN")
    p.add_argument("--steps", type=int, default=3, help="profile: unprofiled steps timed")
    p.add_argument("--config-file", help="train-step: a classification config")
    p.add_argument("--iters", type=bounded_int(1, 100_000), default=20, help="timed iterations")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS), help="train-step")
    p.add_argument("--compare", nargs=3, metavar=("KEY", "A", "B"), help="train-step: KEY A vs B")
    p.add_argument("--loss-tol", type=float, help="--compare: largest relative loss difference")
    p.add_argument("--configs", nargs="+", default=EXPORT_CONFIGS, help="export: classifiers")
    p.add_argument("--json", default="", help="write the results to this file")
    return p


def main(argv=None):
    p = build_parser()
    args, args.opts = p.parse_known_args(argv)
    if args.opts and args.what != "train-step":
        p.error(f"unrecognized arguments: {' '.join(args.opts)}")
    cuda = args.what == "layouts" and torch.cuda.is_available()
    defaults = dict(device="cuda" if cuda else "cpu", size=224, warmup=1) | DEFAULTS[args.what]
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    return WHAT[args.what](args)


if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
