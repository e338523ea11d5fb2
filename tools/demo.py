#!/usr/bin/env python
"""`make demo`: the project end to end on the embedded data, on whatever machine this is.

1. The paper's networks: FLOPs/params over seeds 1..5 (Tables 2-3) and pictures of the wiring.
2. Pretrain the demo RandWire classifier on the embedded classification data (tools/train_cls.py).
3. Transfer it into the demo RandWire-FPN Faster R-CNN, fine-tune, evaluate with COCOEvaluator.
4. Transfer it into the demo RandWire-FPN Mask R-CNN (the data's exact masks), fine-tune,
   evaluate box and mask AP.
5. Train the Faster R-CNN from scratch for the iterations of step 3: the embedded-scale version
   of the paper's transfer claim (Table 5).

Every step is a command of this repository, printed before it runs. Results go to --output.
Steps 3-5 are `tools/demo.py detect`: a detector trained and evaluated as tools/train_net.py
trains it, timed (train and evaluation apart), its AP and times in OUTPUT_DIR/benchmark.json and
its val detections drawn.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from randwire_d2.utils.quiet_warnings import quiet_third_party_warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_MODELS = [
    ("configs/imagenet/randwire_ws_c78_small.yaml", "583M ± 6.2 / 5.6M ± 0.1"),
    ("configs/imagenet/randwire_ws_c109_regular.yaml", "4.0B ± 0.09 / 31.9M ± 0.66"),
    ("configs/imagenet/randwire_ws_c154_regular.yaml", "7.9B ± 0.18 / 61.5M ± 1.32"),
]
CLS_CONFIG = "configs/demo/randwire_cls_demo.yaml"
DET_CONFIG = "configs/demo/faster_rcnn_randwire_demo.yaml"
MASK_CONFIG = "configs/demo/mask_rcnn_randwire_demo.yaml"
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm")


def fmt(flops: float) -> str:
    return f"{flops / 1e9:.2f}B" if flops >= 1e9 else f"{flops / 1e6:.1f}M"


def run(cmd):
    print("\n$ " + " ".join(cmd), flush=True)
    # One torch thread per process: on a small CPU, OpenMP spin-waiting on a busy core slows
    # these tiny models by 10x or more (the data loader worker takes the other core).
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
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


def schedule(n):
    """Config overrides for an n-iteration run of a demo detector (decay at 70% and 90%)."""
    return [
        "SOLVER.MAX_ITER",
        str(n),
        "SOLVER.STEPS",
        f"({int(n * 0.7)},{int(n * 0.9)})",
        "SOLVER.WARMUP_ITERS",
        str(min(100, n // 5)),
        "SOLVER.CHECKPOINT_PERIOD",
        str(n),
    ]


def detect(out, name, weights, opts, config=DET_CONFIG):
    """`tools/demo.py detect`'s results: bbox AP, times, and segm AP for Mask R-CNN."""
    det_dir = os.path.join(out, name)
    run(
        [
            "tools/demo.py",
            "detect",
            "--config-file",
            config,
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
        results = json.load(f)
    # The trainer's evaluation hook logs every task as "<task>/<metric>" in metrics.json.
    segm = last_eval(os.path.join(det_dir, "metrics.json"), "segm/")
    if segm:
        results["segm"] = {k[len("segm/") :]: v for k, v in segm.items()}
    return results


def ap_row(label, results, task="bbox"):
    return (
        f"| {label} | "
        + " | ".join(f"{results[task][k]:.1f}" for k in AP_KEYS)
        + f" | {results['train_seconds'] / 60:.1f} min |"
    )


def train_detector(argv):
    """`tools/demo.py detect`: train and evaluate one demo detector, timed."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.utils.env import seed_all_rng

    from randwire_d2.config import load_config
    from randwire_d2.engine import Trainer, claim_output_dir, draw_detections

    class TimedTrainer(Trainer):
        eval_seconds = 0.0  # it evaluates after the last iteration

        @classmethod
        def test(cls, cfg, model, evaluators=None):
            start = time.perf_counter()
            results = super().test(cfg, model, evaluators)
            cls.eval_seconds += time.perf_counter() - start
            return results

    parser = argparse.ArgumentParser(prog="tools/demo.py detect")
    parser.add_argument("--config-file", default=DET_CONFIG)
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR's checkpoints")
    parser.add_argument("--vis", default="", help="write a picture of val detections here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # see run(); the data loader worker uses another core
    cfg = load_config(args.config_file, args.opts)
    claim_output_dir(cfg.OUTPUT_DIR, resume=False, overwrite=args.overwrite)
    if cfg.SEED >= 0:  # as default_setup: weights, data order and augmentation from SEED
        seed_all_rng(cfg.SEED)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        DatasetCatalog.get(name)  # generate the data outside the timed training
    trainer = TimedTrainer(cfg)
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()  # evaluates DATASETS.TEST after the last iteration
    eval_s = TimedTrainer.eval_seconds
    results = trainer._last_eval_results
    results = results.get(cfg.DATASETS.TEST[0], results)  # keyed by name if > 1 test set
    box, train_s = results["bbox"], time.perf_counter() - start - eval_s
    print(f"\nbbox AP {box['AP']:.1f}, AP50 {box['AP50']:.1f}; train {train_s / 60:.1f} min")
    with open(os.path.join(cfg.OUTPUT_DIR, "benchmark.json"), "w") as f:
        json.dump({"bbox": box, "train_seconds": train_s, "eval_seconds": eval_s}, f, indent=1)
    if args.vis:
        draw_detections(cfg, trainer.model, args.vis)
        print(f"val detections: {args.vis}")


def main():
    quiet_third_party_warnings()
    if sys.argv[1:2] == ["detect"]:
        return train_detector(sys.argv[2:])
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
    parser.add_argument(
        "--mask-iters",
        type=int,
        default=150,
        help="Mask R-CNN iterations (from the pretrained classifier; each costs ~1.8 Faster "
        "R-CNN iterations on CPU); 0 skips that step",
    )
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    start = time.time()

    paper_models(args.output)
    cls_results, cls_weights = pretrain(args.output)
    n, m = args.det_iters, args.mask_iters
    print(
        f"\n== 3. Fine-tune the demo Faster R-CNN from the pretrained classifier ({n} iterations) =="
    )
    pretrained = detect(args.output, "detection_pretrained", cls_weights, schedule(n))
    mask = None
    if m > 0:
        print(
            f"\n== 4. Fine-tune the demo Mask R-CNN from the pretrained classifier ({m} iterations) =="
        )
        mask = detect(args.output, "mask_pretrained", cls_weights, schedule(m), MASK_CONFIG)
    print(f"\n== 5. The Faster R-CNN from scratch ({n} iterations) ==")
    scratch = detect(args.output, "detection_scratch", "", schedule(n))

    print("\n== Summary ==")
    print("classification (embedded val set):")
    for key in sorted(cls_results):
        print(f"  {key}: {cls_results[key]:.2f}")
    print(f"\ndetection (randwire_demo_det_val, COCOEvaluator, {n} iterations):")
    print("| start | AP | AP50 | AP75 | APs | APm | train time |")
    print("|---|---|---|---|---|---|---|")
    print(ap_row("pretrained classifier", pretrained))
    print(ap_row("from scratch", scratch))
    if mask is not None:
        print(f"\nMask R-CNN (pretrained classifier, {m} iterations), box and mask AP:")
        print("| task | AP | AP50 | AP75 | APs | APm | train time |")
        print("|---|---|---|---|---|---|---|")
        print(ap_row("bbox", mask))
        print(ap_row("segm", mask, "segm"))
    print(
        f"\ndemo finished in {(time.time() - start) / 60:.1f} min on {os.cpu_count()} CPUs; "
        f"pictures of wirings and detections in {args.output}"
    )


if __name__ == "__main__":
    main()
