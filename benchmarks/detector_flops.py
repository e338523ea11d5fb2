#!/usr/bin/env python
"""Whole-detector FLOPs and parameters of the Faster R-CNN, Mask R-CNN and RetinaNet configs.

    python benchmarks/detector_flops.py [--configs mask_rcnn_R_50_FPN_1x.yaml ...] [--threads 1]

FLOPs are counted as Detectron2's tools/analyze_model.py does, by
`detectron2.utils.analysis.FlopCountAnalysis` (fvcore; one multiply-add = one FLOP; element-wise
ops, BN and NMS ignored) on the inference model given one random 800x1333 image (the model pads
it to 800x1344). RandWire trunks run `MODEL.RANDWIRE.EXECUTION reference`, the convention of
tools/analyze_model.py (folded norms would move BN FLOPs into convs). The weights are random, so
heads are counted at the most boxes the config allows (see OPTS): 1000 proposals, 100 detections
(the mask head's cost grows with them; Detectron2's model-zoo counts on real images with trained
weights see fewer). One RandWire seed (the config's); benchmarks/detector_complexity.py gives the
backbones' seed statistics.
"""

import argparse
import logging
import os
import time

import torch
from detectron2.modeling import build_model

from randwire_d2.complexity import module_flops
from randwire_d2.config import load_config
from randwire_d2.utils.tables import markdown_row, markdown_table

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
CONFIGS = [
    f"{arch}_{backbone}_1x.yaml"
    for arch in ("faster_rcnn", "mask_rcnn", "retinanet")
    for backbone in ("R_50_FPN", "randwire_c109_fpn", "R_101_FPN", "randwire_c154_fpn")
]
# Heads at the most boxes the config allows, whatever the random weights predict: NMS and score
# thresholds off, and box deltas scaled to ~0 (boxes stay anchors, never empty), so the RPN keeps
# POST_NMS_TOPK_TEST (1000) proposals and the R-CNN heads make TEST.DETECTIONS_PER_IMAGE (100)
# detections, each one a mask-head input. None of these changes a FLOP of the networks.
NO_DELTAS = (1e6, 1e6, 1e6, 1e6)
# fmt: off
OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RANDWIRE.EXECUTION", "reference",
    "MODEL.RPN.BBOX_REG_WEIGHTS", NO_DELTAS,
    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", NO_DELTAS,
    "MODEL.RETINANET.BBOX_REG_WEIGHTS", NO_DELTAS,
    "MODEL.RPN.NMS_THRESH", 1.0,
    "MODEL.ROI_HEADS.NMS_THRESH_TEST", 1.0,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", -1.0,
    "MODEL.RETINANET.NMS_THRESH_TEST", 1.0,
    "MODEL.RETINANET.SCORE_THRESH_TEST", -1.0,
]
# fmt: on


def complexity(config: str, height: int, width: int):
    """(params, total FLOPs, backbone FLOPs) of `config`'s inference model."""
    cfg = load_config(config, OPTS)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.rand(3, height, width) * 255
    inputs = [{"image": image, "height": height, "width": width}]
    by_module = module_flops(model, inputs)  # the model is TracingAdapter's "model"
    return sum(p.numel() for p in model.parameters()), by_module[""], by_module["model.backbone"]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=CONFIGS, help="files under configs/")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    logging.getLogger("detectron2").setLevel(logging.WARNING)

    print(
        f"Detector complexity, one random {args.height}x{args.width} image, Detectron2's "
        "FlopCountAnalysis (multiply-add = 1 FLOP), heads at 1000 proposals, 100 detections\n"
    )
    header = ["config", "params (M)", "GFLOPs", "backbone GFLOPs", "heads GFLOPs", "time"]
    print(markdown_table(header, []))
    start = time.perf_counter()
    for name in args.configs:
        t = time.perf_counter()
        params, total, backbone = complexity(
            os.path.join(CONFIG_DIR, name), args.height, args.width
        )
        cells = [f"`{name}`", f"{params / 1e6:.1f}", f"{total / 1e9:.1f}"]
        cells += [f"{backbone / 1e9:.1f}", f"{(total - backbone) / 1e9:.1f}"]
        cells += [f"{time.perf_counter() - t:.0f} s"]
        print(markdown_row(cells), flush=True)
    print(f"\n{len(args.configs)} configs in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
