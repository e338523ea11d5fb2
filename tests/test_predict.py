"""tools/predict.py and randwire_d2.predict: detections drawn and written per image, COCO results
with a dataset's own ids, a classifier's top-k equal to evaluation's, video input, and errors
that name the bad input.

The models are tiny and untrained (random weights): a randomly initialised box head scores every
class about 1/6, so a low confidence threshold gives detections to draw and write.
"""

import glob
import json
import os

import cv2
import numpy as np
import pytest
import torch
from common import (
    CLS_CONFIG,
    DET_CONFIG,
)
from common import LAZY_DET_CONFIG as LAZY_DEMO
from common import (
    MASK_CONFIG,
    REPO,
    TINY_1CLASS,
    TINY_PREDICT_CLS,
    TINY_PREDICT_DET,
    USER_IMAGES,
    load_tool,
    run_tool,
    save_random_model,
    tiny_cfg,
)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO

import randwire_d2.predict as predict_lib
from randwire_d2.checkpoint import RandWireCheckpointer, load_for_eval
from randwire_d2.config import load_config
from randwire_d2.data.cls_demo import generate_classification_demo
from randwire_d2.data.dataset_checks import (
    check_image_folder,
    prepare_datasets,
    register_user_datasets,
)
from randwire_d2.data.detection_demo import ensure_detection_demo, register_detection_demo
from randwire_d2.engine import ClassificationTrainer, Trainer
from randwire_d2.engine.classification import ClassList
from randwire_d2.predict import (
    RESULTS_FILE,
    ClassificationPredictor,
    DetectionPredictor,
    build_predictor,
    find_images,
    predict,
    read_image_file,
    read_video,
    setup_run_config,
)

predict_tool = load_tool("predict")
TINY = TINY_PREDICT_DET
TINY_CLS = TINY_PREDICT_CLS


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    """The registered demo detection data, its val split generated under a temporary root."""
    root = str(tmp_path_factory.mktemp("datasets"))
    register_detection_demo(root)
    ensure_detection_demo(root, "val")
    yield root
    register_detection_demo()


@pytest.fixture(scope="module")
def detector_weights(tmp_path_factory):
    return save_random_model(DET_CONFIG, TINY, tmp_path_factory.mktemp("detector"))


def val_images(root, count=3):
    return sorted(glob.glob(os.path.join(root, "randwire_demo_det", "val", "*.jpg")))[:count]


def check_detections(results, masks=False, num_classes=6):
    """Per-image results hold detections (XYWH boxes, scores, class indices, RLE masks) and no
    COCO id: without a dataset none can be known."""
    found = [d for r in results for d in r["detections"]]
    assert found, "no detections to check"
    for r in results:
        assert "image_id" not in r
    for d in found:
        assert len(d["bbox"]) == 4 and d["bbox"][2] >= 0 and 0 <= d["score"] <= 1
        assert 0 <= d["class_index"] < num_classes and "category_id" not in d
        assert "image_id" not in d and ("segmentation" in d) == masks
        assert not masks or isinstance(d["segmentation"]["counts"], str)  # RLE, json-ready
    return found


@pytest.mark.slow
def test_tool_draws_and_writes_a_json_per_image_for_a_glob(demo_root, detector_weights, tmp_path):
    pattern = os.path.join(demo_root, "randwire_demo_det", "val", "00000[0-2].jpg")
    out = tmp_path / "out"
    proc = run_tool(  # the smoke test of its command line, in a fresh process
        "predict",
        *("--config-file", DET_CONFIG, "--input", pattern, "--output", out),
        *("--confidence-threshold", "0.1", "--opts", "MODEL.WEIGHTS", detector_weights, *TINY),
        env={"DETECTRON2_DATASETS": demo_root},
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    images = val_images(demo_root)
    for path in images:
        drawn = cv2.imread(str(out / os.path.basename(path)))
        assert drawn is not None and drawn.shape[0] >= 480  # enlarged to be legible
        assert f"{path}: " in proc.stdout
    results = [json.loads((out / (os.path.basename(p)[:-4] + ".json")).read_text()) for p in images]
    assert [r["file_name"] for r in results] == images
    check_detections(results)
    assert not (out / RESULTS_FILE).exists()  # no dataset: no COCO ids, no COCO results
    # Quiet: no third-party notes (meshgrid, is_fx_tracing at the first detector forward).
    assert not any(w in proc.stderr for w in ("Warning", "is_fx_tracing")), proc.stderr[-3000:]


@pytest.mark.slow
def test_detection_predictor_equals_default_predictor(demo_root, detector_weights):
    """DetectionPredictor is Detectron2's DefaultPredictor with the strict checkpointer."""
    run = setup_run_config(DET_CONFIG, TINY + ["MODEL.WEIGHTS", detector_weights], 0.1)
    predictor = build_predictor(run)
    assert isinstance(predictor, DetectionPredictor)
    image = read_image_file(val_images(demo_root, 1)[0])
    ours = predictor(image)["instances"]
    theirs = DefaultPredictor(run.cfg)(image)["instances"]
    assert len(ours) > 0 and torch.equal(ours.scores, theirs.scores)
    assert torch.equal(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)


@pytest.mark.slow
def test_mask_model_writes_rle_segmentations(demo_root, tmp_path):
    opts = TINY + ["MODEL.ROI_MASK_HEAD.CONV_DIM", "8"]
    weights = save_random_model(MASK_CONFIG, opts, tmp_path)
    predictor = build_predictor(
        setup_run_config(MASK_CONFIG, opts + ["MODEL.WEIGHTS", weights], 0.1)
    )
    results = predict(predictor, val_images(demo_root, 2), output=str(tmp_path / "out"))
    check_detections(results, masks=True)
    # 2 pictures, their 2 results, and their list
    assert len(os.listdir(tmp_path / "out")) == 5


@pytest.mark.slow
def test_video_input(demo_root, detector_weights, tmp_path):
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5, (160, 160))
    assert writer.isOpened(), "this OpenCV build cannot encode mp4v"
    for path in val_images(demo_root, 3):
        writer.write(cv2.imread(path))
    writer.release()
    run = setup_run_config(DET_CONFIG, TINY + ["MODEL.WEIGHTS", detector_weights], 0.1)
    results = predict(build_predictor(run), video=video, output=str(tmp_path / "out"))
    # One result per frame, with its index; a frame has no COCO image id.
    assert [r["frame"] for r in results] == [0, 1, 2] and {r["file_name"] for r in results} == {
        video
    }
    check_detections(results)
    written = json.loads((tmp_path / "out" / "clip.json").read_text())
    assert written == {"file_name": video, "frames": results}
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
    predictor = build_predictor(setup_run_config(CLS_CONFIG, _opts(cfg, weights)))
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
    written = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]  # one per image
    written = [r for r in written if "topk" in r]
    assert sorted(written, key=str) == sorted(records, key=str)


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
        setup_run_config(DET_CONFIG, TINY)
    with pytest.raises(ValueError, match="confidence-threshold"):
        setup_run_config(DET_CONFIG, TINY + ["MODEL.WEIGHTS", detector_weights], 1.5)
    # A classifier checkpoint (same wiring) is not a detector's weights: refused, not half-loaded
    # (training maps its trunk into a detector; predicting needs every tensor).
    cfg, weights, _ = classifier
    with pytest.raises(ValueError, match="do not fit"):
        build_predictor(setup_run_config(DET_CONFIG, TINY + ["MODEL.WEIGHTS", weights], 0.1))


# ---------------------------------------------------------------------------------------------
# A user's own COCO dataset (tools/train_net.py --dataset NAME JSON IMAGE_DIR), yaml and lazy


@pytest.fixture(scope="module")
def one_class_weights(tmp_path_factory):
    return save_random_model(DET_CONFIG, TINY_1CLASS, tmp_path_factory.mktemp("trees_model"))


def test_user_dataset_ids_are_the_datasets_own(
    user_data, one_class_weights, tmp_path, capsys, forget_datasets
):
    """--dataset NAME JSON IMAGE_DIR: predictions on the dataset's own records, each with its
    image id (17, 40, 3) and category id 1: coco_instances_results.json loads with COCO.loadRes.
    Overrides trail --dataset (plain KEY VALUE); the config's test dataset becomes it."""
    out = tmp_path / "out"
    predict_tool.main(
        ["--config-file", DET_CONFIG, "--output", str(out), "--confidence-threshold", "0.1"]
        + ["--dataset", "trees_val", user_data["json"], user_data["images"]]
        + TINY_1CLASS
        + ["DATASETS.TEST", "('elsewhere',)", "MODEL.WEIGHTS", one_class_weights]
    )
    printed = capsys.readouterr().out
    expected = {os.path.join(user_data["images"], k): v for k, v in USER_IMAGES.items()}
    for path, image_id in expected.items():
        result = json.loads((out / (os.path.basename(path)[:-4] + ".json")).read_text())
        assert result["file_name"] == path and result["image_id"] == image_id
        assert result["detections"], "every image has detections at threshold 0.1"
        assert {d["image_id"] for d in result["detections"]} == {image_id}
        assert {(d["category_id"], d["class_index"], d["label"]) for d in result["detections"]} == {
            (1, 0, "tree")
        }
        assert f"{path}: " in printed
    records = json.loads((out / RESULTS_FILE).read_text())
    assert {r["image_id"] for r in records} == {17, 40, 3}
    dt = COCO(user_data["json"]).loadRes(str(out / RESULTS_FILE))
    assert set(dt.getImgIds()) == {17, 40, 3}
    assert f"detections on 3 images of dataset 'trees_val' -> {out / RESULTS_FILE}" in printed


def test_without_a_dataset_no_id_is_written(
    user_data, one_class_weights, tmp_path, capsys, forget_datasets
):
    """Images predict without any dataset, even where the config names one that is not
    registered: no image or category id, no COCO results. --dataset NAME of a dataset that is
    not registered is an error naming the flag that registers it."""
    argv = ["--config-file", DET_CONFIG, "--output", str(tmp_path), "--confidence-threshold"]
    argv += ["0.1"] + TINY_1CLASS + ["MODEL.WEIGHTS", one_class_weights]
    with pytest.raises(SystemExit, match=r"'trees_val', which is not registered: pass --dataset"):
        predict_tool.main(argv[:2] + ["--dataset", "trees_val"] + argv[2:])
    results = predict_tool.main(
        argv[:2] + ["--input", user_data["other"]] + argv[2:] + ["DATASETS.TEST", "('trees_val',)"]
    )
    assert [r["file_name"] for r in results] == [user_data["other"]]
    check_detections(results, num_classes=1)
    assert sorted(os.listdir(tmp_path)) == ["predict_manifest.json", "x.jpg", "x.json"]


def test_override_syntax_is_checked_per_config_system():
    from randwire_d2.inference_setup import load_any_config
    from randwire_d2.predict import split_overrides

    assert split_overrides(["a.jpg", "MODEL.WEIGHTS", "w", "SEED", "1"]) == (
        ["a.jpg"],
        ["MODEL.WEIGHTS", "w", "SEED", "1"],
    )
    assert split_overrides(["b/*.jpg", "train.init_checkpoint=w"]) == (
        ["b/*.jpg"],
        ["train.init_checkpoint=w"],
    )
    with pytest.raises(ValueError, match="yaml config, whose overrides are KEY VALUE"):
        load_any_config(DET_CONFIG, ["MODEL.WEIGHTS=w"])
    lazy = os.path.join(REPO, "configs", "lazy", "demo", "faster_rcnn_randwire_demo.py")
    with pytest.raises(ValueError, match="LazyConfig, whose overrides are key=value"):
        load_any_config(lazy, ["MODEL.WEIGHTS", "w"])


@pytest.mark.slow
def test_lazy_config_and_its_saved_yaml_predict_with_the_datasets_ids(
    lazy_run, user_data, tmp_path, forget_datasets
):
    """A LazyConfig .py (key=value overrides, after --opts too) and the config.yaml its run
    saved predict the same detections, with the dataset's ids."""
    opts, saved, weights = lazy_run
    runs = {}
    for config, overrides in [(LAZY_DEMO, ["--opts"] + opts), (saved, [])]:
        out = tmp_path / os.path.basename(config)
        predict_tool.main(
            ["--config-file", config, "--output", str(out), "--confidence-threshold", "0.1"]
            + ["--dataset", "trees_val", user_data["json"], user_data["images"]]
            + overrides
            + [f"train.init_checkpoint={weights}"]
        )
        DatasetCatalog.remove("trees_val")
        MetadataCatalog.remove("trees_val")
        runs[config] = json.loads((out / RESULTS_FILE).read_text())
    records = runs[saved]
    assert records and records == runs[LAZY_DEMO]
    assert {r["image_id"] for r in records} <= {17, 40, 3} and {
        r["category_id"] for r in records
    } == {1}
    COCO(user_data["json"]).loadRes(str(tmp_path / "config.yaml" / RESULTS_FILE))


def _categories_json(folder, name, category_ids):
    """A COCO json of the user dataset's images sub/a.jpg, sub/b.jpg with one box of each of
    `category_ids` (named c<id>); its path."""
    images = [
        {"id": i + 1, "file_name": f"sub/{n}.jpg", "height": 64, "width": 64}
        for i, n in enumerate("ab")
    ]
    annotations = [
        {"id": k + 1, "image_id": k % 2 + 1, "category_id": c, "bbox": [8, 10, 30, 24]}
        | {"area": 720, "iscrowd": 0}
        for k, c in enumerate(category_ids)
    ]
    categories = [{"id": c, "name": f"c{c}"} for c in category_ids]
    path = os.path.join(folder, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


@pytest.mark.slow
def test_predict_refuses_a_dataset_of_other_categories_than_the_checkpoints(
    user_data, tmp_path, caplog, forget_datasets
):
    """A detector trained on category ids {7, 9} records them in its checkpoint: predicting with
    a dataset of {9, 11} is an error naming both, as is a dataset of more categories than
    NUM_CLASSES (as --eval-only); a checkpoint without the record predicts, with a warning."""
    specs = [
        (n, _categories_json(tmp_path, n, ids), user_data["images"])
        for n, ids in [("cats_a", [7, 9]), ("cats_b", [9, 11]), ("cats_c", [7, 9, 11])]
    ]
    register_user_datasets(specs[:1])
    cfg = tiny_cfg(
        *("DATASETS.TRAIN", ("cats_a",), "DATASETS.TEST", (), "MODEL.ROI_HEADS.NUM_CLASSES", 2),
        *("SOLVER.MAX_ITER", 1, "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", str(tmp_path / "run")),
    )
    prepare_datasets(["cats_a"])  # as train_net's setup
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    weights = str(tmp_path / "run" / "model_final.pth")
    record = torch.load(weights, weights_only=True)["categories"]
    assert record == {
        "dataset": "cats_a",
        "thing_classes": ["c7", "c9"],
        "thing_dataset_id_to_contiguous_id": {7: 0, 9: 1},
    }
    DatasetCatalog.remove("cats_a")
    MetadataCatalog.remove("cats_a")

    def run(spec, weights=weights):
        argv = ["--config-file", DET_CONFIG, "--dataset", *spec]
        argv += TINY + ["MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.WEIGHTS", weights]
        try:
            return predict_tool.main(argv)
        finally:
            DatasetCatalog.remove(spec[0])
            MetadataCatalog.remove(spec[0])

    with pytest.raises(
        SystemExit,
        match=r"trained on the categories of dataset 'cats_a' \{7: 'c7', 9: 'c9'\}, but dataset "
        r"'cats_b' has \{9: 'c9', 11: 'c11'\}",
    ):
        run(specs[1])
    with pytest.raises(
        SystemExit,
        match=r"MODEL.ROI_HEADS.NUM_CLASSES=2 is too small for dataset 'cats_c', which has 3 cat",
    ):
        run(specs[2])
    assert run(specs[0]) is not None  # the training dataset's categories
    register_user_datasets(specs[1:2])  # evaluation (and export: load_for_eval) refuse it too
    cfg = tiny_cfg("DATASETS.TEST", ("cats_b",), "MODEL.ROI_HEADS.NUM_CLASSES", 2)
    cfg.MODEL.WEIGHTS = weights
    with pytest.raises(ValueError, match=r"'cats_a' \{7: 'c7', 9: 'c9'\}, but dataset 'cats_b'"):
        load_for_eval(cfg, Trainer.build_model(cfg))
    DatasetCatalog.remove("cats_b")
    MetadataCatalog.remove("cats_b")
    old = save_random_model(DET_CONFIG, TINY + ["MODEL.ROI_HEADS.NUM_CLASSES", "2"], tmp_path)
    with caplog.at_level("WARNING"):
        assert run(specs[1], old) is not None
    assert "records no categories" in caplog.text and "cannot be checked" in caplog.text


def test_a_large_image_is_drawn_at_a_bounded_size(detector_weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict_lib, "MAX_DRAWN_SIDE", 256)
    image = tmp_path / "wide.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (320, 640, 3), np.uint8))
    out = tmp_path / "out"
    records = predict_tool.main(
        ["--config-file", DET_CONFIG, "--input", str(image), "--output", str(out)]
        + ["--confidence-threshold", "0.05", "--opts", "MODEL.WEIGHTS", detector_weights]
        + TINY_PREDICT_DET
        + ["DATASETS.TEST", "()"]
    )
    assert cv2.imread(str(out / "wide.png")).shape == (128, 256, 3)
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith(f"{image}: ")]
    assert line.endswith("; drawn at 256x128 (the image is 640x320; MAX_DRAWN_SIDE=256)")
    # Results stay in the image's own coordinates: only the picture is shrunk.
    found = [d for r in records for d in r["detections"]]
    assert found and max(d["bbox"][0] + d["bbox"][2] for d in found) > 256


def test_shrunk_detections_keep_their_place_on_the_picture():
    instances = Instances((400, 800))
    instances.pred_boxes = Boxes(torch.tensor([[100.0, 40.0, 300.0, 200.0]]))
    masks = torch.zeros(1, 400, 800, dtype=torch.bool)
    masks[0, 40:200, 100:300] = True
    instances.pred_masks = masks
    instances.scores, instances.pred_classes = torch.tensor([0.9]), torch.tensor([1])
    small, shrunk = predict_lib._shrink(np.zeros((400, 800, 3), np.uint8), instances, 0.25)
    assert small.shape == (100, 200, 3) and shrunk.image_size == (100, 200)
    assert shrunk.pred_boxes.tensor.tolist() == [[25.0, 10.0, 75.0, 50.0]]
    assert shrunk.pred_masks.shape == (1, 100, 200) and int(shrunk.pred_masks.sum()) == 50 * 40
    assert predict_lib.drawn_scale(100, 4000) == pytest.approx(predict_lib.MAX_DRAWN_SIDE / 4000)
    assert predict_lib.drawn_scale(160, 160) == 3.0  # small images are still enlarged


def test_a_video_declaring_frames_beyond_the_pixel_limit_is_refused_before_decoding(
    tmp_path, monkeypatch
):
    import cv2

    from randwire_d2 import predict

    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    for _ in range(2):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    frames, _ = predict.read_video(video)
    assert next(frames).shape == (48, 64, 3)
    monkeypatch.setattr(predict, "MAX_IMAGE_PIXELS", 64 * 48 - 1)
    with pytest.raises(ValueError, match=r"declares 64x48 frames, more than MAX_IMAGE_PIXELS"):
        predict.read_video(video)
