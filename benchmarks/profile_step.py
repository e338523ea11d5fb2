#!/usr/bin/env python
"""Where a training step's time goes: torch.profiler over one step, grouped by kind of op.

    python benchmarks/profile_step.py --models rw-c109 r50 --modes reference fast
    python benchmarks/profile_step.py --device cuda --dtype bf16 --channels-last --batch 128

Prints, per model, the self time (CPU, or CUDA kernels on --device cuda) of convolutions
(forward / backward), aggregation and other elementwise ops, normalization, and the rest, plus
the op count and the top ops. Same options as benchmarks/throughput.py.
"""

import argparse
import collections
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import RESNETS, add_common_arguments, make_bench  # noqa: E402

KINDS = [
    ("conv backward", ("convolution_backward", "ConvolutionBackward", "wgrad", "dgrad")),
    ("conv forward", ("convolution", "conv2d", "cudnn_convolution", "fprop", "implicit_gemm")),
    ("norm", ("batch_norm", "bn_", "batchnorm", "welford", "native_batch_norm")),
    (
        "elementwise",
        (
            "mul",
            "add",
            "relu",
            "threshold",
            "clamp",
            "sigmoid",
            "div",
            "dot",
            "sum",
            "elementwise",
            "vectorized",
            "reduce",
            "copy",
            "fill",
            "where",
        ),
    ),
]


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k.lower() in low for k in keys):
            return kind
    return "other"


def main(argv=None):
    p = add_common_arguments(
        argparse.ArgumentParser(
            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
    )
    p.add_argument("--top", type=int, default=8)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device_type = args.device
    cuda = args.device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for name in args.models:
        for mode in ["eager"] if name in RESNETS else args.modes:
            bench = make_bench(name, mode, args)
            x = bench.inputs(args.batch, (args.size, args.size))
            for _ in range(2):
                bench.train_step(x)
            if cuda:
                torch.cuda.synchronize()
            with profile(activities=activities) as prof:
                bench.train_step(x)
                if cuda:
                    torch.cuda.synchronize()
            totals, counts = collections.Counter(), collections.Counter()
            per_op = collections.Counter()
            for e in prof.key_averages():
                t = (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e3  # ms
                if t <= 0 or (cuda and e.device_type.name != "CUDA"):
                    continue
                k = kind_of(e.key)
                totals[k] += t
                counts[k] += e.count
                per_op[e.key[:70]] += t
            total = sum(totals.values())
            clock = "CUDA kernel" if cuda else "CPU"
            print(
                f"\n## {bench.name}: one training step, batch {args.batch}, {args.dtype}, "
                f"{'channels_last' if args.channels_last else 'NCHW'}: {total:.0f} ms of {clock} time"
            )
            print("| kind | ms | share | calls |\n|---|---|---|---|")
            for k, t in totals.most_common():
                print(f"| {k} | {t:.0f} | {100 * t / total:.0f}% | {counts[k]} |")
            print(
                "top ops: " + "; ".join(f"{n} {t:.0f} ms" for n, t in per_op.most_common(args.top))
            )


if __name__ == "__main__":
    main()
