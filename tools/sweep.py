#!/usr/bin/env python
"""The paper's experiments as one command: generator / node-op / seed sweeps of tools/train_cls.py.

    python tools/sweep.py --preset fig3 --data-root datasets/imagenet --num-gpus 8 --dry-run
    python tools/sweep.py --preset fig3 --data-root datasets/imagenet --num-gpus 8   # train, aggregate
    python tools/sweep.py --preset fig6 ...        # Fig. 3's generators x 4 node ops, C matching FLOPs
    python tools/sweep.py --preset table2 | table3 ...
    python tools/sweep.py --config-file configs/demo/randwire_cls_demo.yaml --seeds 1-3 \\
        --generators er:P=0.2 --generators ws:K=4,P=0,0.75 --node-ops sep_conv3x3 \\
        --node-ops conv3x3 PRETRAIN.EPOCHS 10
    python tools/sweep.py --preset fig3 ... --slurm --partition learnfair --nodes 1 --num-gpus 8 \\
        --timeout-min 4320                      # one submitit job per run; --wait to aggregate
    python tools/sweep.py --collect output/sweeps/fig3   # tables and charts from what is on disk

Every run is an ordinary train_cls.py run in OUTPUT_DIR <output>/<run name>. Re-running the same
command skips finished runs and resumes interrupted ones; a run whose results.json is corrupt or out
of range is trained again (--collect leaves it out), with a warning naming the file. A run another
sweep is training is reported as in progress elsewhere, not as failed. KEY VALUE overrides go to
every run; keys the sweep sets per run (seeds, generator, node op, OUTPUT_DIR) are refused. A sweep
has at most 2000 runs (randwire_d2.sweep.MAX_RUNS).
"""

import argparse
import os
import sys

from randwire_d2.graphs import parse_seeds
from randwire_d2.limits import MAX_JOBS
from randwire_d2.sweep import (
    NODE_OPS,
    PRESETS,
    expand,
    load_records,
    matching_channels,
    parse_generators,
    run_complexity,
    run_sweep,
    save_plan,
    submit_sweep,
)
from randwire_d2.sweep.report import report
from randwire_d2.utils.args import bounded_int
from randwire_d2.utils.quiet_warnings import quiet_third_party_warnings
from randwire_d2.utils.tables import markdown_table


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="the paper's sweeps")
    parser.add_argument(
        "--config-file", action="append", default=[], help="base config (repeatable)"
    )
    parser.add_argument(
        "--generators", action="append", default=[], help="e.g. er:P=0.1,0.2 (repeatable)"
    )
    parser.add_argument("--node-ops", action="append", default=[], choices=NODE_OPS)
    parser.add_argument("--match-flops", action="store_true", help="C per node op keeps FLOPs")
    parser.add_argument("--seeds", default="1-5", help="e.g. 1-5 or 1,3 (default 1-5)")
    parser.add_argument("--data-root", default="", help="PRETRAIN.DATA_ROOT of every run")
    parser.add_argument("--output", default="", help="sweep folder (default output/sweeps/NAME)")
    parser.add_argument("--num-gpus", type=int, default=1, help="per run (and per node)")
    parser.add_argument(
        "--jobs", type=bounded_int(1, MAX_JOBS, "MAX_JOBS"), default=1, help="local runs at once"
    )
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    parser.add_argument("--collect", metavar="SWEEP_DIR", help="only aggregate SWEEP_DIR")
    slurm = parser.add_argument_group("Slurm (through submitit)")
    slurm.add_argument("--slurm", action="store_true", help="submit each run as a job")
    slurm.add_argument("--partition", default="")
    slurm.add_argument("--nodes", type=int, default=1, help="machines per run")
    slurm.add_argument("--timeout-min", type=int, default=72 * 60)
    slurm.add_argument("--wait", action="store_true", help="wait for the jobs, then aggregate")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of every run")
    return parser


def plan(args):
    """(sweep folder, runs, {run name: (FLOPs, params)})."""
    configs, generators, ops, opts = PRESETS[args.preset] if args.preset else ([], [], [], [])
    configs = args.config_file or configs
    generators = parse_generators(args.generators) if args.generators else generators
    ops = args.node_ops or ops or NODE_OPS[:1]
    if not configs or not generators:
        raise SystemExit("give --preset, or --config-file and --generators")
    opts = list(opts) + (["PRETRAIN.DATA_ROOT", args.data_root] if args.data_root else [])
    opts += args.opts
    match = args.match_flops or args.preset == "fig6"
    seeds = parse_seeds(args.seeds)
    channels_for = matching_channels(ops[0], seeds[0]) if match else None
    runs = expand(configs, generators, ops, seeds, opts, channels_for)
    name = args.preset or os.path.splitext(os.path.basename(configs[0]))[0]
    folder = args.output or os.path.join("output", "sweeps", name)
    return folder, runs, run_complexity(runs)


def first_metric(records) -> str:
    """val_<first test crop>/top1 of the sweep's results (the paper's 224 on ImageNet)."""
    for r in records:
        if r["results"]:
            return f"{next(iter(r['results']))}/top1"
    return "val_224/top1"


def main(argv=None):
    quiet_third_party_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    misplaced = [o for o in args.opts if o.startswith("--")]
    if misplaced:
        parser.error(f"options {misplaced} must come before the KEY VALUE overrides")
    try:  # a bad flag, override or sweep folder is named in one line, not a traceback
        if args.collect:
            records = load_records(args.collect)
        else:
            folder, runs, complexity = plan(args)
            if not args.dry_run:
                save_plan(runs, folder, complexity)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    if args.collect:
        print(report(records, args.collect, first_metric(records)))
        return 0
    if args.dry_run:
        print(f"{len(runs)} runs in {folder}:")
        head = ["run", "config", "seed", "output dir", "FLOPs (M)", "params (M)"]
        rows = [
            [r.name, r.config_file, r.seed, os.path.join(folder, r.name)]
            + [f"{complexity[r.name][0] / 1e6:.1f}", f"{complexity[r.name][1] / 1e6:.2f}"]
            for r in runs
        ]
        print(markdown_table(head, rows))
        return 0
    if args.slurm:
        failed = submit_sweep(
            runs,
            folder,
            num_gpus=args.num_gpus,
            nodes=args.nodes,
            wait=args.wait,
            timeout_min=args.timeout_min,
            slurm_partition=args.partition,
        )
        if not args.wait:
            print(f"submitted; aggregate later with: python tools/sweep.py --collect {folder}")
            return 0
    else:
        failed = run_sweep(runs, folder, jobs=args.jobs, num_gpus=args.num_gpus)
    records = load_records(folder)
    print(report(records, folder, first_metric(records)))
    for name, error in failed.items():
        print(f"FAILED {name}: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
