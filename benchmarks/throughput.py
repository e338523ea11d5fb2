#!/usr/bin/env python
"""RandWire vs ResNet speed and training memory, measured in one process, rounds interleaved.

    python benchmarks/throughput.py                                   # CPU, fp32, batch 16
    python benchmarks/throughput.py --modes reference fast fast-lean --rounds 5
    python benchmarks/throughput.py --device cuda --dtype bf16 --channels-last --batch 128 \
        --modes reference fast compiled
    python benchmarks/throughput.py --detector                        # backbones at 800x1333

Models: RandWire C=78 / 109 / 154 (the shipped configs/imagenet, SEED 1) and torchvision
ResNet-50 / ResNet-101 (random weights). Each round times, for every (model, mode), one inference
batch (eval, no_grad) and one training step (forward, cross-entropy, backward, SGD step); every
figure is also divided by ResNet-50's in the same round (its compiled version for "compiled"
rows), and the table prints medians over rounds. Modes of a RandWire model:

    reference     the plain per-node loop (MODEL.RANDWIRE.EXECUTION reference)
    fast          EXECUTION fast (the defaults: MEMORY_EFFICIENT off; on CUDA the Triton node
                  kernels where they pass their self-check)
    eager         EXECUTION eager (the fast plan without the Triton kernels)
    triton        EXECUTION triton (the Triton node kernels; CPU only under TRITON_INTERPRET=1)
    fast-lean     EXECUTION fast, MEMORY_EFFICIENT on
    fast-min      EXECUTION fast, MEMORY_EFFICIENT and RECOMPUTE_CONVS on
    fast-nofold   EXECUTION fast without folding affine norms into the 1x1 convs
    compiled      the default, with torch.compile of the whole model (ResNet compiled too)

Training memory per image: on CUDA, torch.cuda.max_memory_allocated of one training step,
slope between --batch and twice it; on CPU, the slope of peak RSS between --memory-batches
(two SGD steps, each in a forked child so peaks don't mix). --memory none skips it.

Achieved bandwidth (CUDA only): img/s x bytes per image of the eager traffic model
(benchmarks/traffic.py: every op reads its inputs and writes its outputs; the model cast to
--dtype, so no autocast weight casts; training without the SGD step; a compiled row uses its
eager model's bytes), and its fraction of the device-to-device copy bandwidth measured once
(a 1 GiB dst.copy_(src), 2 x bytes / time, median of 5).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

# First: registers the RandWire backbones, and quiets the notes Detectron2's imports print.
import randwire_d2  # noqa: F401  # isort: split
import torch
import torch.nn.functional as F
import torchvision
from detectron2.modeling import build_model

from randwire_d2.config import load_config
from randwire_d2.modeling.classifier import ClassifierLogits
from randwire_d2.utils.tables import markdown_table

if __package__:  # python -m benchmarks.throughput
    from .bench_common import machine
    from .traffic import traffic
else:  # python benchmarks/throughput.py: its folder is sys.path[0]
    from bench_common import machine
    from traffic import traffic

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RANDWIRE = {
    "rw-c78": "configs/imagenet/randwire_ws_c78_small.yaml",
    "rw-c109": "configs/imagenet/randwire_ws_c109_regular.yaml",
    "rw-c154": "configs/imagenet/randwire_ws_c154_regular.yaml",
}
RESNETS = {"r50": torchvision.models.resnet50, "r101": torchvision.models.resnet101}
# mode -> MODEL.RANDWIRE.(EXECUTION, MEMORY_EFFICIENT, RECOMPUTE_CONVS)
MODES = {
    "reference": ("reference", False, False),
    "fast": ("fast", False, False),
    "fast-lean": ("fast", True, False),
    "fast-min": ("fast", True, True),
    "fast-nofold": ("fast", False, False),
    "eager": ("eager", False, False),
    "triton": ("triton", False, False),
    "compiled": ("fast", False, False),
}
DETECTORS = {
    "rw-c109-fpn": "configs/faster_rcnn_randwire_c109_fpn_1x.yaml",
    "r50-fpn": "configs/faster_rcnn_R_50_FPN_1x.yaml",
}


def randwire(config: str, mode: str, device: str) -> torch.nn.Module:
    cfg = load_config(os.path.join(ROOT, config), ["MODEL.DEVICE", device], freeze=False)
    cfg.MODEL.RANDWIRE.SEED = 1
    rw = cfg.MODEL.RANDWIRE
    rw.EXECUTION, rw.MEMORY_EFFICIENT, rw.RECOMPUTE_CONVS = MODES[mode]
    model = build_model(cfg)
    if mode == "fast-nofold":
        model.backbone.set_execution(fold_norms=False)
    return ClassifierLogits(model, normalize=False)


def detector_backbone(config: str, device: str) -> torch.nn.Module:
    cfg = load_config(os.path.join(ROOT, config), ["MODEL.DEVICE", device])
    return build_model(cfg).backbone


class Bench:
    """One model variant: its module, optimizer and timed steps."""

    def __init__(self, name, module, args, compiled=False):
        self.name, self.args = name, args
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        self.module = module.to(args.device).to(memory_format=fmt)
        if compiled:
            self.module.compile()
        self.opt = torch.optim.SGD(self.module.parameters(), lr=1e-4, momentum=0.9)
        self.times: Dict[str, List[float]] = {"infer": [], "train": []}

    def autocast(self):
        dtype = torch.bfloat16 if self.args.dtype == "bf16" else None
        return torch.autocast(self.args.device_type, dtype=dtype, enabled=dtype is not None)

    def loss(self, out):
        if isinstance(out, dict):  # a detector backbone: its features
            return sum(v.float().mean() for v in out.values())
        return F.cross_entropy(out.float(), self.labels)

    def inputs(self, batch, size):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, size[0], size[1], generator=g).to(self.args.device)
        fmt = torch.channels_last if self.args.channels_last else torch.contiguous_format
        self.labels = torch.randint(0, 1000, (batch,), generator=g).to(self.args.device)
        return x.contiguous(memory_format=fmt)

    def train_step(self, x):
        self.module.train()
        with self.autocast():
            loss = self.loss(self.module(x))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def infer(self, x):
        self.module.eval()
        with torch.no_grad(), self.autocast():
            self.module(x)

    def timed(self, what: str, fn: Callable, x):
        sync(self.args)
        start = time.perf_counter()
        fn(x)
        sync(self.args)
        self.times[what].append(time.perf_counter() - start)


def sync(args):
    if args.device_type == "cuda":
        torch.cuda.synchronize()


def peak_rss_mib_of_step(spec: str, batch: int, args) -> float:
    """Peak RSS (MiB) of a fresh process that builds model `spec` ("name:mode") and runs two
    training steps at `batch` (a fork would inherit this process's peak and its OpenMP threads)."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--memory-child",
        spec,
        str(batch),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--size",
        str(args.size),
    ]
    if args.channels_last:
        cmd.append("--channels-last")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def cpu_memory_per_image_mib(spec: str, args) -> float:
    """Slope of peak RSS between --memory-batches, measured in fresh processes while this one
    holds little (on a busy host a large parent pushes children into swap, flattening peaks)."""
    b1, b2 = args.memory_batches
    p1, p2 = (peak_rss_mib_of_step(spec, b, args) for b in (b1, b2))
    return (p2 - p1) / (b2 - b1)


def memory_child(spec: str, batch: int, args) -> None:
    name, _, mode = spec.partition(":")
    bench = make_bench(name, mode, args)
    x = bench.inputs(batch, (args.size, args.size))
    for _ in range(2):
        bench.train_step(x)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)


def label_of(name: str, mode: str) -> str:
    if name in RESNETS:
        return name + (" compiled" if mode == "compiled" else "")
    return f"{name} {mode}"


def make_bench(name: str, mode: str, args) -> "Bench":
    torch.manual_seed(0)
    module = RESNETS[name]() if name in RESNETS else randwire(RANDWIRE[name], mode, args.device)
    bench = Bench(label_of(name, mode), module, args, compiled=mode == "compiled")
    bench.spec = (name, mode)
    return bench


def fast_runs_kernels(device: str) -> bool:
    """Whether EXECUTION fast runs the Triton node kernels on `device` in this version;
    False where the version has no such choice."""
    try:
        from randwire_d2.modeling.execution_path import choose_execution

        return bool(choose_execution("fast", device).kernels)
    except Exception:  # an older version, or no kernels: the eager fast path
        return False


def traffic_per_image(name: str, mode: str, args, train: bool) -> float:
    """Bytes per image of the eager traffic model (benchmarks/traffic.py) of (model, mode),
    counted on the meta device at --batch, --size, --dtype (cast), --channels-last. A mode
    whose EXECUTION fast runs the Triton kernels on --device is counted with them."""
    with torch.device("meta"):
        module = RESNETS[name]() if name in RESNETS else randwire(RANDWIRE[name], mode, "meta")
    if name in RANDWIRE and MODES[mode][0] == "fast" and fast_runs_kernels(args.device):
        for m in module.modules():
            if hasattr(m, "set_execution") and hasattr(m, "plan"):  # a wired stage
                m.set_execution("triton")
    counted = traffic(module, args.batch, args.size, args.dtype, train, "eager", args.channels_last)
    return counted["bytes_per_image"]


def copy_bandwidth_gbs(nbytes: int = 2**30, runs: int = 5) -> float:
    """Device-to-device copy bandwidth (GB/s, read + write): median of `runs` timed copies."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(times) / 1e9


def add_bandwidth(rows, benches: List["Bench"], args, copy_gbs: float) -> None:
    """Per row: eager-model bytes per image and achieved GB/s (and fraction of `copy_gbs`)."""
    for row, bench in zip(rows, benches):
        for what, train in (("infer", False), ("train", True)):
            nbytes = traffic_per_image(*bench.spec, args, train)
            row[f"{what}_mb_per_img"] = nbytes / 1e6
            row[f"{what}_gbs"] = row[f"{what}_ips"] * nbytes / 1e9
            row[f"{what}_copy_frac"] = row[f"{what}_gbs"] / copy_gbs


def bandwidth_table(rows, copy_gbs: float, kernels: bool) -> str:
    title = (
        f"\n# achieved bandwidth: img/s x eager traffic model bytes/img (MB = 1e6; EXECUTION "
        f"fast counted {'with' if kernels else 'without'} the Triton node kernels, as it runs "
        f"here); device-to-device copy {copy_gbs:.0f} GB/s"
    )
    header = ["model", "inference MB/img", "GB/s", "of copy", "training MB/img", "GB/s", "of copy"]
    # fmt: off
    return title + "\n" + markdown_table(header, [
        [r["model"], f"{r['infer_mb_per_img']:.0f}", f"{r['infer_gbs']:.0f}",
         f"{r['infer_copy_frac']:.0%}", f"{r['train_mb_per_img']:.0f}", f"{r['train_gbs']:.0f}",
         f"{r['train_copy_frac']:.0%}"]
        for r in rows
    ])
    # fmt: on


def cuda_memory_per_image_mib(bench: Bench, args, size) -> float:
    """max_memory_allocated of one training step, slope between --batch and twice it."""
    peaks = []
    for b in (args.batch, 2 * args.batch):
        x = bench.inputs(b, size)
        bench.train_step(x)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        bench.train_step(x)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
        del x
    return (peaks[1] - peaks[0]) / args.batch / 2**20


def run(benches: List[Bench], baseline: Dict[str, str], args, size, batch, memory=None):
    memory = memory or {}
    x = {b.name: b.inputs(batch, size) for b in benches}
    for b in benches:  # warm-up (and compilation)
        print(f"warm-up {b.name}", file=sys.stderr, flush=True)
        for _ in range(args.warmup):
            b.train_step(x[b.name])
            b.infer(x[b.name])
    for _ in range(args.rounds):
        for b in benches:
            b.timed("infer", b.infer, x[b.name])
            b.timed("train", b.train_step, x[b.name])
    rows = []
    by_name = {b.name: b for b in benches}
    for b in benches:
        base = by_name[baseline[b.name]]
        row = {"model": b.name}
        for what in ("infer", "train"):
            ips = [batch / t for t in b.times[what]]
            ratio = [tb / t for t, tb in zip(b.times[what], base.times[what])]
            row[f"{what}_ips"] = statistics.median(ips)
            row[f"{what}_ratio"] = statistics.median(ratio)
        if b.name in memory:
            row["mem_mib"] = memory[b.name]
        rows.append(row)
    if memory:
        for row in rows:
            base = by_name_row(rows, baseline[row["model"]])["mem_mib"]
            row["mem_ratio"] = row["mem_mib"] / base if base > 0 else float("nan")
    return rows


def by_name_row(rows, name):
    return next(r for r in rows if r["model"] == name)


def table(rows, base_label, memory: bool) -> str:
    header = ["model", "inference img/s", f"÷ {base_label}", "training img/s", f"÷ {base_label}"]
    header += ["training MiB/img", f"÷ {base_label}"] if memory else []
    cells = []
    for r in rows:
        cells.append(
            [r["model"], f"{r['infer_ips']:.3g}", f"{r['infer_ratio']:.2f}"]
            + [f"{r['train_ips']:.3g}", f"{r['train_ratio']:.2f}"]
            + ([f"{r['mem_mib']:.0f}", f"{r['mem_ratio']:.2f}"] if memory else [])
        )
    return markdown_table(header, cells)


def add_common_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options shared with benchmarks/profile_step.py: device, batch, precision, models."""
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--size", type=int, default=224)
    models = sorted(RANDWIRE) + sorted(RESNETS)
    p.add_argument("--models", nargs="+", default=["rw-c109", "r50"], choices=models)
    p.add_argument("--modes", nargs="+", default=["reference", "fast"], choices=sorted(MODES))
    return p


def main(argv=None):
    p = add_common_arguments(
        argparse.ArgumentParser(
            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--memory", default="auto", choices=["auto", "none"])
    p.add_argument(
        "--memory-batches",
        type=int,
        nargs=2,
        default=[8, 24],
        help="CPU: the two batch sizes of the peak-RSS slope",
    )
    p.add_argument(
        "--detector",
        action="store_true",
        help="also time RandWire-C109-FPN vs R-50-FPN backbones at 800x1333, batch 2",
    )
    p.add_argument("--json", default="", help="write the rows to this file")
    p.add_argument(
        "--memory-child", nargs=2, metavar=("MODEL:MODE", "BATCH"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device_type = args.device
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.memory_child:
        return memory_child(args.memory_child[0], int(args.memory_child[1]), args)
    if "r50" not in args.models:
        args.models.append("r50")  # every ratio is to ResNet-50 of the same round

    compiled = "compiled" in args.modes
    specs = [(n, m) for n in args.models for m in (["eager"] if n in RESNETS else args.modes)]
    memory = {}
    if args.memory != "none":
        for name, mode in specs:
            if args.device_type == "cpu":  # fresh processes: nothing is built here yet
                print(f"memory {name} {mode}", file=sys.stderr, flush=True)
                memory[label_of(name, mode)] = cpu_memory_per_image_mib(f"{name}:{mode}", args)
    benches, baseline = [], {}
    for name in args.models:
        if name in RESNETS:
            for mode in ["eager"] + (["compiled"] if compiled else []):
                bench = make_bench(name, mode, args)
                benches.append(bench)
                baseline[bench.name] = "r50" + (" compiled" if mode == "compiled" else "")
            continue
        for mode in args.modes:
            bench = make_bench(name, mode, args)
            benches.append(bench)
            baseline[bench.name] = "r50 compiled" if mode == "compiled" else "r50"
    if args.memory != "none" and args.device_type == "cuda":
        for bench in benches:
            memory[bench.name] = cuda_memory_per_image_mib(bench, args, (args.size, args.size))
    host = machine(args.device)
    print(
        f"# {host}; batch {args.batch}, {args.size}x{args.size}, {args.dtype}, "
        f"{'channels_last' if args.channels_last else 'NCHW'}, {args.rounds} rounds, medians"
    )
    rows = run(benches, baseline, args, (args.size, args.size), args.batch, memory)
    print(table(rows, "ResNet-50", bool(memory)))
    out = {"classifiers": rows}
    if args.device_type == "cuda":
        out["copy_gbs"] = copy_gbs = copy_bandwidth_gbs()
        add_bandwidth(rows, benches, args, copy_gbs)
        print(bandwidth_table(rows, copy_gbs, fast_runs_kernels(args.device)))
    else:
        print("\n# achieved GB/s (img/s x traffic model bytes/img): CUDA only, skipped on CPU")

    if args.detector:
        dets, dbase = [], {}
        for name, config in DETECTORS.items():
            modes = args.modes if name.startswith("rw") else ["-"]
            for mode in modes:
                if mode == "compiled":
                    continue
                module = detector_backbone(config, args.device)
                if name.startswith("rw"):
                    module.bottom_up.set_execution(*MODES[mode], fold_norms=mode != "fast-nofold")
                label = name if mode == "-" else f"{name} {mode}"
                dets.append(Bench(label, module, args))
                dbase[label] = "r50-fpn"
        print(
            f"\n# detector backbones (FPN included), batch 2, 800x1344 (800x1333 padded), "
            f"FrozenBN trunks as configured"
        )
        drows = run(dets, dbase, args, (800, 1344), 2)
        print(table(drows, "R-50-FPN", False))
        out["detector_backbones"] = drows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"machine": host, "args": {k: v for k, v in vars(args).items()}, **out},
                f,
                indent=1,
            )
    return out


if __name__ == "__main__":
    main()
