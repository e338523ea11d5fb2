"""LazyConfig: configs/lazy/*, tools/lazyconfig_train_net.py, and yaml/lazy equivalence."""

import glob
import json
import os

import pytest
import torch
from common import (
    LAZY,
    LAZY_DET_CONFIG,
    LAZY_MASK_CONFIG,
    REPO,
    TINY_LAZY,
    TINY_LAZY_MASK,
    call_tool,
    classifier_cfg,
    images_with_boxes,
    run_tool,
    tiny_cfg,
)
from detectron2.config import instantiate
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from randwire_d2.checkpoint import RandWireCheckpointer
from randwire_d2.config import flatten_lazy, load_config, load_lazy_config
from randwire_d2.modeling import RandWire
from randwire_d2.run_settings import RunConfig

LAZY_CONFIGS = sorted(
    p for p in glob.glob(os.path.join(LAZY, "**", "*.py"), recursive=True) if "/common/" not in p
)


def trunk_of(model) -> RandWire:
    return model.backbone.bottom_up


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.slow
def test_every_lazy_config_is_listed_and_instantiates():
    names = {os.path.relpath(p, LAZY) for p in LAZY_CONFIGS}
    assert {
        "faster_rcnn_randwire_c109_fpn_1x.py",
        "faster_rcnn_randwire_c154_fpn_1x.py",
        "mask_rcnn_randwire_c109_fpn_1x.py",
        "retinanet_randwire_c109_fpn_1x.py",
        "demo/faster_rcnn_randwire_demo.py",
        "demo/mask_rcnn_randwire_demo.py",
    } <= names
    for path in LAZY_CONFIGS:
        cfg = load_lazy_config(path)
        assert {"model", "dataloader", "optimizer", "lr_multiplier", "train"} <= set(cfg), path
        model = instantiate(cfg.model)
        trunk = trunk_of(model)
        assert isinstance(trunk, RandWire), path
        mask_on = "mask_rcnn" in path
        assert getattr(getattr(model, "roi_heads", None), "mask_on", False) == mask_on, path
        assert cfg.dataloader.train.mapper.use_instance_mask == mask_on, path
        assert cfg.model.input_format == cfg.dataloader.train.mapper.image_format == "RGB", path
        with torch.no_grad():
            model.eval()
            (out,) = model([{"image": torch.zeros(3, 64, 64)}])
        assert "instances" in out, path


@pytest.mark.parametrize(
    "name, channels",
    [
        ("faster_rcnn_randwire_c109_fpn_1x", 109),
        ("faster_rcnn_randwire_c154_fpn_1x", 154),
        ("mask_rcnn_randwire_c109_fpn_1x", 109),
        ("retinanet_randwire_c109_fpn_1x", 109),
    ],
)
@pytest.mark.slow
def test_yaml_and_lazy_configs_build_the_same_detector(name, channels):
    """Same (generator, theta, seed) -> same wiring fingerprint, and the same keys, shapes and
    parameter count for the whole detector; same schedule and solver."""
    yaml_cfg = load_config(os.path.join(REPO, "configs", name + ".yaml"), ["MODEL.DEVICE", "cpu"])
    lazy_cfg = load_lazy_config(os.path.join(LAZY, name + ".py"))
    yaml_model, lazy_model = build_model(yaml_cfg), instantiate(lazy_cfg.model)
    assert trunk_of(lazy_model).wiring.fingerprint() == trunk_of(yaml_model).wiring.fingerprint()
    assert trunk_of(lazy_model)._out_feature_channels["conv5"] == 8 * channels
    assert n_params(lazy_model) == n_params(yaml_model)
    shapes = {k: tuple(v.shape) for k, v in yaml_model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in lazy_model.state_dict().items()} == shapes
    frozen = lambda m: {n for n, p in m.named_parameters() if not p.requires_grad}  # noqa: E731
    assert frozen(lazy_model) == frozen(yaml_model) and frozen(yaml_model)
    s = yaml_cfg.SOLVER
    sched = flatten_lazy(lazy_cfg.lr_multiplier)
    assert (lazy_cfg.train.max_iter, lazy_cfg.dataloader.train.total_batch_size) == (
        s.MAX_ITER,
        s.IMS_PER_BATCH,
    )
    assert lazy_cfg.optimizer.lr == s.BASE_LR and lazy_cfg.optimizer.weight_decay == s.WEIGHT_DECAY
    assert sched["scheduler.milestones"][:2] == list(s.STEPS)
    assert sched["warmup_length"] * s.MAX_ITER == s.WARMUP_ITERS
    assert list(lazy_cfg.model.pixel_mean) == list(yaml_cfg.MODEL.PIXEL_MEAN)
    aug = lazy_cfg.dataloader.train.mapper.augmentations[0]
    assert list(aug.short_edge_length) == list(yaml_cfg.INPUT.MIN_SIZE_TRAIN)


@pytest.mark.parametrize("name", ["faster_rcnn_randwire_demo", "mask_rcnn_randwire_demo"])
def test_yaml_and_lazy_demo_detectors_are_twins(name):
    yaml_cfg = load_config(os.path.join(REPO, "configs", "demo", name + ".yaml"))
    lazy_cfg = load_lazy_config(os.path.join(LAZY, "demo", name + ".py"))
    yaml_model, lazy_model = build_model(yaml_cfg), instantiate(lazy_cfg.model)
    assert trunk_of(lazy_model).wiring.fingerprint() == trunk_of(yaml_model).wiring.fingerprint()
    shapes = {k: tuple(v.shape) for k, v in yaml_model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in lazy_model.state_dict().items()} == shapes
    assert lazy_cfg.train.max_iter == yaml_cfg.SOLVER.MAX_ITER
    assert RunConfig(lazy_cfg).num_classes() == ("model.roi_heads.num_classes", 5)


@pytest.mark.parametrize(
    "config, overrides",
    [
        (LAZY_DET_CONFIG, TINY_LAZY),
        (LAZY_MASK_CONFIG, TINY_LAZY_MASK),
        (
            os.path.join(LAZY, "retinanet_randwire_c109_fpn_1x.py"),
            [
                "model.backbone.bottom_up.channels=8",
                "model.backbone.bottom_up.regime=small",
                "model.backbone.bottom_up.wiring.num_nodes=6",
                "model.backbone.bottom_up.wiring.K=2",
                "model.backbone.bottom_up.norm=BN",
                "model.backbone.bottom_up.freeze_at=0",
                "model.backbone.out_channels=16",
                "model.backbone.top_block.in_channels=32",  # conv5 = 4C in the small regime
                "model.head.input_shape=[{channels: 16}]",
                "model.head.conv_dims=[16]",
                "model.num_classes=5",
            ],
        ),
    ],
    ids=["faster_rcnn", "mask_rcnn", "retinanet"],
)
@pytest.mark.slow
def test_a_train_step_for_each_meta_architecture(config, overrides, one_thread):
    from detectron2.layers import ShapeSpec

    cfg = load_lazy_config(config, overrides)
    if "retinanet" in config:  # a list of ShapeSpec is simplest to set here
        cfg.model.head.input_shape = [ShapeSpec(channels=16)] * 5
    model = instantiate(cfg.model)
    model.train()
    mask_on = getattr(getattr(model, "roi_heads", None), "mask_on", False)
    batch = images_with_boxes(masks=mask_on)
    with EventStorage():
        losses = model(batch)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    if "mask" in config:
        assert "loss_mask" in losses
    loss.backward()
    trunk = trunk_of(model)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trunk.parameters())


def test_an_override_of_a_missing_key_is_an_error_naming_the_close_keys():
    with pytest.raises(KeyError, match=r"no key 'train.max_iters'.*train.max_iter"):
        load_lazy_config(LAZY_DET_CONFIG, ["train.max_iters=10"])
    with pytest.raises(KeyError, match="model.backbone.bottom_up.wiring.seeds"):
        load_lazy_config(LAZY_DET_CONFIG, ["model.backbone.bottom_up.wiring.seeds=2"])
    cfg = load_lazy_config(LAZY_DET_CONFIG, ["+train.note=hello", "train.max_iter=7"])
    assert cfg.train.note == "hello" and cfg.train.max_iter == 7
    with pytest.raises(ValueError, match="not a LazyConfig"):
        load_lazy_config(os.path.join(REPO, "configs", "demo", "faster_rcnn_randwire_demo.yaml"))


def lazy_tool(*args, check=True):
    """tools/lazyconfig_train_net.py ARGS, in-process; with `check`, it must succeed."""
    return call_tool("lazyconfig_train_net", *args, check=True if check else None)


@pytest.fixture(scope="module")
def lazy_classifier(tmp_path_factory):
    """A classifier checkpoint whose trunk is the tiny lazy detector's (same wiring)."""
    det_cfg = tiny_cfg()  # the yaml twin of TINY_LAZY: C=8, N=6, WS(2, 0.75), seed 1, small
    classifier = build_model(classifier_cfg(det_cfg))  # its init: finite detections
    folder = str(tmp_path_factory.mktemp("lazy_cls"))
    RandWireCheckpointer(classifier, folder, cfg=classifier_cfg(det_cfg)).save("classifier")
    return classifier, os.path.join(folder, "classifier.pth")


@pytest.mark.slow
def test_cli_mask_rcnn_from_a_classifier_trains_evaluates_segm_and_guards_resume(
    lazy_classifier, tiny_data, tmp_path
):
    classifier, weights = lazy_classifier
    folder, paths = tiny_data
    data = ["--dataset", "det_test_train", paths["train"], os.path.join(folder, "train")]
    data += ["--dataset", "det_test_val", paths["val"], os.path.join(folder, "val")]
    names = [
        "dataloader.train.dataset.names=det_test_train",
        "dataloader.test.dataset.names=det_test_val",
    ]
    out = str(tmp_path / "run")
    common = [
        "--config-file",
        LAZY_MASK_CONFIG,
        *data,
        *TINY_LAZY_MASK,
        *names,
        f"train.output_dir={out}",
    ]
    proc = run_tool(  # the smoke test of its command line, in a fresh process
        "lazyconfig_train_net",
        *common,
        f"train.init_checkpoint={weights}",
        "train.max_iter=3",
        "train.log_period=1",
        "train.checkpointer.period=2",
        "model.roi_heads.box_predictor.test_score_thresh=0.0",  # 3 iterations: low scores
        "train.best_checkpoint.metric=segm/AP",
    )
    log = proc.stdout + proc.stderr
    assert "copypaste: Task: segm" in log and "copypaste: Task: bbox" in log
    # The resolved schedule is printed; the best evaluation is kept, and resume continues
    # from the newest checkpoint, not from model_best.
    assert "lr schedule: warmup" in log and "moves the warmup and the steps with it" in log
    assert "saved as model_best.pth" in log
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_final.pth"
    best = torch.load(os.path.join(out, "model_best.pth"), weights_only=True)
    assert best["iteration"] == 3  # the final evaluation, after iteration 2
    lines = [json.loads(x) for x in open(os.path.join(out, "metrics.json")) if x.strip()]
    assert [x["iteration"] for x in lines if "loss_mask" in x] == [0, 1, 2]
    saved = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    trunk = trunk_of(instantiate(load_lazy_config(LAZY_MASK_CONFIG, TINY_LAZY_MASK).model))
    assert saved["wiring_fingerprint"] == trunk.wiring.fingerprint()
    assert saved["lazy_cfg"]["optimizer.lr"] == 0.02 and saved["input_format"] == "RGB"
    assert "Loaded a RandWireClassifier checkpoint into GeneralizedRCNN" in log

    # A second fresh run in the same folder is refused; --resume with another lr is refused.
    again = lazy_tool(*common, "train.max_iter=3", check=False)
    assert again.returncode and "--resume" in again.stderr and "--overwrite" in again.stderr
    resume = ["--resume", *common]
    lr = lazy_tool(*resume, "train.max_iter=5", "optimizer.lr=0.5", check=False)
    assert lr.returncode and "optimizer.lr 0.02 -> 0.5" in lr.stderr

    # --eval-only with the trained model: bbox and segm AP.
    ev = lazy_tool(
        "--eval-only",
        *common[:-1],
        f"train.output_dir={tmp_path / 'eval'}",
        f"train.init_checkpoint={out}/model_final.pth",
        "model.roi_heads.box_predictor.test_score_thresh=0.0",
    )
    assert "copypaste: Task: segm" in ev.stdout + ev.stderr


@pytest.mark.slow
def test_cli_refuses_weights_of_another_wiring_and_frozen_stages_without_weights(
    lazy_classifier, tmp_path
):
    _, weights = lazy_classifier
    other = lazy_tool(
        "--config-file",
        LAZY_DET_CONFIG,
        *TINY_LAZY,
        "model.backbone.bottom_up.wiring.seed=2",
        f"train.init_checkpoint={weights}",
        f"train.output_dir={tmp_path / 'a'}",
        "train.max_iter=1",
        check=False,
    )
    assert other.returncode and "wiring" in other.stderr.lower()
    frozen = lazy_tool(
        "--config-file",
        LAZY_DET_CONFIG,
        *TINY_LAZY,
        "model.backbone.bottom_up.freeze_at=2",
        f"train.output_dir={tmp_path / 'b'}",
        "train.max_iter=1",
        check=False,
    )
    assert frozen.returncode and "model.backbone.bottom_up.freeze_at=2" in frozen.stderr
    polygon = lazy_tool(
        "--config-file",
        LAZY_MASK_CONFIG,
        "dataloader.train.mapper.instance_mask_format=polygon",
        f"train.output_dir={tmp_path / 'c'}",
        check=False,
    )
    assert polygon.returncode
    assert "dataloader.train.mapper.instance_mask_format='polygon' cannot read" in polygon.stderr
    typo = lazy_tool("--config-file", LAZY_DET_CONFIG, "train.max_iters=1", check=False)
    assert typo.returncode and "Did you mean train.max_iter" in typo.stderr
    late = lazy_tool("--config-file", LAZY_DET_CONFIG, "train.max_iter=1", "--resume", check=False)
    assert late.returncode and "options such as --resume go before the overrides" in late.stderr
