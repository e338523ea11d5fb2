#!/usr/bin/env python
"""FLOPs (as fvcore counts them, one multiply-add = one FLOP) and parameters of a RandWire
classifier config: in closed form (instant), or with --trace by fvcore traces of the built model.

python tools/analyze_model.py --config-file configs/imagenet/randwire_ws_c78_small.yaml
python tools/analyze_model.py --config-file ... --seeds 1-5        # mean +- std (Tables 2-3)
python tools/analyze_model.py --config-file ... --find-channels 583M
python tools/analyze_model.py --config-file ... --trace             # count by fvcore traces
python tools/analyze_model.py --config-file ... --update-table tests/complexity_table.json  # traced
"""

import argparse
import json
import os
import sys

from randwire_d2.utils.quiet_warnings import quiet_third_party_warnings  # isort: split
from detectron2.modeling import build_model

from randwire_d2.complexity import (
    analytic_by_stage,
    find_channels,
    flops_by_stage,
    parse_count,
    seed_statistics,
    wiring_stats,
)
from randwire_d2.config import generator_params, load_config
from randwire_d2.graphs import parse_seeds
from randwire_d2.limits import MAX_IMAGE_SIDE
from randwire_d2.utils.args import bounded_int


def setup(args):
    return load_config(args.config_file, list(args.opts) + ["MODEL.DEVICE", "cpu"])


def describe(cfg, size, trace=False):
    rw = cfg.MODEL.RANDWIRE
    model = build_model(cfg)
    theta = ", ".join(f"{k}={v}" for k, v in generator_params(cfg).items())
    print(
        f"{rw.GENERATOR}({theta}), N={rw.NUM_NODES}, C={rw.CHANNELS}, regime={rw.REGIME}, "
        f"node op={rw.NODE_OP}, seed={rw.SEED}, wiring {model.backbone.wiring.fingerprint()}"
    )
    stats = wiring_stats(model.backbone.wiring)
    shapes = model.backbone._out_feature_channels
    print("\n| stage | nodes | edges | input/output nodes | channels | FLOPs (M) | params (M) |")
    print("|---|---|---|---|---|---|---|")
    total_f = total_p = 0
    by_stage = flops_by_stage(model, size) if trace else analytic_by_stage(cfg, size)
    for name, (f, p) in by_stage.items():
        total_f, total_p = total_f + f, total_p + p
        s = stats.get(name)
        nodes, edges, io = (
            (s["nodes"], s["edges"], f"{s['input_nodes']}/{s['output_nodes']}")
            if s
            else ("-", "-", "-")
        )
        print(
            f"| {name} | {nodes} | {edges} | {io} | {shapes.get(name, '-')} | {f / 1e6:.1f} | {p / 1e6:.3f} |"
        )
    print(f"| total | | | | | {total_f / 1e6:.1f} | {total_p / 1e6:.3f} |")
    print(f"\nat {size}x{size}: FLOPs {total_f / 1e6:.1f}M, params {total_p / 1e6:.3f}M")
    return total_f, total_p


def main():
    quiet_third_party_warnings()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--input-size",
        type=bounded_int(1, MAX_IMAGE_SIDE, "limits.MAX_IMAGE_SIDE"),
        default=224,
        help="square input side (224; 320 for Table 4)",
    )
    parser.add_argument(
        "--seeds", default="", help="e.g. 1-5 or 1,3: mean and std over these seeds"
    )
    parser.add_argument(
        "--find-channels",
        default="",
        metavar="FLOPS",
        help="find C whose mean FLOPs over --seeds (default 1-5) is nearest, e.g. 583M",
    )
    parser.add_argument(
        "--update-table",
        default="",
        metavar="JSON",
        help="record this config's FLOPs/params (seed from the config) in a JSON table",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="count by fvcore traces of the built models (the closed form's ground truth)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    if not os.path.isfile(args.config_file):
        sys.exit(f"--config-file {args.config_file!r} does not exist")
    cfg = setup(args)
    if cfg.MODEL.META_ARCHITECTURE != "RandWireClassifier":
        sys.exit(
            f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r}: this tool counts "
            "RandWireClassifier configs; for detectors use Detectron2's tools/analyze_model.py"
        )

    # The frozen table holds what fvcore traces: its numbers are always traced.
    flops, params = describe(cfg, args.input_size, args.trace or bool(args.update_table))
    if args.seeds:
        st = seed_statistics(cfg, parse_seeds(args.seeds), args.input_size, args.trace)
        for s, (f, p) in st["per_seed"].items():
            print(f"seed {s}: FLOPs {f / 1e6:.1f}M, params {p / 1e6:.3f}M")
        print(
            f"seeds {args.seeds}: FLOPs {st['flops_mean'] / 1e6:.1f}M +- {st['flops_std'] / 1e6:.1f}M, "
            f"params {st['params_mean'] / 1e6:.2f}M +- {st['params_std'] / 1e6:.2f}M"
        )
    if args.find_channels:
        target = parse_count(args.find_channels)
        seeds = parse_seeds(args.seeds or "1-5")
        c, f = find_channels(cfg, target, seeds, args.input_size, trace=args.trace)
        print(f"C={c}: mean FLOPs {f / 1e6:.1f}M, nearest to the target {target / 1e6:.1f}M")
    if args.update_table:
        table = {}
        if os.path.isfile(args.update_table):
            with open(args.update_table) as f:
                table = json.load(f)
        table[os.path.relpath(args.config_file)] = {
            "flops": flops,
            "params": params,
            "input_size": args.input_size,
        }
        with open(args.update_table, "w") as f:
            json.dump(table, f, indent=2, sort_keys=True)
            f.write("\n")
        print(f"recorded in {args.update_table}")


if __name__ == "__main__":
    main()
