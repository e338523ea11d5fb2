#!/usr/bin/env python
"""Model-only vs end-to-end img/s of tools/train_cls.py's training step.

    python benchmarks/train_step.py --config-file configs/imagenet/randwire_ws_c109_regular.yaml \
        --iters 20 --warmup 5 PRETRAIN.DATA_ROOT datasets/imagenet SOLVER.IMS_PER_BATCH 128
    python benchmarks/train_step.py --config-file ... --runs model \
        --compare PRETRAIN.CUDA_GRAPHS False True --loss-tol 1e-3 ...     # graphs vs eager
    python benchmarks/train_step.py --config-file configs/demo/randwire_cls_demo.yaml \
        --iters 2 --warmup 1 MODEL.DEVICE cpu SOLVER.IMS_PER_BATCH 4     # a CPU smoke run

The config is set up exactly as tools/train_cls.py sets it up (its `setup`: file + KEY VALUE
overrides, data checked, epochs resolved into SOLVER.*), with SOLVER.MAX_ITER = warm-up +
timed iterations, and trained by its ClassificationTrainer:

    end-to-end   the real data loader (DATALOADER.NUM_WORKERS workers, decode, augmentation)
    model-only   the same trainer whose loader yields its first real batch at every step

Each step is timed alone (device synchronized before and after; hooks, checkpoints and
evaluation are not part of it, the metrics writes of the step are). Reported: median img/s of
the timed iterations, the seconds of the first --warmup iterations (compilation, CUDA graph
capture, cuDNN autotuning, worker start-up) and of building the trainer, and end-to-end ÷
model-only. `--compare KEY A B` runs everything with KEY A and with KEY B (same seed, same
batches) and compares their speed and their per-iteration losses (`--loss-tol`: the largest
relative difference allowed; exit status 1 beyond it).

OUTPUT_DIR: a temporary folder, removed afterwards, unless given.
"""

import argparse
import datetime
import gc
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

# First: it quiets the notes that Detectron2's imports print.
import randwire_d2  # noqa: F401  # isort: split
import torch
from detectron2.engine import hooks
from detectron2.utils.env import seed_all_rng

from randwire_d2.engine import ClassificationTrainer
from randwire_d2.engine.trainer import release_output_dir
from randwire_d2.utils.args import bounded_int
from randwire_d2.utils.tables import markdown_table

if __package__:  # python -m benchmarks.train_step
    from .bench_common import import_tool, machine
else:  # python benchmarks/train_step.py: its folder is sys.path[0]
    from bench_common import import_tool, machine

train_cls = import_tool("train_cls")

RUNS = {"e2e": "end-to-end", "model": "model-only"}
# Hooks that are not part of a training step: they would only add checkpoints and evaluation.
NOT_TIMED_HOOKS = (hooks.EvalHook, hooks.PeriodicCheckpointer)


class RepeatedBatch:
    """An endless loader of one batch."""

    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        while True:
            yield self.batch


class ModelOnlyTrainer(ClassificationTrainer):
    """ClassificationTrainer whose training loader yields the real loader's first batch at
    every step: the step without data loading."""

    _first_batches = {}

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0, seed=None):
        key = (cfg.dump(), start_iter, seed)
        if key not in cls._first_batches:
            loader = super().build_train_loader(cfg, start_iter, seed)
            batches = iter(loader)
            cls._first_batches[key] = next(batches)
            del batches, loader  # the workers stop
        return RepeatedBatch(cls._first_batches[key])


def setup_config(config_file: str, opts, output_dir: str):
    """tools/train_cls.py's setup of `config_file` + `opts`, OUTPUT_DIR `output_dir`."""
    args = train_cls.build_parser().parse_args(
        ["--config-file", config_file, *opts, "OUTPUT_DIR", output_dir]
    )
    cfg = train_cls.setup(args)
    release_output_dir(cfg.OUTPUT_DIR)  # each trainer claims it for its run
    return cfg


def latest_loss(trainer) -> float:
    """The total loss the trainer recorded at its current iteration (nan if none)."""
    history = trainer.storage.histories().get("total_loss")
    if history is None or not history.values():
        return math.nan
    value, it = history.values()[-1]
    return float(value) if it == trainer.iter else math.nan


def measure(cfg, run: str, iters: int, warmup: int) -> dict:
    """Train cfg.SOLVER.MAX_ITER (= warmup + iters) iterations of one run ("e2e" / "model")
    and time each step."""
    cuda = cfg.MODEL.DEVICE.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    seed_all_rng(cfg.SEED)  # as default_setup does: every run starts from the same weights
    start = time.perf_counter()
    trainer = (ModelOnlyTrainer if run == "model" else ClassificationTrainer)(cfg)
    trainer.resume_or_load(resume=False)
    sync()
    build_s = time.perf_counter() - start
    trainer._hooks = [h for h in trainer._hooks if not isinstance(h, NOT_TIMED_HOOKS)]
    times, losses = [], []
    step = trainer.run_step

    def timed_step():
        sync()
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
        losses.append(latest_loss(trainer))

    trainer.run_step = timed_step
    try:
        trainer.train()
    finally:
        release_output_dir(cfg.OUTPUT_DIR)
    metrics = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
    if os.path.exists(metrics):  # kept per run
        os.replace(metrics, os.path.join(cfg.OUTPUT_DIR, f"metrics_{run}.json"))
    del trainer, step, timed_step
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    batch = cfg.SOLVER.IMS_PER_BATCH
    timed = times[warmup:] or times[-1:]
    return {
        "run": RUNS[run],
        "img_per_s": batch / statistics.median(timed),
        "step_ms": 1e3 * statistics.median(timed),
        "warmup_s": sum(times[:warmup]),
        "build_s": build_s,
        "step_s": times,
        "losses": losses,
    }


def compare_losses(a, b) -> dict:
    """Largest absolute and relative difference of two runs' per-iteration losses."""
    pairs = [(x, y) for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))]
    if not pairs:
        return {"iterations": 0, "max_abs": math.nan, "max_rel": math.nan}
    diffs = [abs(x - y) for x, y in pairs]
    rel = [d / max(abs(x), abs(y), 1e-12) for d, (x, y) in zip(diffs, pairs)]
    return {"iterations": len(pairs), "max_abs": max(diffs), "max_rel": max(rel)}


def table(rows) -> str:
    header = ["run", "img/s (median)", "step ms (median)", "warm-up s", "build s"]
    # fmt: off
    return markdown_table(header, [
        [f"{r['variant']} {r['run']}".strip(), f"{r['img_per_s']:.4g}", f"{r['step_ms']:.1f}",
         f"{r['warmup_s']:.2f}", f"{r['build_s']:.2f}"]
        for r in rows
    ])
    # fmt: on


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config-file", required=True)
    p.add_argument("--iters", type=bounded_int(1, 100_000), default=20, help="timed iterations")
    p.add_argument(
        "--warmup", type=bounded_int(0, 100_000), default=5, help="untimed iterations first"
    )
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument(
        "--compare",
        nargs=3,
        metavar=("KEY", "A", "B"),
        help="run with KEY A and with KEY B; compare speed and losses",
    )
    p.add_argument(
        "--loss-tol",
        type=float,
        default=None,
        help="with --compare: largest relative loss difference allowed (exit 1 beyond)",
    )
    p.add_argument("--json", default="", help="write the results to this file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def output_dir_of(opts):
    """(opts without OUTPUT_DIR, OUTPUT_DIR, whether it is a temporary folder made here)."""
    keys = opts[::2]
    if "OUTPUT_DIR" not in keys:
        return opts, tempfile.mkdtemp(prefix="train_step_"), True
    i = 2 * keys.index("OUTPUT_DIR")
    return opts[:i] + opts[i + 2 :], opts[i + 1], False


def compare(rows, variants, args) -> dict:
    """Per run: B's img/s ÷ A's, warm-up seconds, loss differences (and `within_tol`)."""
    key, a, b = args.compare
    out = {}
    for run in map(RUNS.get, args.runs):
        ra, rb = (
            next(r for r in rows if (r["variant"], r["run"]) == (v, run)) for v, _ in variants
        )
        cmp = compare_losses(ra["losses"], rb["losses"])
        cmp["speed_ratio"] = rb["img_per_s"] / ra["img_per_s"]
        cmp["warmup_s"] = {a: ra["warmup_s"], b: rb["warmup_s"]}
        within = ""
        if args.loss_tol is not None:
            cmp["within_tol"] = cmp["iterations"] > 0 and cmp["max_rel"] <= args.loss_tol
            within = f", within {args.loss_tol:g}: {'yes' if cmp['within_tol'] else 'NO'}"
        out[run] = cmp
        print(
            f"{run}: {key} {b or repr(b)} ÷ {a or repr(a)} {cmp['speed_ratio']:.2f} (img/s); "
            f"warm-up {rb['warmup_s']:.1f} s vs {ra['warmup_s']:.1f} s; losses of "
            f"{cmp['iterations']} iterations: max |Δ| {cmp['max_abs']:.3g}, relative "
            f"{cmp['max_rel']:.3g}{within}"
        )
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        raise SystemExit(f"--iters {args.iters} / --warmup {args.warmup}: expected >= 1 / >= 0")
    opts, output_dir, temporary = output_dir_of(list(args.opts))
    opts += ["SOLVER.MAX_ITER", str(args.warmup + args.iters)]
    variants = [("", [])]
    if args.compare:
        key, a, b = args.compare
        variants = [(f"{key}={v or repr(v)}", [key, v]) for v in (a, b)]
    rows = []
    try:
        for label, extra in variants:
            cfg = setup_config(args.config_file, opts + extra, output_dir)
            for run in args.runs:
                print(f"== {label} {RUNS[run]}".strip(), file=sys.stderr, flush=True)
                rows.append({"variant": label, **measure(cfg, run, args.iters, args.warmup)})
    finally:
        if temporary:
            shutil.rmtree(output_dir, ignore_errors=True)

    date, host = datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), machine(cfg.MODEL.DEVICE)
    print(
        f"\n# {host}, {date}; {args.config_file}, batch "
        f"{cfg.SOLVER.IMS_PER_BATCH}, {args.iters} timed iterations after {args.warmup} "
        f"warm-up; overrides: {' '.join(args.opts) or '-'}"
    )
    print(table(rows))
    out = dict(
        machine=host,
        date=date,
        config=args.config_file,
        opts=args.opts,
        batch=cfg.SOLVER.IMS_PER_BATCH,
        iters=args.iters,
        warmup=args.warmup,
        runs=rows,
        ratios={},
    )
    for label, _ in variants:
        by_run = {r["run"]: r for r in rows if r["variant"] == label}
        if len(by_run) == 2:
            ratio = by_run["end-to-end"]["img_per_s"] / by_run["model-only"]["img_per_s"]
            out["ratios"][f"{label} end-to-end/model-only".strip()] = ratio
            print(f"{label} end-to-end ÷ model-only: {ratio:.2f}".strip())
    if args.compare:
        out["compare"] = compare(rows, variants, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    failed = [run for run, c in out.get("compare", {}).items() if not c.get("within_tol", True)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
