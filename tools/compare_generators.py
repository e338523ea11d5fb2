#!/usr/bin/env python
"""Compare random graph generators (Fig. 3/4): graph statistics over seeds, a picture of one
instance per generator, and optionally the small-regime complexity of each.

    python tools/compare_generators.py --output output/generators.png
    python tools/compare_generators.py --generators "ws:K=4,P=0.75" "er:P=0.2" "ba:M=5" --complexity
"""

import argparse
import os

from randwire_d2.analysis import FIG3_GENERATORS, compare_generators, label
from randwire_d2.complexity import seed_statistics
from randwire_d2.config import load_config, set_generator
from randwire_d2.graphs import MAX_NODES, MAX_SEEDS, sample
from randwire_d2.sweep import parse_generators
from randwire_d2.utils.args import bounded_int
from randwire_d2.utils.quiet_warnings import quiet_third_party_warnings
from randwire_d2.utils.tables import markdown_table
from randwire_d2.visualize import draw_generator_grid


def main(argv=None):
    quiet_third_party_warnings()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--generators",
        nargs="*",
        default=[],
        help="settings like ws:K=4,P=0.75 (default: Fig. 3's)",
    )
    parser.add_argument("--num-nodes", type=bounded_int(2, MAX_NODES, "MAX_NODES"), default=32)
    parser.add_argument(
        "--seeds", type=bounded_int(1, MAX_SEEDS, "MAX_SEEDS"), default=5, help="seeds 1..S"
    )
    parser.add_argument(
        "--output", default="", help="PNG with one ring picture per generator (Fig. 4)"
    )
    parser.add_argument(
        "--complexity",
        action="store_true",
        help="also FLOPs/params of the small-regime C=78 network (configs/imagenet)",
    )
    args = parser.parse_args(argv)
    try:
        settings = parse_generators(args.generators) or FIG3_GENERATORS
    except ValueError as e:
        parser.error(str(e))
    seeds = range(1, args.seeds + 1)

    rows = compare_generators(settings, args.num_nodes, seeds)
    keys = [k for k in rows[0] if k != "generator"]
    extra = ["FLOPs (M)", "params (M)"] if args.complexity else []
    table = []
    for (gen, params), row in zip(settings, rows):
        cells = [f"{row[k][0]:.2f} ± {row[k][1]:.2f}" for k in keys]
        if args.complexity:
            base = os.path.join(os.path.dirname(__file__), "..", "configs/imagenet")
            cfg = load_config(os.path.join(base, "randwire_ws_c78_small.yaml"), freeze=False)
            set_generator(cfg, gen, params)
            cfg.MODEL.RANDWIRE.NUM_NODES = args.num_nodes
            st = seed_statistics(cfg, seeds)
            cells += [
                f"{st['flops_mean'] / 1e6:.0f} ± {st['flops_std'] / 1e6:.0f}",
                f"{st['params_mean'] / 1e6:.2f} ± {st['params_std'] / 1e6:.2f}",
            ]
        table.append([row["generator"]] + cells)
    print(markdown_table(["generator"] + keys + extra, table))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        pics = [(label(g, p), sample(g, args.num_nodes, 1, **p)) for g, p in settings]
        print("wrote", draw_generator_grid(pics, args.output))


if __name__ == "__main__":
    main()
