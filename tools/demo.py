#!/usr/bin/env python
"""`make demo`: the project end to end on the embedded data, on whatever machine this is.

1. The paper's networks: FLOPs/params over seeds 1..5 (Tables 2-3) and pictures of the wiring.
"""

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_MODELS = [
    ("configs/imagenet/randwire_ws_c78_small.yaml", "583M ± 6.2 / 5.6M ± 0.1"),
    ("configs/imagenet/randwire_ws_c109_regular.yaml", "4.0B ± 0.09 / 31.9M ± 0.66"),
    ("configs/imagenet/randwire_ws_c154_regular.yaml", "7.9B ± 0.18 / 61.5M ± 1.32"),
]


def fmt(flops: float) -> str:
    return f"{flops / 1e9:.2f}B" if flops >= 1e9 else f"{flops / 1e6:.1f}M"


def run(cmd):
    print("\n$ " + " ".join(cmd), flush=True)
    subprocess.run([sys.executable] + cmd, cwd=ROOT, check=True)


def paper_models(out):
    from detectron2.config import get_cfg

    from randwire_d2 import add_randwire_config
    from randwire_d2.complexity import seed_statistics

    print("== The paper's RandWire-WS(4, 0.75) networks, N=32, 224x224, seeds 1..5 (fvcore) ==")
    print("| config | FLOPs | params | paper (Tables 2-3) |")
    print("|---|---|---|---|")
    for path, paper in PAPER_MODELS:
        cfg = get_cfg()
        add_randwire_config(cfg)
        cfg.merge_from_file(os.path.join(ROOT, path))
        st = seed_statistics(cfg, range(1, 6))
        print(f"| {os.path.basename(path)} | {fmt(st['flops_mean'])} ± {fmt(st['flops_std'])} "
              f"| {st['params_mean'] / 1e6:.2f}M ± {st['params_std'] / 1e6:.2f} | {paper} |", flush=True)
    for path, _ in PAPER_MODELS:
        name = os.path.splitext(os.path.basename(path))[0]
        run(["tools/draw_wiring.py", "--config-file", path, "--output", os.path.join(out, f"wiring_{name}.png")])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "demo"))
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    start = time.time()
    paper_models(args.output)
    print(f"\ndemo finished in {time.time() - start:.0f}s; pictures in {args.output}")


if __name__ == "__main__":
    main()
