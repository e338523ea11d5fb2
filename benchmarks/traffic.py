#!/usr/bin/env python
"""Memory traffic and kernel launches per image of a RandWire network vs ResNet-50, counted op by
op on the `meta` device (no memory, no compute).

    python benchmarks/traffic.py                                       # C109 vs R50, bf16
    python benchmarks/traffic.py --config configs/imagenet/randwire_ws_c78_small.yaml --dtype fp32
    python benchmarks/traffic.py --channels-last --batch 16 --json traffic.json

Granularities: eager (every op that moves data reads its tensor inputs and writes its outputs;
views and allocations move nothing), conv (only convolutions, matmuls and the fused `randwire`
ops move memory), fused (eager, the model with EXECUTION "triton"). Inference: eval, no_grad,
after an uncounted forward; training step: forward, cross-entropy, backward, no optimizer
step. Cast with `.to(dtype)` (no autocast). MB = 1e6 bytes per image; kernels per step.
"""

import argparse
import json
import os
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from randwire_d2.config import load_config
from randwire_d2.modeling.execution_path import EXECUTIONS

if __package__:  # python -m benchmarks.traffic, or imported
    from .bench_common import ROOT, build, table
else:  # python benchmarks/traffic.py: its folder is sys.path[0]
    from bench_common import ROOT, build, table

DEFAULT_CONFIG = "configs/imagenet/randwire_ws_c109_regular.yaml"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GRANULARITIES = ("eager", "conv", "fused")
MB = 1e6

aten = torch.ops.aten
# The ops that stay when everything elementwise is fused into its neighbours (linear and matmul
# reach the dispatcher as addmm / mm / bmm; the cuDNN / MKL-DNN ops appear on real devices).
CONV_OPS = {
    aten.convolution, aten.convolution_backward, aten._convolution, aten.cudnn_convolution,
    aten.cudnn_convolution_transpose, aten.mkldnn_convolution, aten.mm, aten.addmm, aten.bmm,
    aten.baddbmm, aten.linear, aten.matmul,
}  # fmt: skip
# Ops whose schema declares no alias but which move nothing: a view under another name, or an
# allocation without a fill (uninitialized memory needs no kernel).
NO_DATA_OPS = {
    aten._unsafe_view, aten.empty, aten.empty_strided, aten.empty_like, aten.new_empty,
    aten.new_empty_strided,
}  # fmt: skip
# Ops that write their first argument without reading it (it counts once, as the output).
OVERWRITE_OPS = {
    aten.copy_, aten.fill_, aten.zero_, aten.bernoulli_, aten.normal_, aten.uniform_, aten.random_,
    aten.exponential_,
}  # fmt: skip
# Fills shaped like a tensor argument without reading it: only their output counts.
LIKE_OPS = {
    aten.zeros_like, aten.ones_like, aten.full_like, aten.rand_like, aten.randn_like,
    aten.randint_like, aten.new_zeros, aten.new_ones, aten.new_full,
}  # fmt: skip


def _tensors(tree) -> List[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()  # what the tensor references, not its whole storage


def moves_data(func, out=None) -> bool:
    """False for views (every return aliases an input without writing it, by the schema), for
    NO_DATA_OPS, and for ops that return no tensor and write no argument; True otherwise."""
    if func.overloadpacket in NO_DATA_OPS:
        return False
    schema, returns = func._schema, func._schema.returns
    if returns and all(r.alias_info is not None and not r.alias_info.is_write for r in returns):
        return False
    if out is not None or not returns:
        writes = any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
        if not writes and not _tensors(out):
            return False
    return True


def op_bytes(func, args, kwargs, out) -> int:
    """Bytes one op moves: tensor inputs (read) + outputs (written); an in-place op's argument
    is read and written unless only overwritten (OVERWRITE_OPS); `out=` and *_like templates are
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
    """Counts bytes and kernels of every op dispatched inside it at `granularity` ("eager" or
    "conv"); ops with no tensor on `device_type` (host-side work of a meta run) do not count."""

    def __init__(self, granularity: str = "eager", device_type: Optional[str] = None):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity {granularity!r}: expected one of {GRANULARITIES}")
        self.device_type, self.granularity, self.bytes, self.kernels = (
            device_type,
            granularity,
            0,
            0,
        )
        self.by_op: Dict[str, List[int]] = {}  # op -> [calls, bytes]

    def counts(self, func, out) -> bool:
        if self.granularity == "conv":
            return func.overloadpacket in CONV_OPS or func.namespace == "randwire"
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


def traffic(model, batch=8, size=224, dtype="bf16", train=False, granularity="eager",
            channels_last=False, device="meta", details=False) -> Dict:  # fmt: skip
    """Traffic of one inference forward (eval, no_grad) or, `train`, one training step of
    `model` (NCHW tensor -> logits): {"bytes_per_image", "kernels_per_image", "bytes_per_step",
    "kernels_per_step"} (+ "by_op": {op: [calls, bytes]} with `details`). "fused" counts as
    "eager" (build the model with EXECUTION "triton"). The model is moved to `device` and cast
    to `dtype` in place."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, dtype=dtype).to(memory_format=fmt)
    model.train(train)
    x = torch.empty(batch, 3, size, size, device=device, dtype=dtype, memory_format=fmt)
    if x.device.type != "meta":
        x.normal_()
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
    result = dict(bytes_per_image=counter.bytes / batch, kernels_per_image=counter.kernels / batch)
    result.update(bytes_per_step=counter.bytes, kernels_per_step=counter.kernels)
    if details:
        result["by_op"] = counter.by_op
    return result


def randwire_model(config=DEFAULT_CONFIG, execution=None, device="meta") -> torch.nn.Module:
    """bench_common.build of a RandWire config with its own keys (but EXECUTION, if given)."""
    return build(config, None, device, ["MODEL.RANDWIRE.EXECUTION", execution] if execution else [])


def resnet50(device: str = "meta") -> torch.nn.Module:
    return build("r50", device=device)


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
    opts = dict(batch=args.batch, size=args.size, dtype=args.dtype, device=args.device)
    opts["channels_last"], rows = args.channels_last, []
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
    return (
        f"{r['bytes_per_image'] / MB:.0f} MB, {r['kernels_per_step']} kernels "
        f"({r['kernels_per_image']:.0f}/img)"
    )


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help="a RandWire classifier config")
    executions = [e for e in EXECUTIONS if e != "triton"]
    p.add_argument("--execution", choices=executions, help="of the eager and conv rows")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--batch", type=int, default=8, help="counted per step, divided by it")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default="meta", choices=["meta", "cpu"], help="cpu: small --batch")
    p.add_argument("--json", default="", help="write the rows to this file")
    args = p.parse_args(argv)

    start = time.perf_counter()
    name = os.path.splitext(os.path.basename(args.config))[0]
    rows = measure(args)
    cfg = load_config(os.path.join(ROOT, args.config), freeze=False)
    execution, cl = args.execution or cfg.MODEL.RANDWIRE.EXECUTION, args.channels_last
    print(
        f"# {name} (EXECUTION {execution}) vs torchvision ResNet-50: {args.dtype}, batch "
        f"{args.batch}, {args.size}x{args.size}, {'channels_last' if cl else 'NCHW'}, "
        f"{args.device} device; MB = 1e6 bytes per image, kernels per step; training step = "
        f"forward + cross-entropy + backward (no optimizer step)"
    )
    header = ["per image (kernels per step)", name, "ResNet-50", f"bytes R50/{name}"]
    # fmt: off
    print(table(header, [
        [r["row"], _cell(r["randwire"]),
         _cell(r["r50"]) + (" (eager)" if r["granularity"] == "fused" else ""), f"{r['ratio']:.2f}"]
        for r in rows
    ]))
    # fmt: on
    print(f"# counted in {time.perf_counter() - start:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "execution": execution, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
