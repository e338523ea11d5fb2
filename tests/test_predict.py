"""tools/predict.py and randwire_d2.predict: detections drawn and written as COCO results, a
classifier's top-k equal to evaluation's, video input, and errors that name the bad input.

The models are tiny and untrained (random weights): a randomly initialised box head scores every
class about 1/6, so a low confidence threshold gives detections to draw and write.
"""

import copy
import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from pycocotools.coco import COCO

from randwire_d2.checkpoint import RandWireCheckpointer
from randwire_d2.config import load_config
from randwire_d2.data.checks import check_image_folder
from randwire_d2.data.cls_demo import generate_classification_demo
from randwire_d2.data.detection_demo import ensure_detection_demo, register_detection_demo
from randwire_d2.engine import ClassificationTrainer
from randwire_d2.engine.classification import ClassList
from randwire_d2.predict import (
    ClassificationPredictor,
    DetectionPredictor,
    build_predictor,
    find_images,
    predict,
    read_image_file,
    read_video,
    setup_cfg,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo")
DET_CONFIG = os.path.join(DEMO, "faster_rcnn_randwire_demo.yaml")
MASK_CONFIG = os.path.join(DEMO, "mask_rcnn_randwire_demo.yaml")
CLS_CONFIG = os.path.join(DEMO, "randwire_cls_demo.yaml")
PREDICT = os.path.join(REPO, "tools", "predict.py")
# fmt: off
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RANDWIRE.CHANNELS", "8",
    "MODEL.RANDWIRE.NUM_NODES", "6",
    "MODEL.RANDWIRE.WS_K", "2",
    "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
    "INPUT.MIN_SIZE_TEST", "96",
    "INPUT.MAX_SIZE_TEST", "96",
]
TINY_CLS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RANDWIRE.CHANNELS", "8",
    "MODEL.RANDWIRE.NUM_NODES", "6",
    "MODEL.RANDWIRE.WS_K", "2",
    "MODEL.CLASSIFIER.HEAD_CHANNELS", "32",
    "PRETRAIN.TEST_CROPS", "[28, 32]",
    "SOLVER.IMS_PER_BATCH", "4",
    "DATALOADER.NUM_WORKERS", "0",
]
# fmt: on

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    """The registered demo detection data, its val split generated under a temporary root."""
    root = str(tmp_path_factory.mktemp("datasets"))
    register_detection_demo(root)
    ensure_detection_demo(root, "val")
    yield root
    register_detection_demo()


def save_random_model(config, opts, folder, name="model", **checkpointables):
    """A checkpoint of an untrained model of `config` + `opts`, written by the project's
    checkpointer (wiring, input statistics, cfg); its path."""
    cfg = load_config(config, opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    RandWireCheckpointer(model, str(folder), cfg=cfg, **checkpointables).save(name)
    return os.path.join(str(folder), f"{name}.pth")


@pytest.fixture(scope="module")
def detector_weights(tmp_path_factory):
    return save_random_model(DET_CONFIG, TINY, tmp_path_factory.mktemp("detector"))


def val_images(root, count=3):
    return sorted(glob.glob(os.path.join(root, "randwire_demo_det", "val", "*.jpg")))[:count]


def check_coco_results(records, root, masks=False):
    """Records load with pycocotools against the demo val annotations, and hold its ids."""
    assert records, "no detections to check"
    for r in records:
        assert len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and 0 <= r["score"] <= 1
        assert ("segmentation" in r) == masks
        assert not masks or isinstance(r["segmentation"]["counts"], str)  # RLE, json-ready
    gt = COCO(os.path.join(root, "randwire_demo_det", "annotations", "val.json"))
    dt = gt.loadRes(copy.deepcopy(records))  # loadRes adds fields to the records
    assert set(dt.getImgIds()) <= set(gt.getImgIds())
    assert {r["category_id"] for r in records} <= set(gt.getCatIds())
    return gt


def test_tool_draws_and_writes_coco_results_for_a_glob(demo_root, detector_weights, tmp_path):
    pattern = os.path.join(demo_root, "randwire_demo_det", "val", "00000[0-2].jpg")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, PREDICT, "--config-file", DET_CONFIG, "--input", pattern]
        + ["--output", str(out), "--confidence-threshold", "0.1"]
        + ["--opts", "MODEL.WEIGHTS", detector_weights, *TINY],
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1", DETECTRON2_DATASETS=demo_root),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    images = val_images(demo_root)
    for path in images:
        drawn = cv2.imread(str(out / os.path.basename(path)))
        assert drawn is not None and drawn.shape[0] >= 480  # enlarged to be legible
        assert f"{path}: " in proc.stdout
    with open(out / "results.json") as f:
        records = json.load(f)
    gt = check_coco_results(records, demo_root)
    # Image ids are the dataset's own: each record's file is the file of its image id.
    for r in records:
        assert gt.imgs[r["image_id"]]["file_name"] == os.path.basename(r["file_name"])
    assert {r["file_name"] for r in records} <= set(images)
    # Quiet: no third-party notes (meshgrid, is_fx_tracing at the first detector forward).
    assert not any(w in proc.stderr for w in ("Warning", "is_fx_tracing")), proc.stderr[-3000:]


def test_detection_predictor_equals_default_predictor(demo_root, detector_weights):
    """DetectionPredictor is Detectron2's DefaultPredictor with the strict checkpointer."""
    cfg = setup_cfg(DET_CONFIG, TINY + ["MODEL.WEIGHTS", detector_weights], 0.1)
    predictor = build_predictor(cfg)
    assert isinstance(predictor, DetectionPredictor)
    image = read_image_file(val_images(demo_root, 1)[0])
    ours = predictor(image)["instances"]
    theirs = DefaultPredictor(cfg)(image)["instances"]
    assert len(ours) > 0 and torch.equal(ours.scores, theirs.scores)
    assert torch.equal(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)


def test_mask_model_writes_rle_segmentations(demo_root, tmp_path):
    opts = TINY + ["MODEL.ROI_MASK_HEAD.CONV_DIM", "8"]
    weights = save_random_model(MASK_CONFIG, opts, tmp_path)
    predictor = build_predictor(setup_cfg(MASK_CONFIG, opts + ["MODEL.WEIGHTS", weights], 0.1))
    records = predict(predictor, val_images(demo_root, 2), output=str(tmp_path / "out"))
    check_coco_results(records, demo_root, masks=True)
    assert len(os.listdir(tmp_path / "out")) == 3  # 2 pictures + results.json


def test_video_input(demo_root, detector_weights, tmp_path):
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5, (160, 160))
    assert writer.isOpened(), "this OpenCV build cannot encode mp4v"
    for path in val_images(demo_root, 3):
        writer.write(cv2.imread(path))
    writer.release()
    cfg = setup_cfg(DET_CONFIG, TINY + ["MODEL.WEIGHTS", detector_weights], 0.1)
    records = predict(build_predictor(cfg), video=video, output=str(tmp_path / "out"))
    assert {r["image_id"] for r in records} == {0, 1, 2}  # frame indices
    assert {r["file_name"] for r in records} == {video}
    frames, _ = read_video(str(tmp_path / "out" / "clip.mp4"))
    drawn = list(frames)
    assert len(drawn) == 3 and drawn[0].shape[:2] == (480, 480)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """(config, checkpoint path, val samples) of an untrained classifier of the demo classes."""
    root = str(tmp_path_factory.mktemp("cls") / "demo")
    generate_classification_demo(root, {"train": 1, "val": 2}, image_size=40)
    classes, samples = check_image_folder(root, ("val",))["val"]
    opts = TINY_CLS + ["PRETRAIN.DATA_ROOT", root]
    weights = save_random_model(
        CLS_CONFIG, opts, tmp_path_factory.mktemp("cls_model"), classes=ClassList(classes)
    )
    return load_config(CLS_CONFIG, opts + ["MODEL.WEIGHTS", weights]), weights, samples


def test_classifier_topk_equals_evaluation(classifier, tmp_path, capsys):
    cfg, weights, samples = classifier
    predictor = build_predictor(setup_cfg(CLS_CONFIG, _opts(cfg, weights)))
    assert isinstance(predictor, ClassificationPredictor)
    records = predict(predictor, [p for p, _ in samples], output=str(tmp_path), topk=3)
    printed = capsys.readouterr().out
    # Evaluation's scores: the validation loader at the first test crop, the same weights.
    model = ClassificationTrainer.build_model(cfg).eval()
    RandWireCheckpointer(model, cfg=cfg, strict=True).load(weights)
    with torch.no_grad():
        loader = ClassificationTrainer.build_test_loader(cfg, cfg.PRETRAIN.TEST_CROPS[0])
        scores = torch.cat([torch.stack([o["scores"] for o in model(b)]) for b in loader])
    classes = torch.load(weights, weights_only=True)["classes"]
    assert len(records) == len(samples) == len(scores)
    for (path, _), record, expected in zip(samples, records, scores):
        top = expected.topk(3)
        assert [t["label"] for t in record["topk"]] == [classes[i] for i in top.indices]
        assert [t["score"] for t in record["topk"]] == pytest.approx(top.values.tolist(), 1e-5)
        assert f"{path}: {record['topk'][0]['label']} " in printed
    with open(tmp_path / "results.json") as f:
        assert json.load(f) == records


def _opts(cfg, weights):
    return TINY_CLS + ["PRETRAIN.DATA_ROOT", cfg.PRETRAIN.DATA_ROOT, "MODEL.WEIGHTS", weights]


def test_bad_inputs_are_named(classifier, detector_weights, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing/\*\.jpg"):
        find_images([str(tmp_path / "nothing" / "*.jpg")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        find_images([str(tmp_path / "empty")])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        read_image_file(str(broken))
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(str(tmp_path / "missing.mp4"))
    not_a_video = tmp_path / "clip.avi"
    not_a_video.write_bytes(b"RIFF????AVI garbage")
    with pytest.raises(ValueError, match="clip.avi"):
        read_video(str(not_a_video))
    with pytest.raises(ValueError, match="MODEL.WEIGHTS"):
        setup_cfg(DET_CONFIG, TINY)
    with pytest.raises(ValueError, match="confidence-threshold"):
        setup_cfg(DET_CONFIG, TINY + ["MODEL.WEIGHTS", detector_weights], 1.5)
    # A classifier checkpoint (same wiring) is not a detector's weights: refused, not half-loaded
    # (training maps its trunk into a detector; predicting needs every tensor).
    cfg, weights, _ = classifier
    with pytest.raises(ValueError, match="do not fit"):
        build_predictor(setup_cfg(DET_CONFIG, TINY + ["MODEL.WEIGHTS", weights], 0.1))
