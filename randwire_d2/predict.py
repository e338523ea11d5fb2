"""Predictions of a trained model on images or a video: tools/predict.py (as Detectron2's
demo/demo.py) is its command line; the config is either system's, read by `inference_config`.

Inputs are prepared as evaluation prepares them, so that predictions equal evaluation's:
detectors as Detectron2's DefaultPredictor (a LazyConfig: its dataloader.test.mapper), the
classifier as its validation loader at the first PRETRAIN.TEST_CROPS size; images are read as
the classification loader reads them (`read_rgb_image`). The classifier's top-k classes are
labelled with the class names its checkpoint carries. A detector's detections are drawn and
written as COCO results with the ids of DATASETS.TEST[0] (lazy: dataloader.test.dataset.names[0]),
which must be registered (--dataset NAME JSON IMAGE_DIR, or the demo datasets): RESULTS_FILE
holds those with both ids (for `COCO.loadRes`), WITHOUT_IDS_FILE those whose image or category
id cannot be known (an image not in the dataset, a video frame, no dataset), with null there and
why. No id is ever made up.
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
from .data.dataset_checks import check_datasets_fit_model
from .data.imagefolder import MAX_IMAGE_PIXELS, ResizeCenterCrop
from .engine import resolve_device
from .engine.detection import draw_instances
from .inference_config import (
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
from .run_config import RunConfig, is_lazy
from .trust import open_regular, read_bounded

__all__ = [
    "IMAGE_EXTENSIONS",
    "RESULTS_FILE",
    "WITHOUT_IDS_FILE",
    "setup_cfg",
    "split_overrides",
    "check_dataset_flags",
    "find_images",
    "check_output_folder",
    "prepare_output_folder",
    "MANIFEST_FILE",
    "read_image_file",
    "read_video",
    "build_predictor",
    "DatasetIds",
    "DetectionPredictor",
    "ClassificationPredictor",
    "predict",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Small images are drawn enlarged, so that the labels stay legible; large ones shrunk, so that
# drawing takes bounded time and memory (Detectron2's default INPUT.MAX_SIZE_TEST).
MIN_DRAWN_SIDE = 480
MAX_DRAWN_SIDE = 1333
RESULTS_FILE = "results.json"
WITHOUT_IDS_FILE = "results_without_ids.json"
# The files a prediction wrote into --output: a rerun replaces them, and only them.
MANIFEST_FILE = "predict_manifest.json"
WITHOUT_IDS_NOTE = (
    "Detections whose COCO image_id or category_id cannot be known: that id is null and "
    "'unknown_ids' says why; class_index is the model's class, label its name. "
    f"{RESULTS_FILE} holds the detections with both ids, ready for COCO.loadRes."
)
logger = logging.getLogger(__name__)


def setup_cfg(
    config_file: str,
    opts: Sequence[str] = (),
    confidence_threshold: float = 0.5,
    allow_unsafe: bool = False,
):
    """The config to predict with (`load_any_config`; a yaml config frozen): the device
    resolved, `confidence_threshold` the minimum score of a detection shown and written, the
    weights checked to be given and on disk."""
    cfg = load_any_config(config_file, opts, freeze=False, allow_unsafe=allow_unsafe)
    resolve_device(cfg)
    if not (is_lazy(cfg) and is_classifier(cfg)):
        set_score_threshold(cfg, confidence_threshold)
    check_weights(cfg, purpose="predictions")
    if not is_lazy(cfg):
        cfg.freeze()
    return cfg


def split_overrides(words: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(inputs, overrides) of --input's words: argparse gives `--input a.jpg MODEL.WEIGHTS w`
    all to --input. The overrides start at the first word that names no existing file and is a
    yaml key whose first part is a top-level key of the config (MODEL.WEIGHTS, OUTPUT_DIR), or a
    key=value whose first part is one of LAZY_KEYS (or +key=value)."""
    yaml_keys = set(add_randwire_config(get_cfg()))
    for i, word in enumerate(words):
        key, sep, _ = word.partition("=")
        first = key.split(".")[0]
        lazy = sep and (first.startswith("+") or first in LAZY_KEYS)
        if (lazy or (not sep and first in yaml_keys)) and not glob.glob(word):
            return list(words[:i]), list(words[i:])
    return list(words), []


def check_dataset_flags(cfg, registered: Sequence[str]) -> None:
    """Datasets given with --dataset are for DATASETS.TEST[0] (lazy: dataloader.test.dataset.
    names), whose ids and class names predictions take: one of them must be it."""
    run = RunConfig(cfg)
    key, names = run.key("test_datasets"), run.datasets("test_datasets")
    if registered and (not names or names[0] not in registered):
        name = registered[0]
        fix = run.override("test_datasets", name if run.lazy else f"\"('{name}',)\"")
        raise ValueError(
            f"--dataset {', '.join(registered)} is not what the config predicts with: "
            f"{key} is {names}, and predictions take their ids and class names from its first "
            f"dataset; set {fix}"
        )


def find_images(inputs: Sequence[str]) -> List[str]:
    """The image files that `inputs` name: files, folders (their images, sorted) or glob
    patterns (sorted), in the order given. A name that matches no image is an error."""
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


def check_output_folder(output: Optional[str], flag: str = "--output") -> List[str]:
    """`output` must not exist yet (it is created), be empty, or hold an earlier prediction
    (its MANIFEST_FILE): a folder holding files that predict did not write is refused, so that
    no file of the user's is replaced and no earlier picture is left among the new ones.
    Returns the files of the earlier prediction (that `prepare_output_folder` removes)."""
    if not output or not os.path.exists(output):
        return []
    if not os.path.isdir(output):
        raise ValueError(
            f"{flag} {output!r} is an existing file: expected a folder (created if missing) for "
            "the drawn images and results.json"
        )
    entries = sorted(os.listdir(output))
    if MANIFEST_FILE in entries:
        return _read_manifest(os.path.join(output, MANIFEST_FILE))
    if entries:
        shown = ", ".join(entries[:3]) + (
            f" and {len(entries) - 3} more" if len(entries) > 3 else ""
        )
        raise FileExistsError(
            f"{flag} {output!r} holds files that tools/predict.py did not write ({shown}): give "
            f"an empty or new folder (predict replaces only its own earlier outputs, which its "
            f"{MANIFEST_FILE} lists)"
        )
    return []


def _read_manifest(path: str) -> List[str]:
    """The file names an earlier prediction wrote, from its MANIFEST_FILE (a regular file, read
    with a bound): plain names in the folder; a path elsewhere, "..", a hidden name is an error
    naming the manifest, so that no list can make predict remove another file."""
    fix = "remove the folder's files, or give an empty or new --output folder"
    try:
        text = read_bounded(path, "--output's manifest", "results")
    except ValueError as e:
        raise ValueError(f"{e}: not predict's list of files; {fix}") from None
    try:
        files = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not predict's list of files ({e!r}); {fix}") from None
    names = files if isinstance(files, list) else [files]
    bad = [n for n in names if not _plain_name(n)] or ([] if isinstance(files, list) else [files])
    if bad:
        raise ValueError(f"{path} lists {bad[0]!r}, not a file name predict writes; {fix}")
    return files


def _plain_name(name) -> bool:
    """A file name in the folder itself, not the manifest: no path, no "..", not hidden."""
    return (
        isinstance(name, str)
        and name == os.path.basename(name)
        and not name.startswith(".")
        and name not in ("", MANIFEST_FILE)
    )


def prepare_output_folder(output: str, names: Sequence[str]) -> List[str]:
    """Make `output` ready for a prediction that writes `names`: the files an earlier prediction
    wrote there are removed (other files stay; see `check_output_folder`), then MANIFEST_FILE
    lists `names`, before any of them is written. Returns the removed names."""
    earlier = check_output_folder(output)
    removed = [n for n in earlier if os.path.isfile(os.path.join(output, n))]
    for n in removed:
        os.remove(os.path.join(output, n))
    if removed:
        logger.info(f"removed the {len(removed)} files of the earlier prediction in {output}")
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, MANIFEST_FILE), "w") as f:
        json.dump({"written_by": "tools/predict.py", "files": list(names)}, f, indent=0)
    return removed


def read_video(path: str) -> Tuple[Iterator[np.ndarray], float]:
    """(the BGR frames of a video file, its frame rate); an error names a missing video, or one
    of which this OpenCV build cannot decode a frame."""
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


class DatasetIds:
    """The COCO ids of predictions on the images of registered dataset `name`, as COCOEvaluator
    writes them: a file's image id is the dataset's (matched by real path, else by file name, the
    longest shared trailing path and the image size), a class index's category id is the
    dataset's (the inverse of thing_dataset_id_to_contiguous_id). An id that cannot be known is
    None, with the reason (`why` when `name` is None); nothing is guessed."""

    def __init__(self, name: Optional[str], why: str = ""):
        self.name, self.why = name, why
        self.metadata = MetadataCatalog.get(name) if name else Metadata()
        records = []
        if name:
            json_file = self.metadata.get("json_file")
            if json_file and not os.path.isfile(json_file):
                if not self.metadata.get("generated_on_demand", False):
                    self.why = (
                        f"dataset {name!r} is not on disk ({json_file} does not exist), so the "
                        "image ids of its files are unknown"
                    )
            if not self.why:
                records = DatasetCatalog.get(name)  # load_coco_json sets the category id map
        self.num_images = len(records)
        self._by_path = {os.path.realpath(d["file_name"]): d for d in records}
        self._by_name: Dict[str, List[Dict]] = {}
        for d in records:
            self._by_name.setdefault(os.path.basename(d["file_name"]), []).append(d)
        id_map = self.metadata.get("thing_dataset_id_to_contiguous_id", None)
        self._category_ids = {v: k for k, v in id_map.items()} if id_map else None
        self.classes = list(self.metadata.get("thing_classes", None) or [])

    @classmethod
    def of(cls, cfg) -> "DatasetIds":
        """The ids of DATASETS.TEST[0] (lazy: dataloader.test.dataset.names[0]), which must be
        registered (an error names the --dataset flag); none when the config names no dataset."""
        run = RunConfig(cfg)
        key, names = run.key("test_datasets"), run.datasets("test_datasets")
        if not names:
            return cls(None, f"{key} is empty: there is no dataset to take ids from")
        empty = run.override("test_datasets", "[]" if run.lazy else "'()'")
        alternative = f", or {empty} to predict without a dataset (class indices, no COCO ids)"
        require_registered(names[:1], f"{key}[0]", alternative)
        return cls(names[0])

    def describe(self, num_classes: Tuple[Optional[str], Optional[int]] = (None, None)):
        """Lines that say where ids and class names come from, and a class count unlike the
        model's."""
        if self.name is None:
            return [
                f"ids: none ({self.why}): detections get image_id and category_id null and are "
                "labelled by class index"
            ]
        cats = sorted(self._category_ids.values()) if self._category_ids else "unknown"
        images = self.why or f"{self.num_images} images"
        lines = [f"ids: dataset {self.name!r} ({images}; category ids {cats})"]
        key, n = num_classes
        if n is not None and self.classes and n != len(self.classes):
            lines.append(
                f"note: the model predicts {n} classes ({key}={n}) but dataset {self.name!r} has "
                f"{len(self.classes)} categories: is it the dataset the model was trained on? A "
                f"class index >= {len(self.classes)} gets category_id null"
            )
        return lines

    def image_id(self, path: str, height: int, width: int) -> Tuple[Optional[int], str]:
        """(the dataset's id of image file `path` of this size, "" or how it was matched), or
        (None, why it is unknown)."""
        if self.name is None or self.why:
            return None, self.why
        found = self._by_path.get(os.path.realpath(path))
        if found is not None:
            return found["image_id"], ""
        name = os.path.basename(path)
        candidates = self._by_name.get(name, [])
        if not candidates:
            return None, f"{path} is not an image of dataset {self.name!r} (by path or file name)"
        parts = os.path.realpath(path).split(os.sep)

        def shared(d):  # trailing path components in common: sub/x.jpg beats x.jpg
            theirs, n = os.path.normpath(d["file_name"]).split(os.sep), 0
            while n < min(len(parts), len(theirs)) and parts[-1 - n] == theirs[-1 - n]:
                n += 1
            return n

        best = max(shared(d) for d in candidates)
        top = [d for d in candidates if shared(d) == best]
        if len(top) > 1:
            ids = sorted(d["image_id"] for d in top)
            return None, (
                f"its file name matches {len(top)} images of dataset {self.name!r} (image ids "
                f"{ids}): give the file in the dataset's image folder"
            )
        d = top[0]
        size = (d.get("height"), d.get("width"))
        if None not in size and size != (height, width):
            return None, (
                f"{name} is image {d['image_id']} of dataset {self.name!r} by file name, but it is "
                f"{width}x{height} and that image {size[1]}x{size[0]}: not the same image"
            )
        return d["image_id"], f"image_id {d['image_id']} by file name ({d['file_name']})"

    def category_id(self, class_index: int) -> Tuple[Optional[int], str]:
        """(the dataset's category id of a class index, ""), or (None, why it is unknown)."""
        if self.name is None:
            return None, self.why
        if self._category_ids is None:
            return None, (
                f"dataset {self.name!r} has no thing_dataset_id_to_contiguous_id in its metadata"
            )
        if class_index not in self._category_ids:
            return None, (
                f"class index {class_index} is no category of dataset {self.name!r} (its "
                f"{len(self._category_ids)} categories are class indices 0.."
                f"{len(self._category_ids) - 1})"
            )
        return self._category_ids[class_index], ""


class DetectionPredictor:
    """A detector on one BGR HWC uint8 image at a time, prepared as evaluation prepares images,
    with weights loaded strictly and the COCO ids and class names of the test dataset
    (`DatasetIds`), which must fit the model's class count and be the categories its checkpoint
    was trained on."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.input_format = input_format(cfg)
        self.aug = test_augmentations(cfg)
        self.ids = DatasetIds.of(cfg)
        if self.ids.name and not self.ids.why:  # as --eval-only: the classes fit the model
            check_datasets_fit_model([self.ids.name], cfg, masks=False)
        self.model, self.checkpoint = load_model(cfg)  # refuses other categories than trained
        self.num_classes = RunConfig(cfg).num_classes()

    def __call__(self, bgr: np.ndarray) -> Dict:
        """The model's output ({"instances": ...}) for one BGR HWC uint8 image."""
        with torch.no_grad():
            return self.model([prepare_image(bgr, self.input_format, self.aug)])[0]

    def results(self, instances, file_name: str, frame: Optional[int] = None):
        """(COCO-format results of one image or video frame with its file_name (and frame), the
        image id, the note on it). A record whose image_id or category_id is unknown holds None
        there, plus its class_index, label and `unknown_ids`: why."""
        if frame is None:
            image_id, note = self.ids.image_id(file_name, *instances.image_size)
        else:
            image_id, note = None, "a video frame has no COCO image id"
        records = instances_to_coco_json(instances, image_id)
        for r in records:
            index = r["category_id"]
            r["category_id"], why_category = self.ids.category_id(index)
            r["file_name"] = file_name
            if frame is not None:
                r["frame"] = frame
            why = [f"image_id: {note}"] * (image_id is None)
            why += [f"category_id: {why_category}"] * (r["category_id"] is None)
            if why:  # labelled with the dataset's class name, else the class index
                label = self.ids.classes[index] if index < len(self.ids.classes) else str(index)
                r.update(class_index=index, label=label, unknown_ids="; ".join(why))
        return records, image_id, note

    def draw(self, bgr: np.ndarray, instances) -> np.ndarray:
        """The image (BGR) with the detections drawn by `draw_instances`, at `drawn_scale` of its
        size, labelled with the dataset's class names (class indices where it has none)."""
        scale = drawn_scale(*bgr.shape[:2])
        if scale < 1:  # shrunk before drawing: matplotlib's canvas of the full image is huge
            bgr, instances = _shrink(bgr, instances, scale)
            scale = 1.0
        return draw_instances(bgr[:, :, ::-1], instances, self.ids.metadata, scale)[:, :, ::-1]


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
        self.model, self.checkpoint = load_model(self.cfg)
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
    """ClassificationPredictor for MODEL.META_ARCHITECTURE RandWireClassifier (yaml configs),
    else DetectionPredictor (yaml or LazyConfig)."""
    if is_classifier(cfg) and not is_lazy(cfg):
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
    file name (a video: <name>.mp4 of the drawn frames), RESULTS_FILE and WITHOUT_IDS_FILE; the
    classifier its top-k classes per image to RESULTS_FILE; MANIFEST_FILE lists them, and the
    files an earlier prediction listed there are removed first (`prepare_output_folder`).
    Returns the records, in input order."""
    detector = isinstance(predictor, DetectionPredictor)
    taken = set()
    drawn_names = [_unique_name(os.path.basename(p), taken) for p in images]
    if output:
        written = [RESULTS_FILE] + ([WITHOUT_IDS_FILE] if detector else [])
        if detector:
            written += [_video_name(video)] if video else drawn_names
        prepare_output_folder(output, written)
    if detector:
        print("\n".join(predictor.ids.describe(predictor.num_classes)))
    if video:
        frames, fps = read_video(video)
        sources = ((f"{video}#{i}", i, frame) for i, frame in enumerate(frames))
    else:
        sources = ((path, None, read_image_file(path)) for path in images)
    writer, records = None, []
    try:
        for i, (name, frame, bgr) in enumerate(sources):
            start = time.perf_counter()
            if not detector:
                top = predictor.topk(predictor(bgr), topk)
                image_id = i if video else i + 1  # the frame index, or the position
                records.append({"image_id": image_id, "file_name": video or name, "topk": top})
                print(f"{name}: " + ", ".join(f"{t['label']} {t['score']:.3f}" for t in top))
                continue
            instances = predictor(bgr)["instances"].to("cpu")
            found, image_id, note = predictor.results(instances, video or name, frame)
            records.extend(found)
            line = f"{name}: {len(instances)} detections in {time.perf_counter() - start:.2f}s"
            if image_id is None and frame is None:
                line += f"; image_id unknown: {note}"
            elif note:
                line += f"; {note}"
            if output:
                drawn = predictor.draw(bgr, instances)
                if drawn.shape[0] < bgr.shape[0] and not (video and frame):  # a video: once
                    line += (
                        f"; drawn at {drawn.shape[1]}x{drawn.shape[0]} (the image is "
                        f"{bgr.shape[1]}x{bgr.shape[0]}; MAX_DRAWN_SIDE={MAX_DRAWN_SIDE})"
                    )
            print(line)
            if output and video:
                writer = writer or _video_writer(video, output, fps, drawn.shape)
                writer.write(drawn)
            elif output:
                path = os.path.join(output, drawn_names[i])
                if not cv2.imwrite(path, drawn):
                    raise OSError(f"cannot write {path!r}: OpenCV's imwrite failed (disk full?)")
    finally:
        if writer is not None:
            writer.release()
    if detector:
        _write_detections(records, predictor.ids.name, output)
    elif output:
        with open(os.path.join(output, RESULTS_FILE), "w") as f:
            json.dump(records, f)
    return records


def _write_detections(records: List[Dict], dataset: Optional[str], output: Optional[str]):
    """RESULTS_FILE: the records with both ids (COCO.loadRes reads it as it is);
    WITHOUT_IDS_FILE: the others, under a note; and a line that says how many went where."""
    known = [r for r in records if "unknown_ids" not in r]
    unknown = [r for r in records if "unknown_ids" in r]
    if output:
        with open(os.path.join(output, RESULTS_FILE), "w") as f:
            json.dump(known, f)
        with open(os.path.join(output, WITHOUT_IDS_FILE), "w") as f:
            json.dump({"dataset": dataset, "note": WITHOUT_IDS_NOTE, "results": unknown}, f)
    if not unknown:
        where = f" -> {os.path.join(output, RESULTS_FILE)}" if output else ""
        print(f"{len(known)} detections, all with the dataset's image and category ids{where}")
        return
    no_image = sum(r["image_id"] is None for r in unknown)
    no_category = sum(r["category_id"] is None for r in unknown)
    where = (
        f": {os.path.join(output, RESULTS_FILE)} holds the {len(known)} with both ids (for "
        f"COCO.loadRes), {os.path.join(output, WITHOUT_IDS_FILE)} these, with null ids and why"
        if output
        else ""
    )
    print(
        f"{len(unknown)} of {len(records)} detections have unknown ids (image_id: {no_image}, "
        f"category_id: {no_category}){where}"
    )


def _video_name(video: str) -> str:
    return os.path.splitext(os.path.basename(video))[0] + ".mp4"


def _video_writer(video: str, output: str, fps: float, shape) -> cv2.VideoWriter:
    path = os.path.join(output, _video_name(video))
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (shape[1], shape[0]))
    if not writer.isOpened():
        raise ValueError(f"cannot write video {path!r}: this OpenCV build has no mp4v encoder")
    return writer
