#!/usr/bin/env python
"""Export a trained RandWire model for deployment and check it against the eager model.

    # detector: TorchScript through Detectron2's TracingAdapter (as tools/deploy/export_model.py)
    python tools/export_model.py --config-file configs/demo/faster_rcnn_randwire_demo.yaml \\
        --export-method tracing --format torchscript --output output/export_det \\
        MODEL.WEIGHTS output/demo_detection/model_final.pth
    # ... and ONNX, traced on --sample-image (default: images of DATASETS.TEST[0])
    python tools/export_model.py --config-file ... --format onnx --sample-image img.jpg ...
    # classifier: torch.export (model.pt2) and ONNX of images -> logits at a fixed image size,
    # any batch; a detector's ONNX takes any image height and width
    python tools/export_model.py --config-file configs/demo/randwire_cls_demo.yaml \\
        --output output/export_cls MODEL.WEIGHTS output/demo/classification/model_final.pth
    # your own COCO dataset (traced on its first images), or a LazyConfig (.py, or a lazy run's
    # saved config.yaml) with key=value overrides
    python tools/export_model.py --config-file output/trees/config.yaml \\
        --dataset trees_val trees/val.json trees/images MODEL.WEIGHTS output/trees/model_final.pth
    python tools/export_model.py --config-file output/trees_lazy/config.yaml \\
        --dataset trees_val trees/val.json trees/images \\
        train.init_checkpoint=output/trees_lazy/model_final.pth

torchscript and onnx files are made by tracing (detectors through TracingAdapter), pt2 by
torch.export (classifiers only). Every file is run on --num-samples inputs (onnx in
onnxruntime) and compared with the eager model; a difference beyond tolerance exits with
status 1, naming the numbers. The exported graph is the frozen fast execution (see
randwire_d2/export/); --compare-executions also prints the op counts of the reference and
fast executions traced as they are. A folder holding an earlier export is refused unless
--overwrite, which removes that export's files (EXPORT_FILES; other files stay) first.
A LazyConfig's weights are train.init_checkpoint, its test data dataloader.test (detectors only).
"""

import argparse
import json
import os
import sys

from detectron2.utils.logger import setup_logger

from randwire_d2.data.dataset_checks import register_user_datasets
from randwire_d2.engine import resolve_device
from randwire_d2.engine.launch import add_dataset_argument, add_unsafe_config_argument
from randwire_d2.export import (
    CLASSIFIER_AXES,
    DETECTOR_AXES,
    FORMATS,
    ClassifierExport,
    ExportMismatchError,
    classifier_samples,
    detector_adapter,
    export_classifier,
    export_detector,
    markdown_table,
    op_counts,
    prepare_export_folder,
    report_table,
)
from randwire_d2.inference_setup import (
    detector_samples,
    is_classifier,
    load_any_config,
    load_model,
    require_registered,
)
from randwire_d2.limits import (
    MAX_EXPORT_BATCH,
    MAX_EXPORT_SAMPLES,
    MAX_IMAGE_SIDE,
    check_export_inputs,
)
from randwire_d2.run_settings import RunConfig
from randwire_d2.utils.args import bounded_int


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--format",
        nargs="+",
        choices=sorted(FORMATS),
        default=None,
        help="output formats (default: torchscript for detectors, pt2 onnx for classifiers)",
    )
    parser.add_argument(
        "--export-method",
        choices=["tracing"],
        default="tracing",
        help="as Detectron2's tool; torchscript and onnx are traced, pt2 uses torch.export",
    )
    parser.add_argument("--output", default="", help="output folder (default: OUTPUT_DIR/export)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export in --output (its files only; other files stay)",
    )
    parser.add_argument("--sample-image", default=None, help="detector: trace on this image")
    parser.add_argument(
        "--num-samples",
        type=bounded_int(1, MAX_EXPORT_SAMPLES, "limits.MAX_EXPORT_SAMPLES"),
        default=2,
        help=f"inputs compared per format (1..{MAX_EXPORT_SAMPLES})",
    )
    parser.add_argument(
        "--input-size",
        type=bounded_int(1, MAX_IMAGE_SIDE, "limits.MAX_IMAGE_SIDE"),
        default=None,
        help=f"classifier: side, 1..{MAX_IMAGE_SIDE} (default PRETRAIN.TEST_CROPS[0])",
    )
    parser.add_argument(
        "--batch-size",
        type=bounded_int(1, MAX_EXPORT_BATCH, "limits.MAX_EXPORT_BATCH"),
        default=1,
        help=f"classifier: batch size (1..{MAX_EXPORT_BATCH})",
    )
    parser.add_argument(
        "--random-weights", action="store_true", help="export without MODEL.WEIGHTS (untrained)"
    )
    parser.add_argument(
        "--compare-executions",
        action="store_true",
        help="also trace the reference and fast executions and print their op counts",
    )
    add_dataset_argument(
        parser,
        "a detector is traced on the first images of the config's test dataset",
    )
    add_unsafe_config_argument(parser)
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="overrides: yaml KEY VALUE ...; LazyConfig key=value"
    )
    return parser


def setup(args) -> RunConfig:
    """The run's settings (`.cfg`: its yaml or LazyConfig config), after registering --dataset.
    Built once, passed down."""
    flags = [o for o in args.opts if o.startswith("--")]
    if flags:
        raise ValueError(f"{flags[0]} is among the overrides: options go before them")
    register_user_datasets(args.dataset)
    run = RunConfig(load_any_config(args.config_file, args.opts, False, args.allow_unsafe_config))
    resolve_device(run)
    if not run.lazy:
        run.cfg.MODEL.RANDWIRE.COMPILE = ""  # the export traces the eager trunk: no torch.compile
        run.cfg.freeze()
    return run


def main(argv=None):
    args = build_parser().parse_args(argv)
    logger = setup_logger(name="randwire_d2")
    try:
        run = setup(args)
    except KeyError as e:  # an override of a key the config lacks
        sys.exit(f"error: {e.args[0] if e.args else e}")
    except (ValueError, OSError) as e:  # a bad --dataset or config, named
        sys.exit(f"error: {e}")
    cfg = run.cfg
    classifier = is_classifier(run)
    formats = args.format or (["pt2", "onnx"] if classifier else ["torchscript"])
    if classifier and args.sample_image:
        sys.exit("--sample-image is for detectors: a classifier is exported at --input-size")
    if not classifier and "pt2" in formats:
        arch = "a LazyConfig's detector"
        if not run.lazy:
            arch = f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r}"
        sys.exit(
            f"--format pt2 is invalid for {arch}: detectors export by tracing (torchscript, "
            "onnx); pt2 is for RandWireClassifier"
        )
    output = args.output or os.path.join(run.get("output_dir", "output") or "output", "export")
    try:
        if classifier:  # before building: the inputs' size is bounded
            size = args.input_size or cfg.PRETRAIN.TEST_CROPS[0]
            check_export_inputs(size, args.batch_size, args.num_samples)
        elif not args.sample_image:  # before building: the data to trace on
            names, key = run.datasets("test_datasets"), run.key("test_datasets")
            require_registered(names[:1], key, ", or --sample-image IMAGE")
        prepare_export_folder(output, args.overwrite)
        model, _ = load_model(run, args.random_weights, purpose="exports")
    except (ValueError, OSError) as e:  # FileNotFoundError, FileExistsError: named paths
        sys.exit(f"error: {e}")
    logger.info(f"exporting {type(model).__name__} as {formats} to {output}")

    try:
        if classifier:
            samples = classifier_samples(
                size, args.batch_size, args.num_samples, cfg.SEED, model.device
            )
            report = export_classifier(model, output, samples, formats)
            wrap, trace_args = ClassifierExport, (samples[0],)
        else:
            samples = detector_samples(run, args.sample_image, args.num_samples)
            report = export_detector(model, output, samples, formats)
            wrap, trace_args = (lambda m: detector_adapter(m, samples[0])), (samples[0]["image"],)
    except (ExportMismatchError, ValueError, OSError) as e:  # a bad --sample-image, a full disk
        sys.exit(f"error: {e}")

    print(report_table(report))
    if not classifier and "torchscript" in formats:
        print(
            f"{report['torchscript']['file']} loads after `import torchvision`, which registers "
            "the torchvision::nms and roi_align operators it calls (docs/predict_and_export.md)"
        )
    if args.compare_executions:
        axes = CLASSIFIER_AXES if classifier else DETECTOR_AXES
        counts = op_counts(model, wrap, trace_args, formats, dynamic_axes={0: axes})
        print("\nop counts by execution (exported: 'export'):")
        print(
            markdown_table(
                ["execution"] + formats, [[e] + [c[f] for f in formats] for e, c in counts.items()]
            )
        )
        report["op_counts"] = counts
    with open(os.path.join(output, "export_report.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
