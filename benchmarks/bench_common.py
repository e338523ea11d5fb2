"""What the benchmarks share: the machine line, the model builder, the interleaved timing loop
(medians over rounds) and the table writer."""

import contextlib
import math
import os
import platform
import statistics
import sys
import time
from typing import Dict, List, Sequence

# First: registers the RandWire backbones, and quiets the notes Detectron2's imports print.
import randwire_d2  # noqa: F401  # isort: split
import torch
import torch.nn.functional as F
import torchvision
from detectron2.modeling import build_model

from randwire_d2.config import load_config
from randwire_d2.modeling.classifier import ClassifierLogits
from randwire_d2.utils.tables import markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def machine(device=None) -> str:
    """The machine in one line: GPU (if `device` is one), CPU, threads, load, torch's version."""
    cpu = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    text = (
        f"{cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"load average {os.getloadavg()[0]:.1f} (torch {torch.__version__})"
    )
    if device is not None and torch.device(device).type == "cuda":
        text = f"{torch.cuda.get_device_name(device)}, {text}"
    return text


def table(header: Sequence[str], rows: Sequence[Sequence], align: str = "") -> str:
    """The one table writer of the benchmarks (the project's Markdown tables)."""
    return markdown_table(header, rows, align)


def build(name: str, mode: str = "fast", device: str = "cpu", opts=()) -> torch.nn.Module:
    """A tensor -> logits classifier: torchvision ResNet (RESNETS, random weights) or RandWire
    (a RANDWIRE name or a config path; SEED 1, MODES[mode]) on `device` (meta: no memory)."""
    ctx = torch.device("meta") if device == "meta" else contextlib.nullcontext()
    if name in RESNETS:
        with ctx:
            return RESNETS[name]()
    path = os.path.join(ROOT, RANDWIRE.get(name, name))
    cfg = load_config(path, ["MODEL.DEVICE", device, *opts], freeze=False)
    rw = cfg.MODEL.RANDWIRE
    rw.SEED = 1
    if mode:
        rw.EXECUTION, rw.MEMORY_EFFICIENT, rw.RECOMPUTE_CONVS = MODES[mode]
    with ctx:
        model = build_model(cfg)
    if mode == "fast-nofold":
        model.backbone.set_execution(fold_norms=False)
    return ClassifierLogits(model, normalize=False)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Bench:
    """One model variant: inference (eval, no_grad), training step (cross-entropy, backward, SGD;
    fp16 through a GradScaler on CUDA, as the trainer)."""

    def __init__(self, name, module, device, dtype="fp32", channels_last=False, compiled=False):
        self.name, self.device, self.dtype = name, device, dtype
        self.device_type = torch.device(device).type
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.module = module.to(device).to(memory_format=self.fmt)
        if compiled:
            self.module.compile()
        self.opt = torch.optim.SGD(self.module.parameters(), lr=1e-4, momentum=0.9)
        fp16 = dtype == "fp16" and self.device_type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.times: Dict[str, List[float]] = {"infer": [], "train": []}

    def autocast(self):
        dtype = DTYPES[self.dtype]
        return torch.autocast(self.device_type, dtype=dtype, enabled=dtype is not None)

    def loss(self, out):
        if isinstance(out, dict):  # a detector backbone: its features
            return sum(v.float().mean() for v in out.values())
        return F.cross_entropy(out.float(), self.labels)

    def inputs(self, batch, size, classes=1000):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, size[0], size[1], generator=g).to(self.device)
        self.labels = torch.randint(0, classes, (batch,), generator=g).to(self.device)
        return x.contiguous(memory_format=self.fmt)

    def train_step(self, x):
        self.module.train()
        with self.autocast():
            loss = self.loss(self.module(x))
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)

    def infer(self, x):
        self.module.eval()
        with torch.no_grad(), self.autocast():
            self.module(x)


def interleaved(benches, inputs, rounds, warmup=1, steps=1, order=("infer", "train")):
    """The timing loop: `warmup` untimed steps of each bench, then `rounds` rounds timing `steps`
    calls of every (bench, what) in turn into bench.times[what] (seconds per call)."""
    for b in benches if warmup else []:  # warm-up (and compilation)
        print(f"warm-up {b.name}", file=sys.stderr, flush=True)
        for _ in range(warmup):
            b.train_step(inputs[b.name])
            b.infer(inputs[b.name])
    for _ in range(rounds):
        for b in benches:
            for what in order:
                fn = b.infer if what == "infer" else b.train_step
                calls = lambda: [fn(inputs[b.name]) for _ in range(steps)]  # noqa: E731
                b.times[what].append(timed(calls, b.device) / steps)


def timed(fn, device) -> float:
    """Seconds of fn(), the device synchronized before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def medians(benches, baseline: Dict[str, str], batch: int, memory=None) -> List[dict]:
    """Per bench: median img/s and median ratio to its baseline bench's round (÷ baseline);
    `memory` ({name: MiB/img}) adds "mem_mib" and "mem_ratio"."""
    by_name, rows = {b.name: b for b in benches}, []
    for b in benches:
        base, row = by_name[baseline[b.name]], {"model": b.name}
        for what in ("infer", "train"):
            row[f"{what}_ips"] = statistics.median(batch / t for t in b.times[what])
            ratios = [tb / t for t, tb in zip(b.times[what], base.times[what])]
            row[f"{what}_ratio"] = statistics.median(ratios)
        if memory:
            row["mem_mib"] = memory.get(b.name, math.nan)
            base = memory.get(baseline[b.name], math.nan)
            row["mem_ratio"] = row["mem_mib"] / base if base > 0 else math.nan
        rows.append(row)
    return rows


def copy_bandwidth_gbs(device="cuda", nbytes: int = 2**30, runs: int = 5) -> float:
    """Device-to-device copy bandwidth (GB/s, read + write): median of `runs` timed copies."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    cuda, times = torch.device(device).type == "cuda", []
    for _ in range(runs):  # CUDA events on a GPU, the wall clock elsewhere
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - start)
    del src, dst
    if cuda:
        torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(times) / 1e9
