#!/usr/bin/env python
"""Predict with a trained model (as Detectron2's demo/demo.py): detections drawn and written as
COCO-format results, or a classifier's top-k classes.

    python tools/predict.py --config-file configs/demo/faster_rcnn_randwire_demo.yaml \\
        --input 'datasets/randwire_demo_det/val/*.jpg' --output output/predictions \\
        --opts MODEL.WEIGHTS output/demo_detection/model_final.pth
    python tools/predict.py --config-file ... --video-input clip.mp4 --output out/ --opts ...
    python tools/predict.py --config-file configs/demo/randwire_cls_demo.yaml \\
        --input datasets/randwire_demo_cls/val/circle \\
        --opts MODEL.WEIGHTS output/demo_classification/model_final.pth

--input takes image files, folders and glob patterns. With --output (a folder), detectors write
each image with its detections and results.json (COCO results: image_id, category_id, bbox, score,
segmentation); the classifier writes its top-k classes per image to results.json. Images of more
than MAX_IMAGE_PIXELS pixels are refused; drawn pictures are at most MAX_DRAWN_SIDE pixels long
(randwire_d2/predict.py). An error in the inputs exits with status 1 and one line naming it.
"""

import argparse
import sys

from randwire_d2.predict import (
    build_predictor,
    check_output_folder,
    find_images,
    predict,
    setup_cfg,
)
from randwire_d2.utils.warnings import quiet_third_party_warnings


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", "--config", required=True, metavar="FILE")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, folders or glob patterns")
    source.add_argument("--video-input", help="a video file")
    parser.add_argument("--output", help="folder for the drawn images and results.json")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of a detection drawn and written (default: 0.5)",
    )
    parser.add_argument("--topk", type=int, default=5, help="classes per image (classifier)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="KEY VALUE ...")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    quiet_third_party_warnings()
    try:
        if args.topk < 1:
            raise ValueError(f"--topk={args.topk} is invalid: expected a positive integer")
        check_output_folder(args.output)
        images = find_images(args.input) if args.input else ()
        cfg = setup_cfg(args.config_file, args.opts, args.confidence_threshold)
        predictor = build_predictor(cfg)
        return predict(predictor, images, args.video_input, args.output, args.topk)
    except (ValueError, OSError) as e:  # bad inputs, named by the message
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
