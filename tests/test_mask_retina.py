"""Mask R-CNN and RetinaNet on RandWire: configs, backbones, train steps, segm evaluation, the
class-count and mask-format checks, and classifier transfer."""

import importlib.util
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from common import (
    CONFIGS,
    MASK_CONFIG,
    REPO,
    RETINA_CONFIG,
    TINY_FPN,
    TINY_INPUT,
    TINY_MASK_HEAD,
    TINY_RCNN,
    TINY_TRUNK,
    images_with_boxes,
)
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import BitMasks
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from randwire_d2.checkpoint import RandWireCheckpointer, convert_classifier_checkpoint
from randwire_d2.config import load_config
from randwire_d2.data.dataset_checks import (
    check_datasets_fit_model,
    check_mask_format,
    load_dataset,
    register_user_datasets,
)
from randwire_d2.data.detection_demo import generate_detection_demo, render_detection_image
from randwire_d2.engine import Trainer, build_checkpointer, draw_detections
from randwire_d2.run_settings import RunConfig

PAPER_CONFIGS = [
    f"{arch}_{backbone}_1x.yaml"
    for arch in ("mask_rcnn", "retinanet")
    for backbone in ("randwire_c109_fpn", "randwire_c154_fpn", "R_50_FPN", "R_101_FPN")
]
# Detectron2's mask head: 4 convs 3x3 256 -> 256, a 2x2 deconv, a 1x1 predictor per class.
MASK_HEAD_PARAMS = 4 * (256 * 256 * 9 + 256) + (256 * 256 * 4 + 256) + (256 * 80 + 80)

# Small enough for a CPU test: C=8, N=6, WS(2, 0.75), 16-channel FPN and heads, 64-pixel images.
TINY = TINY_TRUNK + TINY_FPN + TINY_INPUT  # TINY_DET without its Faster R-CNN heads


def tiny_mask_cfg(*overrides):
    return load_config(
        MASK_CONFIG, TINY + TINY_RCNN + TINY_MASK_HEAD + list(overrides), freeze=False
    )


def tiny_retina_cfg(*overrides):
    return load_config(
        RETINA_CONFIG, TINY + ["MODEL.RETINANET.NUM_CONVS", 1] + list(overrides), freeze=False
    )


@pytest.fixture(scope="module")
def mask_data(tmp_path_factory):
    """A tiny demo-style COCO dataset with RLE masks, registered as mr_test_train / _val."""
    folder = str(tmp_path_factory.mktemp("mr_data"))
    kwargs = dict(image_size=(64, 64), objects_per_image=(1, 3), object_size=(14, 30), seed=3)
    paths = generate_detection_demo(folder, {"train": 16, "val": 6}, **kwargs)
    specs = []
    for split in ("train", "val"):
        name = f"mr_test_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        specs.append((name, paths[split], os.path.join(folder, split)))
    register_user_datasets(specs)
    return folder, paths, kwargs


def trunk_grads_are_finite(model, stages=("conv3", "conv4", "conv5")):
    trunk = model.backbone.bottom_up
    for name in stages:
        grads = [p.grad for p in getattr(trunk, name).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


# ---------------------------------------------------------------------------------------------
# Configs and backbones


@pytest.mark.parametrize("name", PAPER_CONFIGS)
@pytest.mark.slow
def test_paper_configs_build(name):
    """Full size, no forward, no download: the architecture the config names, on the trunk of
    its Faster R-CNN twin, with detectron2's heads and 1x schedule."""
    cfg = load_config(os.path.join(CONFIGS, name), ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    shapes = model.backbone.output_shape()
    trunk = model.backbone.bottom_up.output_shape()
    if name.startswith("mask_rcnn"):
        assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN" and cfg.MODEL.MASK_ON
        assert list(shapes) == ["p2", "p3", "p4", "p5", "p6"]
        mask_head = model.roi_heads.mask_head
        assert sum(p.numel() for p in mask_head.parameters()) == MASK_HEAD_PARAMS
    else:
        assert type(model).__name__ == "RetinaNet" and model.num_classes == 80
        assert list(shapes) == ["p3", "p4", "p5", "p6", "p7"]
        assert [s.stride for s in shapes.values()] == [8, 16, 32, 64, 128]
        assert model.anchor_generator.num_cell_anchors == [9] * 5  # 3 scales x 3 aspect ratios
        assert cfg.SOLVER.BASE_LR == 0.01
    assert all(s.channels == 256 for s in shapes.values())
    if "randwire" in name:
        c = cfg.MODEL.RANDWIRE.CHANNELS
        assert c == int(name.split("_c")[1][:3]) and cfg.MODEL.RANDWIRE.REGIME == "regular"
        assert trunk["conv5"].channels == 8 * c
    else:
        assert cfg.MODEL.RESNETS.DEPTH == int(name.split("_R_")[1].split("_")[0])
    assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == (90000, (60000, 80000))


def test_retinanet_backbone_matches_detectron2s_resnet_one():
    """conv3..conv5 + P6/P7 from conv5 (C5), as build_retinanet_resnet_fpn_backbone does."""
    model = build_model(tiny_retina_cfg()).eval()
    backbone = model.backbone
    assert backbone.top_block.in_feature == "conv5"
    assert backbone.top_block.p6.in_channels == backbone.bottom_up.output_shape()["conv5"].channels
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, 64, 96))
    for name, t in out.items():
        s = backbone.output_shape()[name]
        assert t.shape[1:] == (s.channels, -(-64 // s.stride), -(-96 // s.stride)), name
    with pytest.raises(ValueError, match=r"MODEL.FPN.IN_FEATURES=.*OUT_FEATURES"):
        build_model(tiny_retina_cfg("MODEL.RANDWIRE.OUT_FEATURES", ["conv3", "conv4"]))


# ---------------------------------------------------------------------------------------------
# Train steps


def test_mask_rcnn_train_step(one_thread):
    torch.manual_seed(0)
    model = build_model(tiny_mask_cfg()).train()
    with EventStorage():
        losses = model(images_with_boxes(masks=True))
    assert {"loss_mask", "loss_cls", "loss_box_reg", "loss_rpn_cls"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trunk_grads_are_finite(model)
    assert model.roi_heads.mask_head.predictor.weight.grad.abs().sum() > 0


def test_retinanet_train_step(one_thread):
    torch.manual_seed(0)
    model = build_model(tiny_retina_cfg()).train()
    with EventStorage():
        losses = model(images_with_boxes())
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trunk_grads_are_finite(model)


# ---------------------------------------------------------------------------------------------
# Data: exact masks, mapper, checks, segm evaluation


def test_demo_masks_are_exact_and_load_as_bitmasks(mask_data):
    folder, paths, kwargs = mask_data
    dicts = load_dataset("mr_test_train")
    for i, d in enumerate(dicts[:6]):
        rng = np.random.default_rng([kwargs["seed"], 0, i])  # split "train" = 0
        _, objects = render_detection_image(
            rng, kwargs["image_size"], kwargs["objects_per_image"], kwargs["object_size"]
        )
        assert len(objects) == len(d["annotations"])
        for (class_index, mask), a in zip(objects, d["annotations"]):
            assert np.array_equal(mask_util.decode(a["segmentation"]).astype(bool), mask)
            assert a["category_id"] == class_index  # contiguous ids after load_coco_json
            assert list(mask_util.toBbox(a["segmentation"])) == list(a["bbox"])
    cfg = tiny_mask_cfg("DATASETS.TRAIN", ("mr_test_train",))
    inst = DatasetMapper(cfg, is_train=True)(dict(dicts[0]))["instances"]
    assert isinstance(inst.gt_masks, BitMasks)
    assert torch.equal(inst.gt_masks.get_bounding_boxes().tensor, inst.gt_boxes.tensor)
    cfg.INPUT.MASK_FORMAT = "polygon"
    with pytest.raises(ValueError, match=r"INPUT.MASK_FORMAT='polygon' .*RLE.*bitmask"):
        check_mask_format(["mr_test_train"], True, cfg.INPUT.MASK_FORMAT)


def test_num_classes_key_follows_the_meta_architecture():
    assert RunConfig(tiny_mask_cfg()).num_classes() == ("MODEL.ROI_HEADS.NUM_CLASSES", 5)
    assert RunConfig(tiny_retina_cfg()).num_classes() == ("MODEL.RETINANET.NUM_CLASSES", 5)
    cfg = tiny_retina_cfg()
    cfg.MODEL.META_ARCHITECTURE = "ProposalNetwork"
    assert RunConfig(cfg).num_classes() == (None, None)


def test_retinanet_with_too_few_classes_fails_before_training(mask_data, tmp_path):
    folder, paths, _ = mask_data
    with pytest.raises(ValueError, match=r"MODEL.RETINANET.NUM_CLASSES=3 is too small"):
        check_datasets_fit_model(
            ["mr_test_train"], tiny_retina_cfg("MODEL.RETINANET.NUM_CLASSES", 3)
        )
    # tools/train_net.py's setup checks it before building anything.
    spec = importlib.util.spec_from_file_location(
        "train_net", os.path.join(REPO, "tools", "train_net.py")
    )
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    name = "mr_test_retina_classes"
    args = train_net.build_parser().parse_args(
        [
            "--config-file",
            RETINA_CONFIG,
            "--dataset",
            name,
            paths["train"],
            os.path.join(folder, "train"),
        ]
        + ["DATASETS.TRAIN", f'("{name}",)', "DATASETS.TEST", "()"]
        + ["MODEL.RETINANET.NUM_CLASSES", "3", "OUTPUT_DIR", str(tmp_path / "out")]
    )
    try:
        with pytest.raises(ValueError, match=r"MODEL.RETINANET.NUM_CLASSES=3 is too small"):
            train_net.setup(args)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert not (tmp_path / "out").exists()  # failed before claiming OUTPUT_DIR


@pytest.mark.slow
def test_mask_rcnn_trains_and_reports_segm_ap(mask_data, tmp_path, one_thread):
    # fmt: off
    cfg = tiny_mask_cfg(
        "DATASETS.TRAIN", ("mr_test_train",),
        "DATASETS.TEST", ("mr_test_val",),
        "SOLVER.MAX_ITER", 6,
        "SOLVER.WARMUP_ITERS", 2,
        "SOLVER.STEPS", (),
        "SOLVER.CHECKPOINT_PERIOD", 1000,
        "OUTPUT_DIR", str(tmp_path),
    )
    # fmt: on
    seed_all_rng(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = trainer._last_eval_results  # evaluated after the last iteration
    assert {"bbox", "segm"} <= set(results)
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75"} <= set(results[task])
    # Detection pictures draw the predicted masks (every detection, whatever its score).
    picture = cv2.imread(draw_detections(cfg, trainer.model, str(tmp_path / "vis.jpg"), 4, 0.0))
    assert picture.shape == (2 * 64, 4 * 2 * 64, 3)


# ---------------------------------------------------------------------------------------------
# Transfer from the classifier


@pytest.fixture
def classifier_checkpoint(tmp_path):
    """A randomized demo-wiring RandWireClassifier saved as tools/train_cls.py would."""
    cls = tiny_mask_cfg("MODEL.RANDWIRE.SEED", 3)
    cls.MODEL.META_ARCHITECTURE = "RandWireClassifier"
    cls.MODEL.BACKBONE.NAME = "build_randwire_backbone"
    cls.MODEL.RANDWIRE.OUT_FEATURES = ["conv5"]
    cls.MODEL.CLASSIFIER.NUM_CLASSES = 5
    cls.MODEL.CLASSIFIER.HEAD_CHANNELS = 32
    classifier = build_model(cls)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in classifier.parameters():
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    RandWireCheckpointer(classifier, str(tmp_path), cfg=cls).save("classifier")
    return classifier, str(tmp_path / "classifier.pth")


def assert_trunk_copied(classifier, detector):
    target = detector.state_dict()
    copied = [k for k in classifier.state_dict() if k.startswith("backbone.")]
    for key in copied:
        new = "backbone.bottom_up." + key[len("backbone.") :]
        assert torch.equal(target[new], classifier.state_dict()[key]), key
    assert len(copied) > 20


@pytest.mark.parametrize("arch", ["mask_rcnn", "retinanet"])
@pytest.mark.slow
def test_classifier_transfer(arch, classifier_checkpoint, tmp_path):
    classifier, path = classifier_checkpoint
    make = tiny_mask_cfg if arch == "mask_rcnn" else tiny_retina_cfg
    detector = build_model(make("MODEL.RANDWIRE.SEED", 3))
    build_checkpointer(detector).resume_or_load(path, resume=False)
    assert_trunk_copied(classifier, detector)
    # tools/convert_cls_to_d2.py's output loads too (it names arch GeneralizedRCNN).
    converted = str(tmp_path / "converted.pth")
    convert_classifier_checkpoint(path, converted)
    detector = build_model(make("MODEL.RANDWIRE.SEED", 3))
    build_checkpointer(detector).resume_or_load(converted, resume=False)
    assert_trunk_copied(classifier, detector)
