"""The documented limits on sizes that config keys and flags set, checked before anything is
allocated (docs/pretraining.md, "Sizes"): far beyond real use, far below exhausting a machine.
Limits on what a file declares live beside its reader (e.g. graphs.MAX_NODES).
"""

import numbers

__all__ = ["MAX_IMAGE_SIDE", "MAX_CHANNELS", "MAX_CLASSES", "MAX_IMS_PER_BATCH"]
__all__ += ["MAX_POOLER_RESOLUTION", "MAX_HEAD_LAYERS", "MAX_WORKERS", "MAX_JOBS"]
__all__ += ["MAX_EXPORT_BATCH", "MAX_EXPORT_SAMPLES", "MAX_EXPORT_PIXELS"]
__all__ += ["check_int", "check_config_sizes", "check_export_inputs"]

MAX_IMAGE_SIDE = 8192  # a resize, crop or export side (COCO tests at 800-1333)
MAX_CHANNELS = 4096  # C of Table 1 (the paper's largest is 154; conv5 has 4C or 8C)
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841
MAX_IMS_PER_BATCH = 65_536  # all processes together (large-batch ImageNet uses 8k-64k)
MAX_POOLER_RESOLUTION = 64  # Detectron2: 7 for boxes, 14 for masks
MAX_HEAD_LAYERS = 64  # fc or conv layers of a detector's box or mask head
MAX_WORKERS = 256  # data loader workers of one process
MAX_JOBS = 256  # sweep runs trained at once (tools/sweep.py --jobs)
# tools/export_model.py: --batch-size, --num-samples, and the pixels of all the random inputs
# together (--num-samples x --batch-size x --input-size^2: 805 MB as float32).
MAX_EXPORT_BATCH = 1024
MAX_EXPORT_SAMPLES = 64
MAX_EXPORT_PIXELS = 2**26

# yaml key -> (least value, limit, the limit's name); each a number or a list/tuple of numbers.
CONFIG_SIZES = {
    "MODEL.RANDWIRE.CHANNELS": (2, MAX_CHANNELS, "MAX_CHANNELS"),
    "MODEL.CLASSIFIER.HEAD_CHANNELS": (1, MAX_CHANNELS, "MAX_CHANNELS"),
    "MODEL.FPN.OUT_CHANNELS": (1, MAX_CHANNELS, "MAX_CHANNELS"),
    "MODEL.CLASSIFIER.NUM_CLASSES": (1, MAX_CLASSES, "MAX_CLASSES"),
    "MODEL.ROI_HEADS.NUM_CLASSES": (1, MAX_CLASSES, "MAX_CLASSES"),
    "MODEL.RETINANET.NUM_CLASSES": (1, MAX_CLASSES, "MAX_CLASSES"),
    # 0: Detectron2 does not resize (MIN_SIZE_TEST 0 disables the test resize).
    "INPUT.MIN_SIZE_TRAIN": (0, MAX_IMAGE_SIDE, "MAX_IMAGE_SIDE"),
    "INPUT.MAX_SIZE_TRAIN": (0, MAX_IMAGE_SIDE, "MAX_IMAGE_SIDE"),
    "INPUT.MIN_SIZE_TEST": (0, MAX_IMAGE_SIDE, "MAX_IMAGE_SIDE"),
    "INPUT.MAX_SIZE_TEST": (0, MAX_IMAGE_SIDE, "MAX_IMAGE_SIDE"),
    "PRETRAIN.TRAIN_CROP": (1, MAX_IMAGE_SIDE, "MAX_IMAGE_SIDE"),
    "PRETRAIN.TEST_CROPS": (1, MAX_IMAGE_SIDE, "MAX_IMAGE_SIDE"),
    "SOLVER.IMS_PER_BATCH": (1, MAX_IMS_PER_BATCH, "MAX_IMS_PER_BATCH"),
    "TEST.AUG.MIN_SIZES": (0, MAX_IMAGE_SIDE, "MAX_IMAGE_SIDE"),
    "TEST.AUG.MAX_SIZE": (0, MAX_IMAGE_SIDE, "MAX_IMAGE_SIDE"),
    "MODEL.ROI_BOX_HEAD.FC_DIM": (1, MAX_CHANNELS, "MAX_CHANNELS"),
    "MODEL.ROI_BOX_HEAD.CONV_DIM": (1, MAX_CHANNELS, "MAX_CHANNELS"),
    "MODEL.ROI_MASK_HEAD.CONV_DIM": (1, MAX_CHANNELS, "MAX_CHANNELS"),
    "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS": (1, MAX_CHANNELS, "MAX_CHANNELS"),
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": (1, MAX_CHANNELS, "MAX_CHANNELS"),
    "MODEL.ROI_BOX_HEAD.NUM_FC": (0, MAX_HEAD_LAYERS, "MAX_HEAD_LAYERS"),
    "MODEL.ROI_BOX_HEAD.NUM_CONV": (0, MAX_HEAD_LAYERS, "MAX_HEAD_LAYERS"),
    "MODEL.ROI_MASK_HEAD.NUM_CONV": (0, MAX_HEAD_LAYERS, "MAX_HEAD_LAYERS"),
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": (1, MAX_POOLER_RESOLUTION, "MAX_POOLER_RESOLUTION"),
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": (1, MAX_POOLER_RESOLUTION, "MAX_POOLER_RESOLUTION"),
    "MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION": (
        1,
        MAX_POOLER_RESOLUTION,
        "MAX_POOLER_RESOLUTION",
    ),
    "DATALOADER.NUM_WORKERS": (0, MAX_WORKERS, "MAX_WORKERS"),
}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(key: str, value, low: int, high: int, limit: str) -> int:
    """`value` if an integer in [low, high], else a ValueError naming `key` and limit `limit`."""
    if not _is_int(value) or not low <= value <= high:
        raise ValueError(
            f"{key}={value!r} is invalid: expected an integer in [{low}, {high}] (limits.{limit})"
        )
    return value


def check_config_sizes(cfg) -> None:
    """Every size of CONFIG_SIZES in a yaml config (a CfgNode) is within its limit."""
    for key, (low, high, limit) in CONFIG_SIZES.items():
        node = cfg
        for part in key.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        if node is None:
            continue
        values = list(node) if isinstance(node, (list, tuple)) else [node]
        for v in values:
            if not _is_int(v) or not low <= v <= high:
                what = "integers" if isinstance(node, (list, tuple)) else "an integer"
                raise ValueError(
                    f"{key}={node!r} is invalid: expected {what} in [{low}, {high}] "
                    f"(limits.{limit})"
                )


def check_export_inputs(size: int, batch: int, count: int) -> None:
    """`count` batches of `batch` images of `size`^2 pixels: each and the product within limits."""
    check_int("--input-size", size, 1, MAX_IMAGE_SIDE, "MAX_IMAGE_SIDE")
    check_int("--batch-size", batch, 1, MAX_EXPORT_BATCH, "MAX_EXPORT_BATCH")
    check_int("--num-samples", count, 1, MAX_EXPORT_SAMPLES, "MAX_EXPORT_SAMPLES")
    pixels = count * batch * size * size
    if pixels > MAX_EXPORT_PIXELS:
        raise ValueError(
            f"--num-samples {count} x --batch-size {batch} x --input-size {size}^2 is "
            f"{pixels:,} pixels of sample images: at most {MAX_EXPORT_PIXELS:,} "
            "(limits.MAX_EXPORT_PIXELS); give a smaller batch, size or fewer samples"
        )
