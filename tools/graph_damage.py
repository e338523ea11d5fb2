#!/usr/bin/env python
"""Graph damage (Sec. 4.1, Fig. 5): remove one node or one edge of a trained classifier and
evaluate top-1 on PRETRAIN.DATA_ROOT/val without further training.

    python tools/graph_damage.py --config-file configs/demo/randwire_cls_demo.yaml \
        MODEL.WEIGHTS output/demo/cls/model_final.pth [--stages conv5] [--output damage.png]
"""

import argparse
import json
import os

from randwire_d2.utils.quiet_warnings import quiet_third_party_warnings  # isort: split
import torch
from detectron2.evaluation import inference_on_dataset

from randwire_d2.analysis import graph_damage, summarize_damage
from randwire_d2.checkpoint import RandWireCheckpointer, find_trunk
from randwire_d2.config import load_config
from randwire_d2.engine import ClassificationTrainer, resolve_device
from randwire_d2.engine.evaluation import ClassificationEvaluator
from randwire_d2.utils.tables import markdown_table
from randwire_d2.visualize import plot_damage


def main(argv=None):
    quiet_third_party_warnings()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--stages", nargs="*", default=[], help="random stages to damage (default: all)"
    )
    parser.add_argument(
        "--output", default="", help="PNG of Fig. 5 (and a .json of every removal beside it)"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (MODEL.WEIGHTS ...)"
    )
    args = parser.parse_args(argv)

    cfg = load_config(args.config_file, args.opts, freeze=False)
    resolve_device(cfg)
    cfg.DATALOADER.NUM_WORKERS = 0  # one pass per removal: worker start-up would dominate
    cfg.freeze()
    if not cfg.MODEL.WEIGHTS:
        raise SystemExit("MODEL.WEIGHTS is empty: graph damage needs a trained checkpoint")

    model = ClassificationTrainer.build_model(cfg)
    RandWireCheckpointer(model, strict=True).load(cfg.MODEL.WEIGHTS)
    model.eval()
    loader = ClassificationTrainer.build_test_loader(cfg, cfg.PRETRAIN.TEST_CROPS[0])
    _, trunk = find_trunk(model)

    def evaluate() -> float:
        with torch.no_grad():
            return inference_on_dataset(model, loader, ClassificationEvaluator())["top1"]

    damage = graph_damage(trunk, evaluate, args.stages)
    print(f"baseline top-1: {damage['baseline']:.2f}")
    for key, what in [("nodes", "output degree"), ("edges", "target input degree")]:
        print(f"\nremove one {key[:-1]}: accuracy change by {what}")
        summary = summarize_damage(damage[key]).items()
        rows = [[d, s["count"], f"{s['mean']:+.2f}", f"{s['median']:+.2f}"] for d, s in summary]
        print(markdown_table(["degree", "removals", "mean", "median"], rows))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        print("\nwrote", plot_damage(damage, args.output))
        with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
            json.dump(damage, f, indent=1)


if __name__ == "__main__":
    main()
