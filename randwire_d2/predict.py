"""Predictions of a trained model on images or a video: tools/predict.py (as Detectron2's
demo/demo.py) is its command line.

A detector's detections are drawn (boxes, and masks when the model predicts them) and written as
COCO-format results; the classifier's top-k classes are printed and written with the class names
its checkpoint carries. Inputs are prepared as evaluation prepares them, so that predictions equal
evaluation's: detectors as Detectron2's DefaultPredictor (ResizeShortestEdge to
INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, channels in INPUT.FORMAT), the classifier as its validation
loader at the first PRETRAIN.TEST_CROPS size (resize, center crop). Images are read as the
classification loader reads them (`read_rgb_image`: 16-bit grayscale scaled to 8 bits, more than
MAX_IMAGE_PIXELS pixels refused); pictures are drawn at most MAX_DRAWN_SIDE pixels long.
"""

import glob
import json
import logging
import os
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.engine import DefaultPredictor
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from . import data as _data  # noqa: F401  (registers the embedded demo datasets)
from .checkpoint import check_input_normalization, check_weights_on_disk
from .config import load_config
from .data.imagefolder import ResizeCenterCrop, read_rgb_image
from .engine.trainer import build_checkpointer, resolve_device

__all__ = [
    "IMAGE_EXTENSIONS",
    "setup_cfg",
    "find_images",
    "check_output_folder",
    "read_image_file",
    "read_video",
    "build_predictor",
    "DetectionPredictor",
    "ClassificationPredictor",
    "predict",
]

CLASSIFIER_ARCH = "RandWireClassifier"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Small images are drawn enlarged, so that the labels stay legible; large ones shrunk, so that
# drawing takes bounded time and memory (Detectron2's default INPUT.MAX_SIZE_TEST).
MIN_DRAWN_SIDE = 480
MAX_DRAWN_SIDE = 1333
logger = logging.getLogger(__name__)


def setup_cfg(config_file: str, opts: Sequence[str] = (), confidence_threshold: float = 0.5):
    """The frozen config to predict with: file + KEY VALUE overrides, device resolved, and the
    minimum score of a detection shown and written (every detector kind's test threshold)."""
    cfg = load_config(config_file, opts, freeze=False)
    resolve_device(cfg)
    if not 0.0 <= confidence_threshold <= 1.0:
        raise ValueError(
            f"--confidence-threshold={confidence_threshold} is invalid: expected a score in [0, 1]"
        )
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = confidence_threshold
    if not cfg.MODEL.WEIGHTS:
        raise ValueError(
            "MODEL.WEIGHTS='' is invalid: predictions need trained weights, e.g. "
            "--opts MODEL.WEIGHTS output/demo_detection/model_final.pth"
        )
    check_weights_on_disk(cfg.MODEL.WEIGHTS)
    cfg.freeze()
    return cfg


def find_images(inputs: Sequence[str]) -> List[str]:
    """The image files that `inputs` name: files, folders (their images, sorted) or glob
    patterns (sorted), in the order given. A name that matches no image is an error."""
    found = []
    for pattern in inputs:
        if os.path.isdir(pattern):
            names = sorted(os.listdir(pattern))
            paths = [os.path.join(pattern, n) for n in names if _is_image(n)]
            what = f"folder {pattern!r} holds no images with extensions {IMAGE_EXTENSIONS}"
        elif os.path.isfile(pattern):
            paths, what = [pattern], ""
        else:
            paths = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
            what = f"--input {pattern!r} matches no file"
        if not paths:
            raise FileNotFoundError(what)
        found.extend(paths)
    return found


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def check_output_folder(output: Optional[str], flag: str = "--output") -> None:
    """`output` must be a folder or not exist yet (it is created)."""
    if output and os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(
            f"{flag} {output!r} is an existing file: expected a folder (created if missing) for "
            "the drawn images and results.json"
        )


def read_image_file(path: str) -> np.ndarray:
    """HWC uint8 BGR (as cv2 reads it) of an image file, read by the training loader's
    `read_rgb_image` (16-bit grayscale scaled to 8 bits, at most MAX_IMAGE_PIXELS pixels); an
    error names the file."""
    return np.asarray(read_rgb_image(path))[:, :, ::-1]


def read_video(path: str) -> Tuple[Iterator[np.ndarray], float]:
    """(the BGR frames of a video file, its frame rate); an error names a missing video, or one
    of which this OpenCV build cannot decode a frame."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--video-input {path!r} does not exist")
    capture = cv2.VideoCapture(path)
    ok, first = capture.read() if capture.isOpened() else (False, None)
    if not ok:
        capture.release()
        raise ValueError(
            f"cannot read video {path!r}: OpenCV {cv2.__version__} decodes no frame of it (not a "
            "video, or its codec is missing from this OpenCV build)"
        )
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0

    def frames():
        frame = first
        try:
            while ok:
                yield frame
                ok_next, frame = capture.read()
                if not ok_next:
                    return
        finally:
            capture.release()

    return frames(), fps


def _load_weights(model, cfg) -> Dict:
    """Load MODEL.WEIGHTS into `model`: every tensor must fit (strict), the wiring must be the
    model's. Returns the rest of the checkpoint (class names, input statistics, ...)."""
    checkpointer = build_checkpointer(model, "", cfg=cfg, strict=True)
    loaded = checkpointer.load(cfg.MODEL.WEIGHTS, checkpointables=[])
    check_input_normalization(cfg, loaded)
    return loaded


def _metadata(cfg):
    """(Metadata of DATASETS.TEST[0], {real path of an image of that dataset: its image id}).
    A registered dataset whose annotations are on disk (or generated on demand) is loaded, so
    that its category ids are known; otherwise only its registered metadata is used."""
    if not cfg.DATASETS.TEST:
        return Metadata(), {}
    name = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(name)
    json_file = meta.get("json_file")
    loadable = meta.get("generated_on_demand", False) or (json_file and os.path.isfile(json_file))
    if name not in DatasetCatalog.list() or not loadable:
        return meta, {}
    dicts = DatasetCatalog.get(name)  # load_coco_json also sets the category id map
    return meta, {os.path.realpath(d["file_name"]): d["image_id"] for d in dicts}


class DetectionPredictor(DefaultPredictor):
    """Detectron2's DefaultPredictor (same preprocessing; call it with a BGR HWC uint8 image),
    with weights loaded strictly by the project's checkpointer and the metadata of
    DATASETS.TEST[0] (class names, dataset category ids, image ids of its files)."""

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        self.checkpoint = _load_weights(self.model, self.cfg)
        self.metadata, self.image_ids = _metadata(self.cfg)
        # DefaultPredictor.__init__'s resize and input format (its __call__ reads them).
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={cfg.INPUT.FORMAT!r} is invalid: expected RGB or BGR")
        self.input_format = cfg.INPUT.FORMAT
        id_map = self.metadata.get("thing_dataset_id_to_contiguous_id")
        self.category_ids = {v: k for k, v in id_map.items()} if id_map else None

    def results(self, instances, image_id: int, file_name: str) -> List[Dict]:
        """COCO-format results of one image (category ids of the dataset, XYWH boxes, RLE masks)."""
        records = instances_to_coco_json(instances, image_id)
        for r in records:
            if self.category_ids is not None:
                r["category_id"] = self.category_ids[r["category_id"]]
            r["file_name"] = file_name
        return records

    def draw(self, bgr: np.ndarray, instances) -> np.ndarray:
        """The image (BGR) with the detections drawn, at `drawn_scale` of its size."""
        scale = drawn_scale(*bgr.shape[:2])
        if scale < 1:  # shrunk before drawing: matplotlib's canvas of the full image is huge
            bgr, instances = _shrink(bgr, instances, scale)
            scale = 1.0
        vis = Visualizer(bgr[:, :, ::-1], self.metadata, scale=scale)
        return vis.draw_instance_predictions(instances).get_image()[:, :, ::-1]


def drawn_scale(height: int, width: int) -> float:
    """Scale of a drawn picture: the shorter side enlarged to MIN_DRAWN_SIDE, the longer side at
    most MAX_DRAWN_SIDE."""
    return min(max(1.0, MIN_DRAWN_SIDE / min(height, width)), MAX_DRAWN_SIDE / max(height, width))


def _shrink(bgr: np.ndarray, instances: Instances, scale: float) -> Tuple[np.ndarray, Instances]:
    """The image and its detections (boxes, masks, keypoints) resized by `scale` < 1."""
    height, width = bgr.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    sx, sy = size[0] / width, size[1] / height
    out = Instances(small.shape[:2])
    for name, value in instances.get_fields().items():
        if name == "pred_boxes":
            value = value.clone()
            value.scale(sx, sy)
        elif name == "pred_masks":  # one at a time: a full-size mask of each detection
            masks = [
                cv2.resize(m.view(np.uint8), size, interpolation=cv2.INTER_NEAREST)
                for m in value.numpy()
            ]
            value = torch.from_numpy(np.array(masks, dtype=bool).reshape(-1, size[1], size[0]))
        elif name == "pred_keypoints":
            value = value.clone()
            value[..., 0] *= sx
            value[..., 1] *= sy
        out.set(name, value)
    return small, out


class ClassificationPredictor:
    """RandWireClassifier on one image at a time, prepared as its validation loader prepares
    them: resize + center crop to PRETRAIN.TEST_CROPS[0] (crop ratio PRETRAIN.TEST_CROP_RATIO),
    channels in INPUT.FORMAT. Class names come from the checkpoint."""

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        self.checkpoint = _load_weights(self.model, self.cfg)
        self.transform = ResizeCenterCrop(cfg.PRETRAIN.TEST_CROPS[0], cfg.PRETRAIN.TEST_CROP_RATIO)
        self.input_format = cfg.INPUT.FORMAT
        classes = self.checkpoint.get("classes")
        if classes is None:
            logger.warning(
                f"{cfg.MODEL.WEIGHTS} carries no class names (not written by "
                "tools/train_cls.py): labels are class indices"
            )
            classes = [str(i) for i in range(cfg.MODEL.CLASSIFIER.NUM_CLASSES)]
        self.classes = list(classes)

    def __call__(self, bgr: np.ndarray) -> torch.Tensor:
        """Class probabilities of one BGR HWC uint8 image."""
        image = np.asarray(self.transform(Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))))
        if self.input_format == "BGR":
            image = image[:, :, ::-1]
        tensor = torch.from_numpy(image.copy()).permute(2, 0, 1)
        with torch.no_grad():
            return self.model([{"image": tensor}])[0]["scores"].cpu()

    def topk(self, scores: torch.Tensor, k: int) -> List[Dict]:
        values, indices = scores.topk(min(k, len(scores)))
        return [
            {"class_id": int(i), "label": self.classes[int(i)], "score": float(v)}
            for v, i in zip(values, indices)
        ]


def build_predictor(cfg):
    """ClassificationPredictor for MODEL.META_ARCHITECTURE RandWireClassifier, else
    DetectionPredictor."""
    if cfg.MODEL.META_ARCHITECTURE == CLASSIFIER_ARCH:
        return ClassificationPredictor(cfg)
    return DetectionPredictor(cfg)


def _unique_name(name: str, taken: set) -> str:
    stem, ext = os.path.splitext(name)
    n, out = 1, name
    while out in taken:
        out, n = f"{stem}_{n}{ext}", n + 1
    taken.add(out)
    return out


def predict(
    predictor,
    images: Sequence[str] = (),
    video: Optional[str] = None,
    output: Optional[str] = None,
    topk: int = 5,
) -> List[Dict]:
    """Run `predictor` on image files or on the frames of a video; print one line per image or
    frame. With `output` (a folder): detectors write each image with its detections under its
    file name (a video: <name>.mp4 of the drawn frames) and all results to results.json (COCO
    format); the classifier writes its top-k classes per image to results.json. Returns the
    records written to results.json."""
    detector = isinstance(predictor, DetectionPredictor)
    check_output_folder(output)
    if output:
        os.makedirs(output, exist_ok=True)
    if video:
        frames, fps = read_video(video)
        sources = ((f"{video}#{i}", i, frame) for i, frame in enumerate(frames))
    else:
        sources = _image_sources(images, getattr(predictor, "image_ids", {}))
    writer, taken, records = None, set(), []
    try:
        for name, image_id, bgr in sources:
            start = time.perf_counter()
            if not detector:
                top = predictor.topk(predictor(bgr), topk)
                records.append({"image_id": image_id, "file_name": video or name, "topk": top})
                print(f"{name}: " + ", ".join(f"{t['label']} {t['score']:.3f}" for t in top))
                continue
            instances = predictor(bgr)["instances"].to("cpu")
            records.extend(predictor.results(instances, image_id, video or name))
            line = f"{name}: {len(instances)} detections in {time.perf_counter() - start:.2f}s"
            if not output:
                print(line)
                continue
            drawn = predictor.draw(bgr, instances)
            if drawn.shape[0] < bgr.shape[0] and not (video and image_id):  # a video: once
                line += (
                    f"; drawn at {drawn.shape[1]}x{drawn.shape[0]} (the image is "
                    f"{bgr.shape[1]}x{bgr.shape[0]}; MAX_DRAWN_SIDE={MAX_DRAWN_SIDE})"
                )
            print(line)
            if video:
                writer = writer or _video_writer(video, output, fps, drawn.shape)
                writer.write(drawn)
            else:
                path = os.path.join(output, _unique_name(os.path.basename(name), taken))
                if not cv2.imwrite(path, drawn):
                    raise OSError(f"cannot write {path!r}: OpenCV's imwrite failed (disk full?)")
    finally:
        if writer is not None:
            writer.release()
    if output:
        with open(os.path.join(output, "results.json"), "w") as f:
            json.dump(records, f)
    return records


def _image_sources(paths: Sequence[str], image_ids: Dict[str, int]):
    """(path, image id, BGR image) of each file: the dataset's id of a file of DATASETS.TEST[0],
    else its position (1, 2, ...)."""
    for i, path in enumerate(paths):
        yield path, image_ids.get(os.path.realpath(path), i + 1), read_image_file(path)


def _video_writer(video: str, output: str, fps: float, shape) -> cv2.VideoWriter:
    name = os.path.splitext(os.path.basename(video))[0] + ".mp4"
    path = os.path.join(output, name)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (shape[1], shape[0]))
    if not writer.isOpened():
        raise ValueError(f"cannot write video {path!r}: this OpenCV build has no mp4v encoder")
    return writer
