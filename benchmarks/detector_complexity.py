#!/usr/bin/env python
"""Backbone FLOPs and parameters of the shipped detector configs, as a markdown table.

    python benchmarks/detector_complexity.py [--seeds 1 2 3 4 5] [--configs ...]

FLOPs are counted by fvcore's FlopCountAnalysis (the counter behind Detectron2's
`detectron2.utils.analysis.FlopCountAnalysis`; one multiply-add = one FLOP), through
`randwire_d2.complexity.module_flops` (RandWire in its reference execution), on one image of
800x1333, which Detectron2 pads to 800x1344 (FPN's size divisibility 32): that padded tensor is
what is measured. "trunk" is the ImageNet network without its classifier (RandWire conv1..conv5,
ResNet stem..res5); "FPN" adds the feature pyramid (p2..p6). RandWire rows are the mean (+- std)
over the given seeds.
"""

import argparse
import logging
import os

import numpy as np
import torch
from detectron2.modeling import build_model

from randwire_d2.complexity import module_flops
from randwire_d2.config import load_config
from randwire_d2.utils.tables import markdown_row, markdown_table

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
# (config, row label, Table 5 box AP / AP50 of the paper)
ROWS = [
    ("faster_rcnn_R_50_FPN_1x.yaml", "ResNet-50", "37.1 / 58.8"),
    ("faster_rcnn_X_50_32x4d_FPN_1x.yaml", "ResNeXt-50 (32x4d)", "38.2 / 60.5"),
    ("faster_rcnn_randwire_c109_fpn_1x.yaml", "RandWire-WS, C=109", "39.9 / 61.9"),
    ("faster_rcnn_R_101_FPN_1x.yaml", "ResNet-101", "39.8 / 61.7"),
    ("faster_rcnn_X_101_32x4d_FPN_1x.yaml", "ResNeXt-101 (32x4d)", "40.7 / 62.9"),
    ("faster_rcnn_randwire_c154_fpn_1x.yaml", "RandWire-WS, C=154", "41.1 / 63.1"),
    ("faster_rcnn_X_101_32x8d_FPN_1x.yaml", "ResNeXt-101 (32x8d)", "not in Table 5"),
]


def backbone_complexity(config: str, seed: int, height: int, width: int):
    """(trunk FLOPs, FPN backbone FLOPs, trunk params, FPN backbone params) of one config."""
    cfg = load_config(config, ["MODEL.DEVICE", "cpu", "MODEL.RANDWIRE.SEED", seed])
    backbone = build_model(cfg).backbone.eval()
    x = torch.zeros(1, 3, height, width)
    trunk = backbone.bottom_up
    return (
        int(module_flops(trunk, x)[""]),
        int(module_flops(backbone, x)[""]),
        sum(p.numel() for p in trunk.parameters()),
        sum(p.numel() for p in backbone.parameters()),
    )


def fmt(values, scale, digits):
    values = np.asarray(values, dtype=np.float64) / scale
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="RandWire seeds s")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1344, help="1333 padded to a multiple of 32")
    args = parser.parse_args()
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    torch.set_grad_enabled(False)

    print(f"Backbone complexity at {args.height}x{args.width} (fvcore, multiply-add = 1 FLOP)\n")
    header = ["backbone", "config", "trunk GFLOPs", "FPN backbone GFLOPs", "trunk params (M)"]
    print(markdown_table(header + ["FPN backbone params (M)", "paper Table 5 AP / AP50"], []))
    for config, label, paper in ROWS:
        path = os.path.join(CONFIG_DIR, config)
        seeds = args.seeds if "randwire" in config else [0]
        rows = np.array([backbone_complexity(path, s, args.height, args.width) for s in seeds])
        cells = [fmt(rows[:, i], scale, 1) for i, scale in enumerate([1e9, 1e9, 1e6, 1e6])]
        print(markdown_row([label, f"`configs/{config}`", *cells, paper]), flush=True)


if __name__ == "__main__":
    main()
