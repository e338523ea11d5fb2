#!/usr/bin/env python
"""Memory traffic and kernel launches per image: the traffic model of a RandWire network vs
ResNet-50, counted op by op on the `meta` device (no memory, no compute).

    python benchmarks/traffic.py                                       # C109 vs R50, bf16
    python benchmarks/traffic.py --config configs/imagenet/randwire_ws_c78_small.yaml --dtype fp32
    python benchmarks/traffic.py --channels-last --batch 16 --json traffic.json

A `TorchDispatchMode` sees every op that reaches the kernels (after autograd, so backward ops
too) and counts, per image (totals divided by --batch), at three granularities:

    eager   every op that moves data is one kernel that reads its tensor inputs and writes its
            tensor outputs: bytes = numel x element size of every tensor argument (lists and
            tuples recursed into) + every tensor output. A view, metadata op or allocation
            (see `moves_data`) moves nothing and launches nothing.
    conv    only convolutions and matmuls (CONV_OPS) and the fused custom ops (namespace
            `randwire`) move memory, everything else assumed fused into them: bytes of their
            inputs + outputs, kernels = their number.
    fused   the eager rule on the model with MODEL.RANDWIRE.EXECUTION "triton", where each
            `torch.ops.randwire.*` op is one Triton kernel (inputs + outputs counted once).

Inference: model.eval(), torch.no_grad(), one forward after an uncounted one (the steady state:
the fast executions compute a node's coefficients and folded norm once, not per forward).
Training step: model.train(), forward, cross-entropy on random labels, backward; the optimizer
step is not included (with it ResNet-50 would count one more pass over every parameter,
gradient and momentum buffer).

Precision: the model is cast with `.to(dtype)` and fed a tensor of that dtype (no autocast, so
no per-step weight casts are counted; autocast would add one per conv / linear, 56 more kernels
for ResNet-50's forward). MB = 1e6 bytes. Bytes are per image (the step's total / --batch, so
weight traffic shrinks per image as the batch grows); kernels are per step (launches do not
grow with the batch; per image in the json).

The issue's table (bf16: C109 553 MB / 937 kernels inference, 154 MB conv granularity,
1468 MB / 2666 kernels training, 408 MB conv; ResNet-50 188 / 174, 69, 470 / 407, 189) is
reproduced within 2% by `--batch 2 --execution reference`: the C109 numbers there are the
reference execution's, not the fast one's (fast moves less in eager but launches more kernels
in inference: it folds each node's norm into its weights every forward).

Counting choices: views by schema alias info, not a hand list (`moves_data`); in-place ops read
and write their argument, except pure overwrites (copy_, fill_, zero_, in-place random fills);
*_like fills write only; ops on host tensors during a meta run (the CPU draw of the removed
edge) are not kernels; the training step's removed edges are seeded. On meta, an eval
BatchNorm also returns its per-channel saved mean / inverse std (CPU returns them empty): a
few KB per layer. Ops without a meta kernel: run with --device cpu (and a small --batch).
"""

import argparse
import json
import os
import time
from typing import Dict, List, Optional

# First: importing randwire_d2 quiets the deprecation notes that Detectron2's imports print.
import randwire_d2  # noqa: F401  # isort: split
import torch
import torch.nn.functional as F
import torchvision
from detectron2.modeling import build_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from randwire_d2.config import load_config
from randwire_d2.modeling.classifier import ClassifierLogits
from randwire_d2.modeling.execution_path import EXECUTIONS
from randwire_d2.utils.tables import markdown_table

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEFAULT_CONFIG = "configs/imagenet/randwire_ws_c109_regular.yaml"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GRANULARITIES = ("eager", "conv", "fused")
MB = 1e6

aten = torch.ops.aten
# The ops that stay when everything elementwise is fused into its neighbours (linear and matmul
# reach the dispatcher as addmm / mm / bmm; the cuDNN / MKL-DNN ops appear on real devices).
CONV_OPS = {
    aten.convolution,
    aten.convolution_backward,
    aten._convolution,
    aten.cudnn_convolution,
    aten.cudnn_convolution_transpose,
    aten.mkldnn_convolution,
    aten.mm,
    aten.addmm,
    aten.bmm,
    aten.baddbmm,
    aten.linear,
    aten.matmul,
}
# Ops whose schema declares no alias but which move nothing: a view under another name, or an
# allocation without a fill (uninitialized memory needs no kernel).
NO_DATA_OPS = {
    aten._unsafe_view,
    aten.empty,
    aten.empty_strided,
    aten.empty_like,
    aten.new_empty,
    aten.new_empty_strided,
}
# Ops that write their first argument without reading it (it counts once, as the output).
OVERWRITE_OPS = {
    aten.copy_,
    aten.fill_,
    aten.zero_,
    aten.bernoulli_,
    aten.normal_,
    aten.uniform_,
    aten.random_,
    aten.exponential_,
}
# Fills shaped like a tensor argument without reading it: only their output counts.
LIKE_OPS = {
    aten.zeros_like,
    aten.ones_like,
    aten.full_like,
    aten.rand_like,
    aten.randn_like,
    aten.randint_like,
    aten.new_zeros,
    aten.new_ones,
    aten.new_full,
}


def _tensors(tree) -> List[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _nbytes(t: torch.Tensor) -> int:
    """Bytes the tensor references: numel x element size (not its whole storage)."""
    return t.numel() * t.element_size()


def moves_data(func, out=None) -> bool:
    """False for views and metadata ops, read off the schema: every return aliases an input
    without writing it (view, reshape's view, t, transpose, permute, expand, as_strided,
    detach, alias, slice, select, (un)squeeze, split / unbind / chunk, ...); for NO_DATA_OPS;
    and, given the op's result `out`, for ops that return no tensor and write none of their
    arguments (promote_types, sym sizes, ...). True otherwise: in-place ops (a written alias),
    copies, fills, compute."""
    if func.overloadpacket in NO_DATA_OPS:
        return False
    schema = func._schema
    returns = schema.returns
    if returns and all(r.alias_info is not None and not r.alias_info.is_write for r in returns):
        return False
    if out is not None or not returns:
        writes = any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
        if not writes and not _tensors(out):
            return False
    return True


def is_fused_op(func) -> bool:
    """A custom fused kernel of randwire_d2 (`torch.ops.randwire.*`)."""
    return func.namespace == "randwire"


def op_bytes(func, args, kwargs, out) -> int:
    """Bytes one op moves: its tensor inputs (read) + its tensor outputs (written). An in-place
    op's mutated argument is read and written (add_ reads and writes self), except where it is
    only overwritten (OVERWRITE_OPS); `out=` arguments and the templates of *_like fills are
    not read."""
    packet = func.overloadpacket
    if packet in LIKE_OPS:
        inputs = []
    else:
        inputs = _tensors((args, {k: v for k, v in kwargs.items() if k != "out"}))
        if packet in OVERWRITE_OPS and args and isinstance(args[0], torch.Tensor):
            inputs = inputs[1:]
    return sum(map(_nbytes, inputs)) + sum(map(_nbytes, _tensors(out)))


class TrafficCounter(TorchDispatchMode):
    """Counts bytes and kernels of every op dispatched inside it, at `granularity`: "eager"
    (every op that moves data; also the "fused" rule) or "conv" (CONV_OPS and fused ops).
    Given `device_type`, ops none of whose tensors is on that kind of device are host-side work
    (e.g. the CPU draw of the removed edge while the model runs on meta) and not counted."""

    def __init__(self, granularity: str = "eager", device_type: Optional[str] = None):
        super().__init__()
        self.device_type = device_type
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity {granularity!r}: expected one of {GRANULARITIES}")
        self.granularity = granularity
        self.bytes = 0
        self.kernels = 0
        self.by_op: Dict[str, List[int]] = {}  # op -> [calls, bytes]

    def counts(self, func, out) -> bool:
        if self.granularity == "conv":
            return func.overloadpacket in CONV_OPS or is_fused_op(func)
        return moves_data(func, out)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        on_device = self.device_type is None or any(
            t.device.type == self.device_type for t in _tensors((args, kwargs, out))
        )
        if on_device and self.counts(func, out):
            n = op_bytes(func, args, kwargs, out)
            self.bytes += n
            self.kernels += 1
            entry = self.by_op.setdefault(str(func), [0, 0])
            entry[0] += 1
            entry[1] += n
        return out


def _inputs(model: torch.nn.Module, batch: int, size: int, dtype, channels_last: bool):
    device = next(model.parameters()).device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.empty(batch, 3, size, size, device=device, dtype=dtype, memory_format=fmt)
    if device.type != "meta":
        x.normal_()
    return x


def traffic(
    model: torch.nn.Module,
    batch: int = 8,
    size: int = 224,
    dtype="bf16",
    train: bool = False,
    granularity: str = "eager",
    channels_last: bool = False,
    device: str = "meta",
    details: bool = False,
) -> Dict:
    """Memory traffic of one inference forward (`train` False: eval, no_grad) or one training
    step (train: forward, cross-entropy on random labels, backward; no optimizer step) of
    `model`, a module taking an NCHW tensor (`ClassifierLogits(randwire_classifier, False)`, a
    torchvision classifier). `granularity`: "eager" or "conv" (see the module docstring); "fused" counts as
    "eager" (the difference is the model: build it with EXECUTION "triton").

    Returns {"bytes_per_image", "kernels_per_image"} (totals / batch) and the totals per step
    ("bytes_per_step", "kernels_per_step"; launches do not grow with the batch); `details`
    adds "by_op": {op: [calls, bytes]} per step. The model is moved to `device` (meta: nothing
    allocated or computed) and cast to `dtype` in place: pass one you no longer need."""
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, dtype=dtype).to(memory_format=fmt)
    model.train(train)
    x = _inputs(model, batch, size, dtype, channels_last)
    counter = TrafficCounter("eager" if granularity == "fused" else granularity, x.device.type)
    # Seeded: a training step draws the removed edges (DROP_EDGE_PROB) on the CPU generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if train:
            labels = torch.zeros(batch, dtype=torch.long, device=x.device)
            with counter:
                loss = F.cross_entropy(model(x), labels)
                loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(x)  # steady state: eval constants (folded norms) are computed once
                with counter:
                    model(x)
    result = {
        "bytes_per_image": counter.bytes / batch,
        "kernels_per_image": counter.kernels / batch,
        "bytes_per_step": counter.bytes,
        "kernels_per_step": counter.kernels,
    }
    if details:
        result["by_op"] = counter.by_op
    return result


def randwire_model(
    config: str = DEFAULT_CONFIG, execution: Optional[str] = None, device: str = "meta", opts=()
) -> torch.nn.Module:
    """The classifier of a RandWire config (SEED 1, as benchmarks/throughput.py) as a tensor ->
    logits module, built directly on `device` (meta: no memory, no initialization)."""
    path = config if os.path.isabs(config) else os.path.join(ROOT, config)
    cfg = load_config(path, ["MODEL.DEVICE", device, *opts], freeze=False)
    cfg.MODEL.RANDWIRE.SEED = 1
    if execution:
        cfg.MODEL.RANDWIRE.EXECUTION = execution
    with torch.device(device):
        return ClassifierLogits(build_model(cfg), normalize=False)


def resnet50(device: str = "meta") -> torch.nn.Module:
    with torch.device(device):
        return torchvision.models.resnet50()


# (row label, training step?, granularity)
ROWS = [
    ("inference, eager (every op reads its inputs, writes its outputs)", False, "eager"),
    ("inference, conv granularity (only conv/matmul ops move memory)", False, "conv"),
    ("inference, fused (EXECUTION triton, eager rule)", False, "fused"),
    ("training step, eager", True, "eager"),
    ("training step, conv granularity", True, "conv"),
    ("training step, fused", True, "fused"),
]


def measure(args) -> List[Dict]:
    """One dict per row of ROWS: {"row", "train", "granularity", "randwire", "r50", "ratio"}."""
    opts = dict(
        batch=args.batch,
        size=args.size,
        dtype=args.dtype,
        channels_last=args.channels_last,
        device=args.device,
    )
    rows = []
    for label, train, granularity in ROWS:
        row = {"row": label, "train": train, "granularity": granularity}
        execution = "triton" if granularity == "fused" else args.execution
        rw = randwire_model(args.config, execution, args.device)
        row["randwire"] = traffic(rw, train=train, granularity=granularity, **opts)
        # ResNet-50 has no fused execution: its fused row repeats its eager numbers.
        row["r50"] = traffic(resnet50(args.device), train=train, granularity=granularity, **opts)
        row["ratio"] = row["r50"]["bytes_per_image"] / row["randwire"]["bytes_per_image"]
        rows.append(row)
    return rows


def _cell(r) -> str:
    per_image = r["kernels_per_image"]
    return (
        f"{r['bytes_per_image'] / MB:.0f} MB, {r['kernels_per_step']} kernels ({per_image:.0f}/img)"
    )


def table(rows: List[Dict], name: str) -> str:
    header = ["per image (kernels per step)", name, "ResNet-50", f"bytes R50/{name}"]
    cells = []
    for row in rows:
        r50 = _cell(row["r50"]) + (" (eager)" if row["granularity"] == "fused" else "")
        cells.append([row["row"], _cell(row["randwire"]), r50, f"{row['ratio']:.2f}"])
    return markdown_table(header, cells)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help="a RandWire classifier config")
    p.add_argument(
        "--execution",
        default=None,
        choices=[e for e in EXECUTIONS if e != "triton"],
        help="MODEL.RANDWIRE.EXECUTION of the eager and conv rows (default: the config's)",
    )
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--batch", type=int, default=8, help="counted per step, divided by it")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument(
        "--device",
        default="meta",
        choices=["meta", "cpu"],
        help="meta (default) allocates and computes nothing; cpu: for ops without a meta "
        "kernel (use a small --batch)",
    )
    p.add_argument("--json", default="", help="write the rows to this file")
    args = p.parse_args(argv)

    start = time.perf_counter()
    name = os.path.splitext(os.path.basename(args.config))[0]
    rows = measure(args)
    cfg = load_config(os.path.join(ROOT, args.config), freeze=False)
    execution = args.execution or cfg.MODEL.RANDWIRE.EXECUTION
    print(
        f"# {name} (EXECUTION {execution}) vs torchvision ResNet-50: {args.dtype}, "
        f"batch {args.batch}, {args.size}x{args.size}, "
        f"{'channels_last' if args.channels_last else 'NCHW'}, {args.device} device; "
        f"MB = 1e6 bytes per image (step total / batch), kernels per step; training step = "
        f"forward + cross-entropy + backward (no optimizer step)"
    )
    print(table(rows, name))
    print(f"# counted in {time.perf_counter() - start:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "execution": execution, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
