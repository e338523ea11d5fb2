"""Predictions of a trained model on images, a video or a registered dataset (tools/predict.py).

Inputs are prepared as evaluation prepares them, so that predictions equal evaluation's. Out
come pictures and one JSON per image (a video: one for all frames), labelled with the class
names the checkpoint records. COCO ids exist only for a dataset's own records (`--dataset`):
then RESULTS_FILE holds COCO results for `COCO.loadRes`. No id is made up.
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
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances
from PIL import Image

from . import data as _data  # noqa: F401  (registers the embedded demo datasets)
from .config import add_randwire_config
from .data.dataset_checks import check_datasets_fit_model, prepare_datasets
from .data.imagefolder import MAX_IMAGE_PIXELS, ResizeCenterCrop
from .engine import resolve_device
from .engine.detection import draw_instances
from .inference_setup import (
    LAZY_KEYS,
    check_weights,
    input_format,
    is_classifier,
    load_any_config,
    load_model,
    prepare_image,
    read_image_file,
    require_registered,
    set_score_threshold,
    test_augmentations,
)
from .run_settings import RunConfig
from .trust import open_regular
from .utils.owned_folder import MANIFEST_FILE, check_output_folder, prepare_output_folder

__all__ = [
    "IMAGE_EXTENSIONS",
    "RESULTS_FILE",
    "MANIFEST_FILE",
    "setup_run_config",
    "split_overrides",
    "find_images",
    "check_output_folder",
    "prepare_output_folder",
    "read_image_file",
    "read_video",
    "build_predictor",
    "DetectionPredictor",
    "ClassificationPredictor",
    "predict",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Small images are drawn enlarged, so that the labels stay legible; large ones shrunk, so that
# drawing takes bounded time and memory (Detectron2's default INPUT.MAX_SIZE_TEST).
MIN_DRAWN_SIDE = 480
MAX_DRAWN_SIDE = 1333
# COCO results of a dataset's records (the name COCOEvaluator gives them).
RESULTS_FILE = "coco_instances_results.json"
logger = logging.getLogger(__name__)


def setup_run_config(
    config_file: str,
    opts: Sequence[str] = (),
    confidence_threshold: float = 0.5,
    allow_unsafe: bool = False,
    dataset: Optional[str] = None,
) -> RunConfig:
    """The settings to predict with (`.cfg`: a yaml config frozen), device resolved and weights
    checked; with `dataset`, the test dataset is that one (its categories checked on loading)."""
    run = RunConfig(load_any_config(config_file, opts, freeze=False, allow_unsafe=allow_unsafe))
    resolve_device(run)
    if not (run.lazy and is_classifier(run)):
        set_score_threshold(run.cfg, confidence_threshold)
    check_weights(run, purpose="predictions")
    if dataset is not None:
        if is_classifier(run):
            raise ValueError(
                f"--dataset {dataset}: a classifier predicts on images (--input), not on a "
                "detection dataset"
            )
        require_registered([dataset], "--dataset")
        if run.datasets("test_datasets")[:1] != [dataset]:
            logger.info(f"predicting on dataset {dataset!r}: {run.key('test_datasets')} set to it")
        run.set("test_datasets", dataset if run.lazy else (dataset,))
    if not run.lazy:
        run.cfg.freeze()
    return run


def split_overrides(words: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(inputs, overrides) of --input's words (argparse gives `--input a.jpg MODEL.WEIGHTS w` all
    to --input): overrides start at the first word that is no file and a yaml or lazy key."""
    yaml_keys = set(add_randwire_config(get_cfg()))
    for i, word in enumerate(words):
        key, sep, _ = word.partition("=")
        first = key.split(".")[0]
        lazy = sep and (first.startswith("+") or first in LAZY_KEYS)
        if (lazy or (not sep and first in yaml_keys)) and not glob.glob(word):
            return list(words[:i]), list(words[i:])
    return list(words), []


def find_images(inputs: Sequence[str]) -> List[str]:
    """The image files of `inputs` (files, folders, globs; in order); no match is an error."""
    found = []
    for pattern in inputs:
        if os.path.isdir(pattern):
            paths = sorted(os.path.join(pattern, n) for n in os.listdir(pattern))
            paths = [p for p in paths if p.lower().endswith(IMAGE_EXTENSIONS)]
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


def read_video(path: str) -> Tuple[Iterator[np.ndarray], float]:
    """(the BGR frames of a video file, its frame rate); an error if no frame decodes."""
    open_regular(path, "--video-input", "video").close()  # a FIFO would block OpenCV
    capture = cv2.VideoCapture(path)
    width, height = (
        int(capture.get(p)) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT)
    )
    if width * height > MAX_IMAGE_PIXELS:  # the container declares it; decoding allocates it
        capture.release()
        raise ValueError(
            f"--video-input {path!r} declares {width}x{height} frames, more than "
            f"MAX_IMAGE_PIXELS={MAX_IMAGE_PIXELS:,} pixels: downscale it first"
        )
    ok, first = capture.read() if capture.isOpened() else (False, None)
    if not ok:
        capture.release()
        raise ValueError(
            f"cannot read video {path!r}: OpenCV {cv2.__version__} decodes no frame of it (not a "
            "video, or its codec is missing from this OpenCV build)"
        )
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0

    def frames():
        ok, frame = True, first
        try:
            while ok:
                yield frame
                ok, frame = capture.read()
        finally:
            capture.release()

    return frames(), fps


class DetectionPredictor:
    """A detector on one BGR HWC uint8 image at a time, prepared as evaluation prepares it.
    Class names are `dataset`'s (checked; its category ids known), else the checkpoint's."""

    def __init__(self, run: RunConfig, dataset: Optional[str] = None):
        self.input_format = input_format(run)
        self.aug = test_augmentations(run.cfg)
        self.dataset = dataset
        if dataset:  # as --eval-only: the classes fit the model
            check_datasets_fit_model([dataset], run, masks=False)
        self.model, checkpoint = load_model(run)  # refuses other categories than trained
        key, count = run.num_classes()
        self.category_ids = None
        if dataset:
            meta = MetadataCatalog.get(dataset)
            ids = meta.get("thing_dataset_id_to_contiguous_id", None) or {}
            if count is not None and len(ids) != count:
                raise ValueError(
                    f"{key}={count}, but dataset {dataset!r} has {len(ids)} categories: the "
                    f"COCO category ids of the model's classes are unknown; give the dataset the "
                    "model was trained on"
                )
            self.category_ids = {index: cat for cat, index in ids.items()}
            classes = meta.thing_classes
        else:
            classes = (checkpoint.get("categories") or {}).get("thing_classes")
            if not classes:
                logger.warning("the checkpoint records no class names: labels are class indices")
        self.metadata = Metadata(thing_classes=[str(c) for c in classes or range(count or 0)])

    def __call__(self, bgr: np.ndarray) -> Dict:
        """The model's output ({"instances": ...}) for one BGR HWC uint8 image."""
        with torch.no_grad():
            return self.model([prepare_image(bgr, self.input_format, self.aug)])[0]

    def detections(self, instances: Instances, image_id: Optional[int] = None) -> List[Dict]:
        """One image's detections (bbox XYWH, score, class_index, label, ...); with a dataset's
        `image_id`, image_id and category_id too (COCO results)."""
        found = instances_to_coco_json(instances, image_id)
        classes = self.metadata.thing_classes
        for d in found:
            index = d.pop("category_id")
            d.update(class_index=index, label=classes[index] if index < len(classes) else "")
            if self.category_ids is None:
                d.pop("image_id")
            else:
                d["category_id"] = self.category_ids[index]
        return found

    def draw(self, bgr: np.ndarray, instances: Instances) -> np.ndarray:
        """The image (BGR) with the detections drawn, at `drawn_scale` of its size."""
        scale = drawn_scale(*bgr.shape[:2])
        if scale < 1:  # shrunk before drawing: matplotlib's canvas of the full image is huge
            bgr, instances = _shrink(bgr, instances, scale)
            scale = 1.0
        return draw_instances(bgr[:, :, ::-1], instances, self.metadata, scale)[:, :, ::-1]


def drawn_scale(height: int, width: int) -> float:
    """Shorter side enlarged to MIN_DRAWN_SIDE, longer side at most MAX_DRAWN_SIDE."""
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
    """RandWireClassifier on one image at a time, prepared as its validation loader does (crop
    PRETRAIN.TEST_CROPS[0]); class names from the checkpoint."""

    def __init__(self, run: RunConfig):
        cfg = run.cfg
        self.model, checkpoint = load_model(run)
        self.transform = ResizeCenterCrop(cfg.PRETRAIN.TEST_CROPS[0], cfg.PRETRAIN.TEST_CROP_RATIO)
        self.input_format = cfg.INPUT.FORMAT
        classes = checkpoint.get("classes")
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


def build_predictor(cfg, dataset: Optional[str] = None):
    """ClassificationPredictor for a yaml RandWireClassifier, else DetectionPredictor."""
    run = RunConfig.of(cfg)
    if is_classifier(run) and not run.lazy:
        return ClassificationPredictor(run)
    return DetectionPredictor(run, dataset)


def dataset_images(name: str) -> List[Tuple[str, int]]:
    """(file name, image_id) of each record of registered dataset `name`, in its order."""
    prepare_datasets([name])  # on disk (the demo data generated), checked
    return [(d["file_name"], d["image_id"]) for d in DatasetCatalog.get(name)]


def _unique_names(paths: Sequence[str]) -> List[str]:
    """The base names of `paths`, numbered where two share a stem (a.jpg, a.png -> a_1.png)."""
    taken, names = set(), []
    for path in paths:
        stem, ext = os.path.splitext(os.path.basename(path))
        n, unique = 1, stem
        while unique in taken:
            unique, n = f"{stem}_{n}", n + 1
        taken.add(unique)
        names.append(unique + ext)
    return names


def predict(
    predictor,
    images: Sequence[str] = (),
    video: Optional[str] = None,
    output: Optional[str] = None,
    topk: int = 5,
) -> List[Dict]:
    """Run `predictor` on images, a video's frames or its dataset's records, printing a line
    each; returns one result each (file_name, detections or topk). With `output`: pictures,
    <name>.json per image (a video: <name>.mp4 and one json), RESULTS_FILE for a dataset;
    MANIFEST_FILE lists them and an earlier prediction's files are removed first."""
    detector = isinstance(predictor, DetectionPredictor)
    dataset = predictor.dataset if detector else None
    items = dataset_images(dataset) if dataset else [(p, None) for p in images]
    names = _unique_names([video] if video else [p for p, _ in items])
    if output:
        written = [os.path.splitext(n)[0] + ".json" for n in names]
        if detector:
            written += [os.path.splitext(names[0])[0] + ".mp4"] if video else names
        prepare_output_folder(output, written + [RESULTS_FILE] * bool(dataset))
    if video:
        frames, fps = read_video(video)
        sources = ((video, None, i, frame) for i, frame in enumerate(frames))
    else:
        sources = ((path, image_id, None, read_image_file(path)) for path, image_id in items)
    writer, results = None, []
    try:
        for i, (path, image_id, frame, bgr) in enumerate(sources):
            start = time.perf_counter()
            result = {"file_name": path} | ({"frame": frame} if video else {})
            result |= {"image_id": image_id} if dataset else {}
            label = f"{path}#{frame}" if video else path
            if not detector:
                result["topk"] = predictor.topk(predictor(bgr), topk)
                shown = ", ".join(f"{t['label']} {t['score']:.3f}" for t in result["topk"])
                print(f"{label}: {shown}")
            else:
                instances = predictor(bgr)["instances"].to("cpu")
                result["detections"] = predictor.detections(instances, image_id)
                line = f"{label}: {len(instances)} detections in {time.perf_counter() - start:.2f}s"
                drawn = predictor.draw(bgr, instances) if output else bgr
                if drawn.shape[0] < bgr.shape[0] and not frame:  # a video: said once
                    line += (
                        f"; drawn at {drawn.shape[1]}x{drawn.shape[0]} (the image is "
                        f"{bgr.shape[1]}x{bgr.shape[0]}; MAX_DRAWN_SIDE={MAX_DRAWN_SIDE})"
                    )
                print(line)
                if output and video:
                    writer = writer or _video_writer(video, output, fps, drawn.shape)
                    writer.write(drawn)
                elif output:
                    _write_image(os.path.join(output, names[i]), drawn)
            results.append(result)
            if output and not video:
                _write_json(output, names[i], result)
    finally:
        if writer is not None:
            writer.release()
    if output and video:
        _write_json(output, names[0], {"file_name": video, "frames": results})
    if dataset:
        found = [d for r in results for d in r["detections"]]
        where = f" -> {os.path.join(output, RESULTS_FILE)}" if output else ""
        print(f"{len(found)} detections on {len(results)} images of dataset {dataset!r}{where}")
        if output:
            with open(os.path.join(output, RESULTS_FILE), "w") as f:
                json.dump(found, f)
    return results


def _write_json(output: str, name: str, value) -> None:
    with open(os.path.join(output, os.path.splitext(name)[0] + ".json"), "w") as f:
        json.dump(value, f)


def _write_image(path: str, image: np.ndarray) -> None:
    if not cv2.imwrite(path, image):
        raise OSError(f"cannot write {path!r}: OpenCV's imwrite failed (disk full?)")


def _video_writer(video: str, output: str, fps: float, shape) -> cv2.VideoWriter:
    name = os.path.splitext(os.path.basename(video))[0] + ".mp4"
    path = os.path.join(output, name)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (shape[1], shape[0]))
    if not writer.isOpened():
        raise ValueError(f"cannot write video {path!r}: this OpenCV build has no mp4v encoder")
    return writer
