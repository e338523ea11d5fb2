#!/usr/bin/env python
"""`make demo`: the project end to end on the embedded data, on whatever machine this is.

1. The paper's networks: FLOPs/params over seeds 1..5 (Tables 2-3) and pictures of the wiring.
2. Pretrain the demo RandWire classifier on the embedded classification data (tools/train_cls.py).
3. Transfer it into the demo RandWire-FPN Faster R-CNN, fine-tune, evaluate with COCOEvaluator.
4. Train the same detector from scratch for the same iterations: the embedded-scale version of
   the paper's transfer claim (Table 5).

Every step is a command of this repository, printed before it runs. Results go to --output.
"""

import argparse
import json
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
CLS_CONFIG = "configs/demo/randwire_cls_demo.yaml"
DET_CONFIG = "configs/demo/faster_rcnn_randwire_demo.yaml"


def fmt(flops: float) -> str:
    return f"{flops / 1e9:.2f}B" if flops >= 1e9 else f"{flops / 1e6:.1f}M"


def run(cmd):
    print("\n$ " + " ".join(cmd), flush=True)
    # One torch thread per process: on a small CPU, OpenMP spin-waiting on a busy core slows
    # these tiny models by 10x or more (the data loader worker takes the other core).
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # torch.jit deprecation notes
    subprocess.run([sys.executable] + cmd, cwd=ROOT, check=True, env=env)


def paper_models(out):
    from randwire_d2.complexity import seed_statistics
    from randwire_d2.config import load_config

    print("== 1. The paper's RandWire-WS(4, 0.75) networks, N=32, 224x224, seeds 1..5 (fvcore) ==")
    print("| config | FLOPs | params | paper (Tables 2-3) |")
    print("|---|---|---|---|")
    for path, paper in PAPER_MODELS:
        st = seed_statistics(load_config(os.path.join(ROOT, path), freeze=False), range(1, 6))
        print(
            f"| {os.path.basename(path)} | {fmt(st['flops_mean'])} ± {fmt(st['flops_std'])} "
            f"| {st['params_mean'] / 1e6:.2f}M ± {st['params_std'] / 1e6:.2f} | {paper} |",
            flush=True,
        )
    for path, _ in PAPER_MODELS:
        name = os.path.splitext(os.path.basename(path))[0]
        run(
            [
                "tools/draw_wiring.py",
                "--config-file",
                path,
                "--output",
                os.path.join(out, f"wiring_{name}.png"),
            ]
        )


def last_eval(metrics_path, prefix):
    """The last metrics.json values whose keys start with `prefix`."""
    found = {}
    with open(metrics_path) as f:
        for line in f:
            row = json.loads(line)
            found.update({k: v for k, v in row.items() if k.startswith(prefix)})
    return found


def pretrain(out):
    print("\n== 2. Pretrain the demo RandWire classifier on the embedded classification data ==")
    cls_dir = os.path.join(out, "classification")
    run(["-m", "randwire_d2.data.cls_demo", "datasets/randwire_demo_cls"])
    run(["tools/train_cls.py", "--config-file", CLS_CONFIG, "--overwrite", "OUTPUT_DIR", cls_dir])
    run(
        [
            "tools/draw_wiring.py",
            "--checkpoint",
            os.path.join(cls_dir, "model_final.pth"),
            "--output",
            os.path.join(out, "wiring_demo_classifier.png"),
        ]
    )
    return last_eval(os.path.join(cls_dir, "metrics.json"), "val_"), os.path.join(
        cls_dir, "model_final.pth"
    )


def detect(out, name, weights, opts):
    det_dir = os.path.join(out, name)
    run(
        [
            "benchmarks/demo_detection.py",
            "--config-file",
            DET_CONFIG,
            "--overwrite",
            "--vis",
            os.path.join(out, f"{name}_val_detections.jpg"),
            "OUTPUT_DIR",
            det_dir,
            "MODEL.WEIGHTS",
            weights,
        ]
        + opts
    )
    with open(os.path.join(det_dir, "benchmark.json")) as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "demo"))
    parser.add_argument(
        "--det-iters",
        type=int,
        default=500,
        help="detector iterations, for both the pretrained and the from-scratch run",
    )
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    start = time.time()

    paper_models(args.output)
    cls_results, cls_weights = pretrain(args.output)
    n = args.det_iters
    opts = [
        "SOLVER.MAX_ITER",
        str(n),
        "SOLVER.STEPS",
        f"({int(n * 0.7)},{int(n * 0.9)})",
        "SOLVER.WARMUP_ITERS",
        str(min(100, n // 5)),
        "SOLVER.CHECKPOINT_PERIOD",
        str(n),
    ]
    print(
        f"\n== 3. Fine-tune the demo Faster R-CNN from the pretrained classifier ({n} iterations) =="
    )
    pretrained = detect(args.output, "detection_pretrained", cls_weights, opts)
    print(f"\n== 4. The same detector from scratch ({n} iterations) ==")
    scratch = detect(args.output, "detection_scratch", "", opts)

    print("\n== Summary ==")
    print("classification (embedded val set):")
    for key in sorted(cls_results):
        print(f"  {key}: {cls_results[key]:.2f}")
    print(f"\ndetection (randwire_demo_det_val, COCOEvaluator, {n} iterations):")
    print("| start | AP | AP50 | AP75 | APs | APm | train time |")
    print("|---|---|---|---|---|---|---|")
    for label, r in [("pretrained classifier", pretrained), ("from scratch", scratch)]:
        b = r["bbox"]
        print(
            f"| {label} | "
            + " | ".join(f"{b[k]:.1f}" for k in ("AP", "AP50", "AP75", "APs", "APm"))
            + f" | {r['train_seconds'] / 60:.1f} min |"
        )
    print(
        f"\ndemo finished in {(time.time() - start) / 60:.1f} min on {os.cpu_count()} CPUs; "
        f"pictures of wirings and detections in {args.output}"
    )


if __name__ == "__main__":
    main()
