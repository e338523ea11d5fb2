#!/usr/bin/env python
"""Predict with a trained model (as Detectron2's demo/demo.py): pictures and one JSON per image
out, for images, a video or a registered dataset's own images.

    python tools/predict.py --config-file configs/demo/faster_rcnn_randwire_demo.yaml \\
        --input 'datasets/randwire_demo_det/val/*.jpg' --output output/predictions \\
        MODEL.WEIGHTS output/demo_detection/model_final.pth
    # a dataset's own images, with their COCO ids: coco_instances_results.json for COCO.loadRes
    python tools/predict.py --config-file output/trees/config.yaml \\
        --dataset trees_val trees/val.json trees/images --output out/ \\
        MODEL.WEIGHTS output/trees/model_final.pth
    # a LazyConfig (.py, or a lazy run's saved config.yaml): key=value overrides
    python tools/predict.py --config-file output/trees_lazy/config.yaml --input ... \\
        train.init_checkpoint=output/trees_lazy/model_final.pth
    python tools/predict.py --config-file ... --video-input clip.mp4 --output out/ MODEL.WEIGHTS ...
    python tools/predict.py --config-file configs/demo/randwire_cls_demo.yaml \\
        --input datasets/randwire_demo_cls/val/circle \\
        MODEL.WEIGHTS output/demo/classification/model_final.pth

Overrides go last, in the config's syntax (yaml: KEY VALUE; LazyConfig: key=value); `--opts`
before them is accepted too. --input takes image files, folders and glob patterns; --dataset
NAME is a registered dataset (the demo's), NAME JSON IMAGE_DIR registers a COCO one. With
--output (a folder), each image is drawn with its detections and its result written as
<name>.json (detections with class_index and label; the classifier's top-k); on a dataset,
detections also carry image_id and category_id and coco_instances_results.json holds them all.
--output is new, empty, or an earlier prediction's folder: a rerun replaces the files the earlier
one wrote (listed in predict_manifest.json) and keeps all others. An error in the inputs exits
with status 1 and one line naming it.
"""

import argparse
import sys

from randwire_d2.data.dataset_checks import register_user_datasets
from randwire_d2.engine.launch import add_unsafe_config_argument
from randwire_d2.limits import MAX_CLASSES
from randwire_d2.predict import (
    build_predictor,
    check_output_folder,
    find_images,
    predict,
    setup_run_config,
    split_overrides,
)
from randwire_d2.utils.args import bounded_int
from randwire_d2.utils.quiet_warnings import quiet_third_party_warnings


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", "--config", required=True, metavar="FILE")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, folders or glob patterns")
    source.add_argument("--video-input", help="a video file")
    source.add_argument(
        "--dataset",
        nargs="+",
        metavar="NAME",
        help="NAME [JSON IMAGE_DIR]: a registered dataset's own images, with their ids (JSON "
        "IMAGE_DIR: register a COCO-format dataset, as train_net.py does)",
    )
    parser.add_argument("--output", help="folder for the drawn images and their results")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of a detection drawn and written (default: 0.5)",
    )
    parser.add_argument(
        "--topk",
        type=bounded_int(1, MAX_CLASSES, "limits.MAX_CLASSES"),
        default=5,
        help="classes per image (classifier)",
    )
    add_unsafe_config_argument(parser)
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="overrides (as the trailing ones)"
    )
    parser.add_argument(
        "overrides", nargs=argparse.REMAINDER, help="yaml: KEY VALUE ...; LazyConfig: key=value"
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    quiet_third_party_warnings()
    try:
        inputs, trailing = split_overrides(args.input or args.dataset or [])
        overrides = [o for o in trailing + args.overrides + args.opts if o != "--opts"]
        flags = [o for o in overrides if o.startswith("--")]
        if flags:
            raise ValueError(f"{flags[0]} is among the overrides: options go before them")
        if args.topk < 1:
            raise ValueError(f"--topk={args.topk} is invalid: expected a positive integer")
        check_output_folder(args.output)
        images = find_images(inputs) if args.input else ()
        dataset = None
        if args.dataset:
            if len(inputs) not in (1, 3):
                raise ValueError(
                    f"--dataset {' '.join(inputs)} is invalid: expected NAME, or NAME JSON "
                    "IMAGE_DIR to register a COCO-format dataset"
                )
            dataset = inputs[0]
            register_user_datasets([inputs] if len(inputs) == 3 else [])
        run = setup_run_config(  # built once, passed down
            args.config_file,
            overrides,
            args.confidence_threshold,
            args.allow_unsafe_config,
            dataset,
        )
        return predict(
            build_predictor(run, dataset), images, args.video_input, args.output, args.topk
        )
    except KeyError as e:  # an override of a key the config lacks
        sys.exit(f"error: {e.args[0] if e.args else e}")
    except (ValueError, OSError) as e:  # bad inputs, named by the message
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
