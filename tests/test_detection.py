"""RandWire-FPN detection: configs, backbones, freezing, training, evaluation, transfer, tools."""

import glob
import json
import math
import os

import cv2
import numpy as np
import pytest
import torch
from common import (
    DET_CONFIG,
    REPO,
    TINY_DET,
    as_args,
    call_tool,
    classifier_cfg,
    images_with_boxes,
    load_tool,
    run_tool,
    tiny_cfg,
)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage
from torch import nn

import randwire_d2
from randwire_d2.checkpoint import (
    RandWireCheckpointer,
    check_input_normalization,
    check_weights_on_disk,
    convert_classifier_checkpoint,
)
from randwire_d2.config import load_config
from randwire_d2.data.dataset_checks import (
    DatasetNotFoundError,
    check_datasets_on_disk,
    register_user_datasets,
)
from randwire_d2.data.detection_demo import (
    DEMO_DET_PARAMS,
    generate_detection_demo,
    register_detection_demo,
)
from randwire_d2.engine import Trainer, build_checkpointer, draw_detections
from randwire_d2.modeling import RandWire, WiringMismatchError

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))


def randomized(model):
    """Give every float parameter and BN statistic a distinct random value (not the init)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for n, b in model.named_buffers() if "running" in n]:
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model


# ---------------------------------------------------------------------------------------------
# Configs and backbones


def test_config_list_is_complete():
    names = {os.path.relpath(p, os.path.join(REPO, "configs")) for p in CONFIGS}
    for expected in [
        "Base-RandWire-FPN.yaml",
        "faster_rcnn_randwire_c109_fpn_1x.yaml",
        "faster_rcnn_randwire_c154_fpn_1x.yaml",
        "faster_rcnn_R_50_FPN_1x.yaml",
        "faster_rcnn_R_101_FPN_1x.yaml",
        "faster_rcnn_X_50_32x4d_FPN_1x.yaml",
        "faster_rcnn_X_101_32x4d_FPN_1x.yaml",
        "demo/faster_rcnn_randwire_demo.yaml",
    ]:
        assert expected in names
    # Self-contained: every _BASE_ is a file of this repository's configs/ folder.
    for path in CONFIGS:
        with open(path) as f:
            bases = [
                line.split(":", 1)[1].strip().strip("'\"")
                for line in f
                if line.startswith("_BASE_")
            ]
        for base in bases:
            resolved = os.path.realpath(os.path.join(os.path.dirname(path), base))
            assert resolved.startswith(os.path.join(REPO, "configs") + os.sep) and os.path.isfile(
                resolved
            ), (path, base)


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_config_builds(path):
    """Every shipped yaml loads and builds at full size (no forward, no weights download)."""
    cfg = load_config(path, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    backbone = model.backbone
    shapes = backbone.output_shape()
    if cfg.MODEL.META_ARCHITECTURE == "RandWireClassifier":
        assert isinstance(backbone, RandWire)
        assert model.head.fc.out_features == cfg.MODEL.CLASSIFIER.NUM_CLASSES
        return
    levels = (3, 8) if cfg.MODEL.META_ARCHITECTURE == "RetinaNet" else (2, 7)  # p3-p7 / p2-p6
    assert [k for k in shapes] == [f"p{i}" for i in range(*levels)]
    assert [s.stride for s in shapes.values()] == [2**i for i in range(*levels)]
    assert all(s.channels == cfg.MODEL.FPN.OUT_CHANNELS for s in shapes.values())
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        assert model.num_classes == cfg.MODEL.RETINANET.NUM_CLASSES
    else:
        assert model.roi_heads.num_classes == cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if cfg.MODEL.BACKBONE.NAME.startswith("build_randwire_"):
        trunk = backbone.bottom_up.output_shape()
        c = cfg.MODEL.RANDWIRE.CHANNELS
        mult = [1, 2, 4, 8] if cfg.MODEL.RANDWIRE.REGIME == "regular" else [1, 1, 2, 4]
        assert {k: (s.channels, s.stride) for k, s in trunk.items()} == {
            f"conv{i + 2}": (m * c, 2 ** (i + 2))
            for i, m in enumerate(mult)
            if f"conv{i + 2}" in cfg.MODEL.RANDWIRE.OUT_FEATURES
        }


@pytest.mark.parametrize("regime", ["small", "regular"])
def test_output_shapes_match_forward(regime):
    cfg = tiny_cfg("MODEL.RANDWIRE.REGIME", regime)
    backbone = build_model(cfg).backbone.eval()
    x = torch.zeros(1, 3, 64, 96)
    with torch.no_grad():
        for module in (backbone.bottom_up, backbone):
            out = module(x)
            shapes = module.output_shape()
            assert list(out) == list(shapes)
            for name, t in out.items():
                assert t.shape[1] == shapes[name].channels, name
                assert t.shape[2:] == (
                    math.ceil(64 / shapes[name].stride),
                    math.ceil(96 / shapes[name].stride),
                ), name
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]


@pytest.mark.parametrize("norm", ["BN", "FrozenBN", "SyncBN", "naiveSyncBN", "GN"])
def test_norms_build(norm):
    # C=12: conv1 has 6 channels, which Detectron2's 32-group GN could not split.
    cfg = tiny_cfg("MODEL.RANDWIRE.NORM", norm, "MODEL.RANDWIRE.CHANNELS", 12)
    trunk = build_model(cfg).backbone.bottom_up
    kinds = {type(m).__name__ for m in trunk.modules()}
    expected = {
        "BN": "BatchNorm2d",
        "FrozenBN": "FrozenBatchNorm2d",
        "SyncBN": "SyncBatchNorm",
        "naiveSyncBN": "NaiveSyncBatchNorm",
        "GN": "GroupNorm",
    }[norm]
    assert expected in kinds
    if norm != "SyncBN":  # SyncBN's forward needs a CUDA process group
        with torch.no_grad():
            out = trunk.eval()(torch.zeros(1, 3, 64, 64))
        assert all(torch.isfinite(t).all() for t in out.values())


@pytest.mark.parametrize("regime", ["small", "regular"])
@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
def test_freeze_at_freezes_stages_like_resnet(regime, freeze_at):
    cfg = tiny_cfg("MODEL.RANDWIRE.REGIME", regime, "MODEL.BACKBONE.FREEZE_AT", freeze_at)
    trunk = build_model(cfg).backbone.bottom_up
    for i, name in enumerate(["conv1", "conv2", "conv3", "conv4", "conv5"], start=1):
        stage = getattr(trunk, name)
        params = list(stage.parameters())
        norms = [m for m in stage.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        assert params and norms
        if i <= freeze_at:
            assert not any(p.requires_grad for p in params), name
            assert all(isinstance(m, FrozenBatchNorm2d) for m in norms), name
        else:
            assert all(p.requires_grad for p in params), name
            assert all(isinstance(m, nn.BatchNorm2d) for m in norms), name


def test_freeze_at_out_of_range_names_the_range():
    with pytest.raises(ValueError, match=r"FREEZE_AT=6 .*\[0, 5\]"):
        build_model(tiny_cfg("MODEL.BACKBONE.FREEZE_AT", 6))


# ---------------------------------------------------------------------------------------------
# Faster R-CNN train step and inference


def test_train_step_has_finite_losses_and_backbone_gradients(one_thread):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("MODEL.BACKBONE.FREEZE_AT", 2))
    model.train()
    with EventStorage():
        losses = model(images_with_boxes())
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trunk = model.backbone.bottom_up
    for name in ("conv1", "conv2"):
        assert all(p.grad is None for p in getattr(trunk, name).parameters()), name
    for name in ("conv3", "conv4", "conv5"):
        grads = [p.grad for p in getattr(trunk, name).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


def test_inference_returns_instances():
    model = build_model(tiny_cfg()).eval()
    batch = [{"image": b["image"], "height": 128, "width": 96} for b in images_with_boxes()]
    with torch.no_grad():
        outputs = model(batch)
    assert len(outputs) == 2
    for out in outputs:
        inst = out["instances"]
        assert isinstance(inst, Instances)
        assert inst.image_size == (128, 96)
        assert {"pred_boxes", "scores", "pred_classes"} <= set(inst.get_fields())


# ---------------------------------------------------------------------------------------------
# Data, training, evaluation


def test_demo_data_is_deterministic_and_varied(tmp_path):
    kwargs = dict(image_size=(64, 80), objects_per_image=(2, 4), object_size=(10, 30), seed=5)
    a = generate_detection_demo(str(tmp_path / "a"), {"train": 6, "val": 3}, **kwargs)
    b = generate_detection_demo(str(tmp_path / "b"), {"train": 6}, **kwargs)
    with open(a["train"]) as fa, open(b["train"]) as fb:
        ja, jb = json.load(fa), json.load(fb)
    assert ja["annotations"] == jb["annotations"]
    assert (tmp_path / "a/train/000003.jpg").read_bytes() == (
        tmp_path / "b/train/000003.jpg"
    ).read_bytes()
    with open(a["val"]) as f:
        val = json.load(f)
    assert val["annotations"] != ja["annotations"][: len(val["annotations"])]
    per_image = np.bincount([x["image_id"] for x in ja["annotations"]])[1:]
    assert per_image.min() >= 2 and per_image.max() <= 4
    assert len({x["category_id"] for x in ja["annotations"]}) >= 3
    sides = [max(x["bbox"][2:]) for x in ja["annotations"]]
    assert min(sides) < 18 and max(sides) > 20
    for x in ja["annotations"]:
        x0, y0, w, h = x["bbox"]
        assert 0 <= x0 and 0 <= y0 and x0 + w <= 80 and y0 + h <= 64 and x["area"] <= w * h
    with pytest.raises(ValueError, match="object_size"):
        generate_detection_demo(
            str(tmp_path / "c"), {"train": 1}, image_size=(64, 64), object_size=(8, 64)
        )


@pytest.mark.slow
def test_registered_demo_datasets_are_generated_on_demand(tmp_path):
    register_detection_demo(str(tmp_path))
    try:
        meta = MetadataCatalog.get("randwire_demo_det_val")
        assert meta.thing_classes == randwire_d2.data.shapes.CLASSES
        assert meta.evaluator_type == "coco"
        assert not os.path.exists(meta.json_file)
        dicts = DatasetCatalog.get("randwire_demo_det_val")
        assert len(dicts) == DEMO_DET_PARAMS["num_images"]["val"]
        assert os.path.isfile(meta.json_file) and os.path.isfile(dicts[0]["file_name"])
        assert meta.json_file.startswith(str(tmp_path / "randwire_demo_det"))
        assert all(d["annotations"] for d in dicts)
        assert not os.path.exists(tmp_path / "randwire_demo_det" / "train")  # only what is used
    finally:
        register_detection_demo()


@pytest.mark.slow
def test_short_training_lowers_loss_and_evaluates(tiny_data, tmp_path, one_thread):
    cfg = tiny_cfg(
        "DATASETS.TRAIN",
        ("det_test_train",),
        "DATASETS.TEST",
        ("det_test_val",),
        "SOLVER.MAX_ITER",
        60,
        "SOLVER.BASE_LR",
        0.02,
        "SOLVER.WARMUP_ITERS",
        10,
        "SOLVER.STEPS",
        (),
        "SOLVER.CHECKPOINT_PERIOD",
        1000,
        "TEST.BEST_CHECKPOINT_METRIC",
        "bbox/AP50",
        "OUTPUT_DIR",
        str(tmp_path),
    )
    # Every RNG seeded (weights, data order, augmentation), as default_setup does for the tools.
    seed_all_rng(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(tmp_path / "metrics.json") as f:
        rows = [json.loads(line) for line in f if "total_loss" in line]
    assert rows[0]["iteration"] < rows[-1]["iteration"] == 59
    # metrics.json holds medians over the last 20 iterations.
    first, last = rows[0], rows[-1]
    assert last["total_loss"] < 0.9 * first["total_loss"], (first, last)
    assert last["loss_rpn_cls"] < 0.7 * first["loss_rpn_cls"], (first, last)
    assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
    results = Trainer.test(cfg, trainer.model)["bbox"]  # one dataset: not keyed by name
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(results)
    assert all(math.isfinite(results[k]) or math.isnan(results[k]) for k in results)
    assert 0.0 <= results["AP50"] <= 100.0
    picture = cv2.imread(draw_detections(cfg, trainer.model, str(tmp_path / "vis.jpg"), count=4))
    assert picture.shape == (2 * 64, 4 * 2 * 64, 3)  # 4 tiles at scale 2 in one row
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final["wiring_fingerprint"] == trainer.model.backbone.bottom_up.wiring.fingerprint()
    assert final["input_format"] == cfg.INPUT.FORMAT and "iteration" in final
    # TEST.BEST_CHECKPOINT_METRIC: the final evaluation is the only one, so it is the best;
    # --resume would continue model_final, not model_best.
    assert torch.load(tmp_path / "model_best.pth", weights_only=True)["iteration"] == 60
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(tiny_data, tmp_path, one_thread):
    cfg = tiny_cfg(
        "DATASETS.TRAIN",
        ("det_test_train",),
        "DATASETS.TEST",
        (),
        "SOLVER.MAX_ITER",
        4,
        "SOLVER.CHECKPOINT_PERIOD",
        2,
        "OUTPUT_DIR",
        str(tmp_path),
    )
    first = Trainer(cfg)
    first.resume_or_load(resume=False)
    first.train()
    cfg.SOLVER.MAX_ITER = 6
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    for key, value in first.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    resumed.train()
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 5


# ---------------------------------------------------------------------------------------------
# Transfer from the classifier


@pytest.fixture
def classifier_checkpoint(tmp_path):
    det_cfg = tiny_cfg(
        "MODEL.RANDWIRE.REGIME",
        "regular",
        "MODEL.RANDWIRE.NORM",
        "FrozenBN",
        "MODEL.BACKBONE.FREEZE_AT",
        2,
        "MODEL.RANDWIRE.SEED",
        3,
    )
    classifier = randomized(build_model(classifier_cfg(det_cfg)))
    RandWireCheckpointer(classifier, str(tmp_path), cfg=classifier_cfg(det_cfg)).save("classifier")
    return det_cfg, classifier, str(tmp_path / "classifier.pth")


def assert_trunk_copied(classifier, detector):
    source = classifier.state_dict()
    target = detector.state_dict()
    copied = 0
    for key, value in source.items():
        if key.startswith("backbone.") and not key.endswith("num_batches_tracked"):
            new = "backbone.bottom_up." + key[len("backbone.") :]
            assert torch.equal(target[new], value), key
            copied += 1
    assert copied > 20


def test_transfer_via_model_weights(classifier_checkpoint):
    det_cfg, classifier, path = classifier_checkpoint
    det_cfg.MODEL.WEIGHTS = path
    detector = build_model(det_cfg)
    build_checkpointer(detector).resume_or_load(det_cfg.MODEL.WEIGHTS, resume=False)
    assert_trunk_copied(classifier, detector)


def test_input_normalization_mismatch_is_reported(classifier_checkpoint, caplog):
    det_cfg, _, path = classifier_checkpoint
    data = torch.load(path, weights_only=True)
    assert check_input_normalization(det_cfg, data)
    det_cfg.MODEL.PIXEL_MEAN = [103.53, 116.28, 123.675]
    det_cfg.INPUT.FORMAT = "BGR"
    assert not check_input_normalization(det_cfg, data)
    assert "MODEL.PIXEL_MEAN [123.675, 116.28, 103.53]" in caplog.text
    assert "INPUT.FORMAT RGB (config: BGR)" in caplog.text
    assert "PIXEL_STD" not in caplog.text


@pytest.mark.slow
def test_transfer_via_converter_tool(classifier_checkpoint, tmp_path, capsys):
    det_cfg, classifier, path = classifier_checkpoint
    out = str(tmp_path / "converted.pth")
    load_tool("convert_cls_to_d2").main([path, out])  # the smoke test of its CLI
    stdout = capsys.readouterr().out
    node = "conv3.nodes.0.transform.2.weight"
    assert f"backbone.{node} -> backbone.bottom_up.{node}" in stdout
    assert "head.fc.weight" in stdout.split("dropped")[1]
    assert "MODEL.PIXEL_MEAN [123.675, 116.28, 103.53]" in stdout
    assert "INPUT.FORMAT RGB" in stdout
    data = torch.load(out, weights_only=True)
    assert data["wiring_fingerprint"] == classifier.backbone.wiring.fingerprint()
    assert data["wiring"] == classifier.backbone.wiring.to_json()
    assert not any(k.startswith("head.") for k in data["model"])
    detector = build_model(det_cfg)
    build_checkpointer(detector).load(out)
    assert_trunk_copied(classifier, detector)


def test_wiring_mismatch_raises(classifier_checkpoint, tmp_path):
    det_cfg, _, path = classifier_checkpoint
    det_cfg.MODEL.RANDWIRE.SEED = 4  # same shapes, different wiring
    detector = build_model(det_cfg)
    with pytest.raises(WiringMismatchError, match="wiring"):
        build_checkpointer(detector).load(path)
    out = str(tmp_path / "converted.pth")
    convert_classifier_checkpoint(path, out)
    with pytest.raises(WiringMismatchError):
        build_checkpointer(detector).load(out)


def test_converter_rejects_non_classifier(tmp_path, tiny_data):
    detector = build_model(tiny_cfg())
    RandWireCheckpointer(detector, str(tmp_path)).save("det")
    with pytest.raises(ValueError, match="arch='GeneralizedRCNN'"):
        convert_classifier_checkpoint(str(tmp_path / "det.pth"), str(tmp_path / "out.pth"))


# ---------------------------------------------------------------------------------------------
# Datasets and the command line


def test_user_dataset_option_errors(tmp_path, tiny_data):
    with pytest.raises(DatasetNotFoundError, match="missing.json"):
        register_user_datasets([("mine", str(tmp_path / "missing.json"), str(tmp_path))])
    _, paths = tiny_data
    with pytest.raises(ValueError, match="'coco_2017_val' is already registered"):
        register_user_datasets([("coco_2017_val", paths["val"], str(tmp_path))])
    MetadataCatalog.get("det_test_absent").set(json_file=str(tmp_path / "coco/annotations/x.json"))
    DatasetCatalog.register("det_test_absent", lambda: [])
    try:
        with pytest.raises(
            DatasetNotFoundError, match=r"coco/annotations/x\.json .*DETECTRON2_DATASETS"
        ):
            check_datasets_on_disk(["det_test_absent"])
    finally:
        DatasetCatalog.remove("det_test_absent")
        MetadataCatalog.remove("det_test_absent")
    with pytest.raises(KeyError, match="not registered"):
        check_datasets_on_disk(["no_such_dataset"])


def test_missing_local_weights_are_named():
    with pytest.raises(
        FileNotFoundError, match=r"MODEL.WEIGHTS='pretrained/X-50-32x4d-torchvision.pkl'"
    ):
        check_weights_on_disk("pretrained/X-50-32x4d-torchvision.pkl")
    check_weights_on_disk("detectron2://ImageNetPretrained/MSRA/R-50.pkl")  # URLs load lazily
    check_weights_on_disk("")


@pytest.mark.slow
def test_eval_only_without_coco_exits_with_clear_error(tmp_path):
    # A fresh process: Detectron2 reads DETECTRON2_DATASETS when it registers COCO at import.
    proc = run_tool(
        "train_net",
        "--config",
        os.path.join(REPO, "configs", "faster_rcnn_randwire_c109_fpn_1x.yaml"),
        "--eval-only",
        "OUTPUT_DIR",
        tmp_path / "out",
        env={"DETECTRON2_DATASETS": str(tmp_path / "nowhere")},
        timeout=180,
    )
    assert proc.returncode != 0
    expected = str(tmp_path / "nowhere" / "coco" / "annotations" / "instances_val2017.json")
    assert "DatasetNotFoundError" in proc.stderr
    assert f"DETECTRON2_DATASETS={tmp_path / 'nowhere'}" in proc.stderr
    assert expected in proc.stderr


@pytest.mark.slow
def test_two_process_cpu_training_with_user_dataset(tiny_data, tmp_path):
    """tools/train_net.py --num-gpus 2 on CPU: 2 gloo processes train, checkpoint, evaluate."""
    folder, paths = tiny_data
    out = tmp_path / "out"
    args = (
        [
            "--config-file",
            DET_CONFIG,
            "--num-gpus",
            "2",
            "--dist-url",
            "auto",
            "--dataset",
            "cli_train",
            paths["train"],
            os.path.join(folder, "train"),
            "--dataset",
            "cli_val",
            paths["val"],
            os.path.join(folder, "val"),
        ]
        + as_args(TINY_DET)
        + [
            "DATASETS.TRAIN",
            "('cli_train',)",
            "DATASETS.TEST",
            "('cli_val',)",
            "SOLVER.MAX_ITER",
            "4",
            "SOLVER.WARMUP_ITERS",
            "1",
            "SOLVER.STEPS",
            "()",
            "OUTPUT_DIR",
            str(out),
        ]
    )
    proc = run_tool("train_net", *args, timeout=240)  # 2 processes: a fresh one
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "World size: 2" in proc.stderr + proc.stdout
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == 3 and "wiring" in final
    assert (out / "inference" / "cli_val" / "coco_instances_results.json").exists()


def test_train_net_logs_the_projects_messages(classifier_checkpoint, tiny_data, tmp_path):
    """train_net set up Detectron2's loggers only: randwire_d2's INFO lines (which weights went
    where) reached neither the screen nor log.txt."""
    _, _, weights = classifier_checkpoint
    folder, paths = tiny_data
    out = str(tmp_path / "run")
    opts = as_args(TINY_DET) + [
        *("MODEL.RANDWIRE.REGIME", "regular", "MODEL.RANDWIRE.NORM", "FrozenBN"),
        *("MODEL.BACKBONE.FREEZE_AT", "2", "MODEL.RANDWIRE.SEED", "3"),
        *("MODEL.WEIGHTS", weights, "SOLVER.MAX_ITER", "1", "TEST.EVAL_PERIOD", "0"),
        *("DATASETS.TRAIN", '("det_test_train",)', "DATASETS.TEST", '("det_test_val",)'),
        *("DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", out),
    ]
    data = [
        a
        for s in ("train", "val")
        for a in ("--dataset", f"det_test_{s}", paths[s], os.path.join(folder, s))
    ]
    proc = call_tool("train_net", "--config-file", DET_CONFIG, *data, *opts)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = "Loaded a RandWireClassifier checkpoint into GeneralizedRCNN"
    assert line in proc.stdout + proc.stderr
    assert line in open(os.path.join(out, "log.txt")).read()
