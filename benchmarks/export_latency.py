#!/usr/bin/env python
"""Exported RandWire classifiers: graph op counts and onnxruntime vs eager latency, one process.

    python benchmarks/export_latency.py                      # demo classifier + C=109 regular
    python benchmarks/export_latency.py --configs configs/imagenet/randwire_ws_c78_small.yaml \\
        --size 224 --runs 50 --threads 2

Per config (random weights; SEED from the config), at --size (default: the config's
PRETRAIN.TEST_CROPS[0]) and batch --batch:
- op counts of images -> logits traced three ways: the "reference" execution (per-node loop)
  and the "fast" one as they are, and "export" (`freeze_for_export`: what tools/export_model.py
  writes). ONNX: nodes other than Constant; TorchScript: aten:: nodes of the inlined trace;
  torch.export: call_function nodes.
- latency: median milliseconds per call over --runs, the variants interleaved in each round:
  eager reference / fast / export (no_grad) and onnxruntime (CPU provider, as many threads as
  torch) on the exported ONNX file.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Dict

# First: registers the RandWire backbones, and quiets the notes Detectron2's imports print.
import randwire_d2  # noqa: F401  # isort: split
import torch
from detectron2.modeling import build_model

from randwire_d2.config import load_config
from randwire_d2.export import (
    EXECUTIONS_COMPARED,
    ClassifierExport,
    classifier_samples,
    export_onnx,
    markdown_table,
    onnx_session,
    op_counts,
)
from randwire_d2.modeling import RandWireClassifier
from randwire_d2.utils.quiet_warnings import quiet_export_warnings

if __package__:  # python -m benchmarks.export_latency
    from .bench_common import machine
else:  # python benchmarks/export_latency.py: its folder is sys.path[0]
    from bench_common import machine

CONFIGS = [
    "configs/demo/randwire_cls_demo.yaml",
    "configs/imagenet/randwire_ws_c109_regular.yaml",
]
FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript", "pt2": "torch.export"}


@quiet_export_warnings()
def classifier_latency(
    model: RandWireClassifier, images: torch.Tensor, runs: int = 20, warmup: int = 3
) -> Dict[str, float]:
    """Median milliseconds per call on `images`, the runs of every variant interleaved in one
    process: eager "reference" and "fast" executions, eager "export" (frozen), and
    "onnxruntime" (the frozen model's ONNX file, as many threads as torch)."""
    fns = {}
    for execution in EXECUTIONS_COMPARED:
        fns[f"eager {execution}"] = ClassifierExport(_variant(model, execution)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with torch.no_grad():
            export_onnx(fns["eager export"], (images,), path, ["images"])
        session = onnx_session(path)
        feed = {session.get_inputs()[0].name: images.cpu().numpy()}
        fns["onnxruntime"] = lambda _x: session.run(None, feed)
        times = {k: [] for k in fns}
        with torch.no_grad():
            for i in range(warmup + runs):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn(images)
                    if i >= warmup:
                        times[name].append(time.perf_counter() - start)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def measure(config: str, size: int, batch: int, runs: int, formats) -> dict:
    cfg = load_config(config, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    size = size or cfg.PRETRAIN.TEST_CROPS[0]
    x = classifier_samples(size, batch, 1)[0]
    start = time.perf_counter()
    counts = op_counts(model, ClassifierExport, (x,), formats)
    count_s = time.perf_counter() - start
    latency = classifier_latency(model, x, runs=runs)
    return {"config": config, "size": size, "counts": counts, "ms": latency, "count_s": count_s}


def ops_table(results, formats) -> str:
    header = ["config", "input"] + [
        f"{FORMAT_NAMES[f]} ops ({' / '.join(EXECUTIONS_COMPARED)})" for f in formats
    ]
    rows = [
        [os.path.basename(r["config"]), f"{r['size']}x{r['size']}"]
        + [" / ".join(str(r["counts"][e][f]) for e in EXECUTIONS_COMPARED) for f in formats]
        for r in results
    ]
    return markdown_table(header, rows)


def latency_table(results) -> str:
    names = list(results[0]["ms"])
    header = ["config", "input"] + [f"{n} (ms)" for n in names] + ["eager fast / onnxruntime"]
    rows = [
        [os.path.basename(r["config"]), f"{r['size']}x{r['size']}"]
        + [f"{r['ms'][n]:.2f}" for n in names]
        + [f"{r['ms']['eager fast'] / r['ms']['onnxruntime']:.2f}x"]
        for r in results
    ]
    return markdown_table(header, rows)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--configs", nargs="+", default=CONFIGS)
    p.add_argument("--size", type=int, default=0, help="input side (default: TEST_CROPS[0])")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads")
    p.add_argument(
        "--formats", nargs="+", default=["onnx", "torchscript", "pt2"], choices=list(FORMAT_NAMES)
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for config in args.configs:
        r = measure(config, args.size, args.batch, args.runs, args.formats)
        print(
            f"{config}: traced {len(EXECUTIONS_COMPARED)} ways in {r['count_s']:.0f} s",
            file=sys.stderr,
        )
        results.append(r)
    print(f"Machine: {machine()}; batch {args.batch}, median of {args.runs} interleaved runs.\n")
    print(ops_table(results, args.formats))
    print()
    print(latency_table(results))


if __name__ == "__main__":
    main()
