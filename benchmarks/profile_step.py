#!/usr/bin/env python
"""Where a training step's time goes: torch.profiler over one step, grouped by kind of op.

    python benchmarks/profile_step.py --models rw-c109 r50 --modes reference fast
    python benchmarks/profile_step.py --device cuda --dtype bf16 --channels-last --batch 128 \
        --models rw-c109 --modes fast

One training step (forward, cross-entropy, backward, SGD step) of each model, profiled with
`record_shapes=True`. On CUDA each kernel is charged to the aten op that launched it and that
op's callers, on CPU each op's self time to the op; `categorize` turns (name, launching ops with
their input shapes) into one of CATEGORIES:

    depthwise / pointwise (1x1) / other conv, forward and backward: by the conv op's weight shape
        (depthwise: groups == in_channels, i.e. weight [C, 1, 3, 3]; pointwise: [O, I, 1, 1]);
        a forward conv recomputed in backward counts as forward
    BN forward / backward       batch_norm ops (cudnn, native, their backward)
    fused node kernels          the Triton custom ops randwire::agg_relu_dw* and all they launch
    elementwise                 kernels launched by elementwise aten ops (add, mul, relu,
                                threshold_backward, copies and casts, fills)
    optimizer                   everything under Optimizer.step / zero_grad
    other                       the rest (pooling, the classifier, reductions, the loss)
    idle gaps                   step wall time (median of unprofiled steps) minus the time the
                                device was busy (the union of kernel intervals); on CPU: minus
                                the ops' summed self time (Python and framework overhead)

The SGD step is also timed alone (synchronized before and after). Same options as
benchmarks/throughput.py, plus --steps, --top and --json.
"""

import argparse
import collections
import json
import statistics
import sys
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

from randwire_d2.utils.tables import markdown_table

if __package__:  # python -m benchmarks.profile_step
    from .bench_common import machine
    from .throughput import RESNETS, add_common_arguments, make_bench
else:  # python benchmarks/profile_step.py: its folder is sys.path[0]
    from bench_common import machine
    from throughput import RESNETS, add_common_arguments, make_bench

IDLE = "idle gaps"
CATEGORIES = (
    "depthwise conv forward",
    "depthwise conv backward",
    "pointwise conv forward",
    "pointwise conv backward",
    "other conv forward",
    "other conv backward",
    "BN forward",
    "BN backward",
    "fused node kernels forward",
    "fused node kernels backward",
    "elementwise",
    "optimizer",
    "other",
    IDLE,
)
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

Chain = Sequence[Tuple[str, Sequence[Sequence[int]]]]


def _base(op: str) -> str:
    return op.split("::")[-1].rstrip("_")


def _is_conv(op: str) -> bool:
    return "conv" in op.lower() and ("::" in op or op.endswith("Backward0"))


def _conv_shape(op: str, shapes) -> Optional[Tuple[List[int], Optional[int]]]:
    """(weight shape, input channels) of a conv op's recorded input shapes, if there."""
    w, x = (2, 1) if "backward" in op.lower() else (1, 0)
    if len(shapes) <= w or len(shapes[w]) != 4:
        return None
    channels = shapes[x][1] if len(shapes[x]) == 4 else None
    return list(shapes[w]), channels


def conv_kind(weight: Sequence[int], in_channels: Optional[int]) -> str:
    """depthwise (groups == in_channels: weight [C, 1, kh, kw], 3x3), pointwise (1x1), other."""
    if weight[1] == 1 and list(weight[2:]) == [3, 3] and (in_channels or 2) > 1:
        return "depthwise"
    if list(weight[2:]) == [1, 1]:
        return "pointwise"
    return "other"


def categorize(name: str, chain: Chain) -> str:
    """The category of a kernel (or CPU op) `name` whose launching op and that op's callers are
    `chain`, innermost first, each (op name, recorded input shapes)."""
    ops = [op for op, _ in chain]
    if any(op.startswith("Optimizer.") for op in ops):
        return "optimizer"
    fused = [op for op in ops if op.startswith("randwire::") and "agg_relu_dw" in op]
    if fused or (not ops and "agg_relu_dw" in name):
        backward = "backward" in (fused[0] if fused else "") or "bwd" in name
        return "fused node kernels " + ("backward" if backward else "forward")
    if ops and _base(ops[0]) in ELEMENTWISE:
        return "elementwise"
    convs = [(op, shapes) for op, shapes in chain if _is_conv(op)]
    if convs:
        for op, shapes in convs:
            found = _conv_shape(op, shapes)
            if found is not None:
                direction = "backward" if "backward" in op.lower() else "forward"
                return f"{conv_kind(*found)} conv {direction}"
        backward = any("backward" in op.lower() for op, _ in convs)
        return "other conv " + ("backward" if backward else "forward")
    norms = [op for op in ops if "batchnorm" in op.lower().replace("_", "")]
    if norms:
        return "BN " + ("backward" if "backward" in norms[0].lower() else "forward")
    if not ops and any(k in name.lower() for k in ELEMENTWISE_KERNELS):
        return "elementwise"
    return "other"


def busy_time(intervals: Iterable[Tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals."""
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def summarize(
    items: Iterable[Tuple[str, Chain, float]], wall: float, busy: Optional[float] = None
) -> Dict[str, Dict[str, float]]:
    """{category: {"time", "share", "count"}} of (name, chain, time) items over a step of
    `wall` time, with IDLE = wall - busy (busy: the items' summed time unless given)."""
    times, counts = collections.Counter(), collections.Counter()
    for name, chain, t in items:
        c = categorize(name, chain)
        times[c] += t
        counts[c] += 1
    busy = sum(times.values()) if busy is None else busy
    times[IDLE] = max(0.0, wall - busy)
    return {
        c: {"time": times[c], "share": times[c] / wall if wall > 0 else 0.0, "count": counts[c]}
        for c in CATEGORIES
        if times[c] > 0 or c == IDLE
    }


def chain_of(event) -> List[Tuple[str, list]]:
    """The event's (name, input shapes) and its callers'; an autograd wrapper's (its self time is
    the backward node's overhead) starts at the aten op it calls."""
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
    the union of the device's kernel intervals; on CPU each op's self time."""
    from torch.autograd import DeviceType

    events = prof.events()
    items = []
    if not cuda:
        for e in events:
            if e.device_type == DeviceType.CPU and not e.is_async and e.self_cpu_time_total > 0:
                items.append((e.name, chain_of(e), e.self_cpu_time_total))
        return items, None
    launchers = set()
    for e in events:
        if e.device_type == DeviceType.CPU and e.kernels:
            launchers.add(e.id)
            for k in e.kernels:
                items.append((k.name, chain_of(e), k.duration))
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
    busy = busy_time((e.time_range.start, e.time_range.end) for e in device)
    return items, busy


def timed(fn, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def optimizer_step_seconds(bench, x, cuda: bool) -> float:
    """The SGD step alone, after a forward and backward."""
    bench.module.train()
    with bench.autocast():
        loss = bench.loss(bench.module(x))
    loss.backward()
    t = timed(bench.opt.step, cuda)
    bench.opt.zero_grad(set_to_none=True)
    return t


def profile_model(bench, x, args) -> dict:
    cuda = args.device == "cuda"
    for _ in range(2):
        bench.train_step(x)
    wall = statistics.median(timed(lambda: bench.train_step(x), cuda) for _ in range(args.steps))
    opt = statistics.median(optimizer_step_seconds(bench, x, cuda) for _ in range(args.steps))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        bench.train_step(x)
        if cuda:
            torch.cuda.synchronize()
    items, busy = profiled_items(prof, cuda)
    rows = summarize(items, wall * 1e6, busy)
    per_op = collections.Counter()
    for name, chain, t in items:
        per_op[(chain[0][0] if chain else name)[:70]] += t
    return {
        "model": bench.name,
        "wall_ms": wall * 1e3,
        "busy_ms": (busy if busy is not None else sum(t for *_, t in items)) / 1e3,
        "optimizer_step_ms": opt * 1e3,
        "categories": {c: {**r, "time": r["time"] / 1e3} for c, r in rows.items()},
        "top_ops": [(n, t / 1e3) for n, t in per_op.most_common(args.top)],
    }


def table(result: dict, args) -> str:
    clock = "device kernel" if args.device == "cuda" else "CPU op self"
    lines = [
        f"\n## {result['model']}: one training step, batch {args.batch}, {args.dtype}, "
        f"{'channels_last' if args.channels_last else 'NCHW'}: {result['wall_ms']:.1f} ms wall "
        f"(median of {args.steps}), {result['busy_ms']:.1f} ms of {clock} time",
    ]
    header = ["category", "ms", "share of step", "kernels" if args.device == "cuda" else "ops"]
    # fmt: off
    lines.append(markdown_table(header, [
        [c, f"{r['time']:.2f}", f"{100 * r['share']:.1f}%", r["count"]]
        for c, r in result["categories"].items()
    ]))
    # fmt: on
    lines.append(f"SGD step timed alone: {result['optimizer_step_ms']:.2f} ms")
    lines.append(
        "top ops: " + "; ".join(f"{n} {t:.2f} ms" for n, t in result["top_ops"][: args.top])
    )
    return "\n".join(lines)


def main(argv=None):
    p = add_common_arguments(
        argparse.ArgumentParser(
            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
    )
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="unprofiled steps timed for the wall time")
    p.add_argument("--json", default="", help="write the results to this file")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device_type = args.device
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    results, host = [], machine(args.device)
    print(f"# {host}")
    for name in args.models:
        for mode in ["eager"] if name in RESNETS else args.modes:
            bench = make_bench(name, mode, args)
            x = bench.inputs(args.batch, (args.size, args.size))
            result = profile_model(bench, x, args)
            results.append(result)
            print(table(result, args), flush=True)
            del bench, x
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": host, "args": vars(args), "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
