"""Pieces of the pretraining recipe: edge removal, label smoothing, top-k, schedule, data order."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from PIL import Image

from randwire_d2.config import load_config
from randwire_d2.data.cls_demo import generate_classification_demo
from randwire_d2.data.imagefolder import (
    EpochBatchSampler,
    ImageFolderDataset,
    RandomResizedCropFlip,
    ResizeCenterCrop,
    ShardBatchSampler,
    scan_image_folder,
)
from randwire_d2.data.shapes import CLASSES
from randwire_d2.engine import ClassificationTrainer, resolve_schedule
from randwire_d2.engine.evaluation import ClassificationEvaluator, topk_correct
from randwire_d2.graphs import sample_stages
from randwire_d2.modeling import Node, RandWire

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Every test here trains tiny models: one torch thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def imagenet_cfg(name="randwire_ws_c109_regular.yaml", opts=()):
    return load_config(os.path.join(REPO, "configs", "imagenet", name), opts, freeze=False)


def tiny_small_cfg(num_classes, *opts):
    """The small-regime ImageNet config shrunk to a CPU-test size (C=8, N=6, head 16)."""
    return imagenet_cfg(
        "randwire_ws_c78_small.yaml",
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.RANDWIRE.CHANNELS",
            "8",
            "MODEL.RANDWIRE.NUM_NODES",
            "6",
            "MODEL.CLASSIFIER.NUM_CLASSES",
            str(num_classes),
            "MODEL.CLASSIFIER.HEAD_CHANNELS",
            "16",
            *opts,
        ],
    )


def tiny_trunk(drop_edge_prob):
    wiring = sample_stages("ws", {"conv3": 8, "conv4": 8, "conv5": 8}, 1, K=4, P=0.75)
    return RandWire(wiring=wiring, channels=8, regime="small", drop_edge_prob=drop_edge_prob)


# Edge removal (Sec. 4.2) ---------------------------------------------------------------------


def test_edge_removal_only_touches_edges_into_nodes_of_input_degree_above_one():
    trunk = tiny_trunk(drop_edge_prob=1.0).train()
    removable = {(n, e) for n, s in trunk.wired_stages().items() for e in s.removable_edges()}
    torch.manual_seed(0)
    drawn = [trunk._sample_removed_edge() for _ in range(2000)]
    assert all(d is not None for d in drawn)  # p = 1: one edge per minibatch
    for stage, (node, position) in drawn:
        preds = trunk.wired_stages()[stage].preds[node]
        assert len(preds) > 1 and 0 <= position < len(preds)
    # Every eligible edge can be drawn, and no other.
    assert set(drawn) == removable
    single_input = [
        (n, v)
        for n, s in trunk.wired_stages().items()
        for v, p in enumerate(s.preds)
        if len(p) <= 1
    ]
    assert single_input and not {(n, v) for n, (v, _) in drawn} & set(single_input)


def test_edge_removal_never_runs_in_eval():
    trunk = tiny_trunk(drop_edge_prob=1.0).eval()
    assert all(trunk._sample_removed_edge() is None for _ in range(200))
    reference = tiny_trunk(drop_edge_prob=0.0).eval()
    reference.load_state_dict(trunk.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(trunk(x)["conv5"], reference(x)["conv5"])


def test_edge_removal_probability_and_training_effect():
    trunk = tiny_trunk(drop_edge_prob=0.1).train()
    torch.manual_seed(0)
    rate = np.mean([trunk._sample_removed_edge() is not None for _ in range(4000)])
    assert rate == pytest.approx(0.1, abs=0.02)
    # A removed edge contributes nothing to its target node's aggregation.
    node = Node(3, 4, 4, 1, "sep_conv3x3", "BN").eval()
    xs = [torch.randn(1, 4, 8, 8) for _ in range(3)]
    with torch.no_grad():
        removed = node(xs, removed=1)
        zeroed = node([xs[0], torch.zeros_like(xs[1]), xs[2]])
        assert torch.allclose(removed, zeroed, atol=1e-6)
        assert not torch.allclose(removed, node(xs), atol=1e-4)


def test_regular_configs_train_with_edge_removal_and_dropout():
    for name in ("randwire_ws_c109_regular.yaml", "randwire_ws_c154_regular.yaml"):
        cfg = imagenet_cfg(name, ["MODEL.DEVICE", "cpu", "MODEL.RANDWIRE.CHANNELS", "8"])
        model = build_model(cfg)
        assert model.backbone.drop_edge_prob == 0.1
        assert model.head.dropout.p == 0.2
    small = build_model(
        imagenet_cfg(
            "randwire_ws_c78_small.yaml", ["MODEL.DEVICE", "cpu", "MODEL.RANDWIRE.CHANNELS", "8"]
        )
    )
    assert small.backbone.drop_edge_prob == 0.0 and small.head.dropout.p == 0.0


# Label smoothing -----------------------------------------------------------------------------


def test_label_smoothing_is_applied_to_the_training_loss():
    cfg = tiny_small_cfg(7)
    assert cfg.MODEL.CLASSIFIER.LABEL_SMOOTHING == 0.1
    model = build_model(cfg).train()
    torch.manual_seed(0)
    batch = [{"image": torch.rand(3, 32, 32) * 255, "label": i % 7} for i in range(6)]
    loss = model(batch)["loss_cls"]
    logits = model.logits(model.preprocess_image(batch))  # BN in train mode: the same batch stats
    labels = torch.tensor([x["label"] for x in batch])
    log_p = logits.log_softmax(1)
    nll = -log_p[torch.arange(6), labels].mean()
    uniform = -log_p.mean()
    assert loss.item() == pytest.approx((0.9 * nll + 0.1 * uniform).item(), rel=1e-5)
    assert loss.item() != pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-4)


# Top-1 / top-5 -------------------------------------------------------------------------------


def test_topk_on_a_hand_made_case():
    scores = torch.tensor(
        [
            [0.9, 0.05, 0.02, 0.01, 0.01, 0.01, 0.0],  # label 0: top-1
            [0.1, 0.5, 0.2, 0.1, 0.05, 0.05, 0.0],  # label 2: 2nd -> top-5 only
            [0.3, 0.2, 0.15, 0.14, 0.11, 0.1, 0.0],  # label 5: 6th -> neither
            [0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.0],  # label 2: 4th -> top-5 only
        ]
    )
    labels = torch.tensor([0, 2, 5, 2])
    assert topk_correct(scores, labels, (1, 5)) == [1, 3]
    assert topk_correct(scores, labels, (2,)) == [2]
    # k larger than the class count counts every row.
    assert topk_correct(scores[:, :3], torch.tensor([0, 2, 1, 2]), (1, 5)) == [2, 4]

    evaluator = ClassificationEvaluator()
    evaluator.process([{"label": int(y)} for y in labels[:2]], [{"scores": s} for s in scores[:2]])
    evaluator.process([{"label": int(y)} for y in labels[2:]], [{"scores": s} for s in scores[2:]])
    assert evaluator.evaluate() == {"top1": 25.0, "top5": 75.0}
    evaluator.reset()
    with pytest.raises(ValueError, match="0 images"):
        evaluator.evaluate()


# Schedule ------------------------------------------------------------------------------------


def test_schedule_from_epochs_and_linear_lr_scaling():
    cfg = imagenet_cfg(opts=["SOLVER.IMS_PER_BATCH", "512"])
    resolved = resolve_schedule(cfg, 1_281_167, 16)
    s = resolved.SOLVER
    assert (s.MAX_ITER, s.WARMUP_ITERS, s.CHECKPOINT_PERIOD) == (250200, 12510, 2502)
    assert resolved.TEST.EVAL_PERIOD == 25020
    assert s.BASE_LR == pytest.approx(0.2)
    # Resolving a resolved config gives the same lr: BASE_LR is never scaled twice.
    assert resolve_schedule(resolved, 1_281_167, 16).SOLVER.BASE_LR == pytest.approx(0.2)


def test_lr_curve_is_warmup_then_half_period_cosine():
    from detectron2.solver import build_lr_scheduler

    cfg = imagenet_cfg(
        opts=[
            "SOLVER.IMS_PER_BATCH",
            "256",
            "PRETRAIN.EPOCHS",
            "10",
            "PRETRAIN.WARMUP_EPOCHS",
            "2.0",
        ]
    )
    cfg = resolve_schedule(cfg, 2560, 1)  # 10 iterations per epoch, 100 in all, 20 of warmup
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.SOLVER.BASE_LR)
    sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01)  # 0.1 x peak
    assert lrs[10] == pytest.approx(0.01 + (0.5 * (1 + np.cos(np.pi * 0.2)) * 0.1 - 0.01) * 0.5)
    for t in (20, 50, 90):
        assert lrs[t] == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * t / 100)))
    assert lrs[-1] < 1e-3


@pytest.mark.parametrize(
    "opts, world, match",
    [
        (
            ["SOLVER.IMS_PER_BATCH", "250"],
            8,
            "IMS_PER_BATCH=250 is invalid: expected a multiple of the 8 processes",
        ),
        (["SOLVER.IMS_PER_BATCH", "256"], 1, r"IMS_PER_BATCH=256 is invalid: expected 1\.\.100"),
        (["PRETRAIN.EPOCHS", "0"], 1, "PRETRAIN.EPOCHS=0.0 is invalid"),
        (
            ["PRETRAIN.WARMUP_EPOCHS", "200.0"],
            1,
            r"WARMUP_EPOCHS=200.0 is invalid: expected \[0, PRETRAIN.EPOCHS=100\]",
        ),
    ],
)
def test_schedule_errors_name_the_value_and_range(opts, world, match):
    cfg = imagenet_cfg(opts=opts)
    size = 100 if "256" in opts else 10_000
    with pytest.raises(ValueError, match=match):
        resolve_schedule(cfg, size, world)


# Data ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("cls_demo") / "data")
    return generate_classification_demo(folder, {"train": 3, "val": 2}, image_size=40)


def test_demo_data_is_deterministic_imagefolder_of_the_detection_classes(demo_folder, tmp_path):
    classes, samples = scan_image_folder(os.path.join(demo_folder, "train"))
    assert classes == sorted(CLASSES) and len(samples) == 15
    assert len(scan_image_folder(os.path.join(demo_folder, "val"))[1]) == 10
    again = generate_classification_demo(
        str(tmp_path / "again"), {"train": 3, "val": 2}, image_size=40
    )
    for path, _ in samples:
        other = os.path.join(again, os.path.relpath(path, demo_folder))
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(other)))
    image = np.asarray(Image.open(samples[0][0]))
    assert image.shape == (40, 40, 3) and image.dtype == np.uint8
    with pytest.raises(ValueError, match="image_size=8 is invalid"):
        generate_classification_demo(str(tmp_path / "bad"), {"train": 1}, image_size=8)


def test_epoch_order_is_a_permutation_shared_by_any_process_count():
    one = EpochBatchSampler(103, 8, seed=3, max_iter=30)
    assert one.iters_per_epoch == 12
    epoch0 = [i for it in range(12) for i, _ in one.batch_at(it)]
    assert len(set(epoch0)) == 96  # no image twice in an epoch
    assert epoch0 != [i for it in range(12, 24) for i, _ in one.batch_at(it)]  # reshuffled
    # Four processes split every global batch; together they see exactly one process's batch.
    parts = [
        list(EpochBatchSampler(103, 8, seed=3, rank=r, world_size=4, max_iter=30)) for r in range(4)
    ]
    for it, batch in enumerate(one):
        assert sum((p[it] for p in parts), []) == batch
    # Resuming at iteration 17 continues the same order; another seed gives another order.
    assert list(EpochBatchSampler(103, 8, seed=3, start_iter=17, max_iter=30)) == list(one)[17:]
    assert list(EpochBatchSampler(103, 8, seed=4, max_iter=30)) != list(one)
    with pytest.raises(ValueError, match="IMS_PER_BATCH=8 is invalid for 3 processes"):
        EpochBatchSampler(103, 8, seed=3, world_size=3, max_iter=30)


def test_shards_cover_the_val_set_once():
    shards = [sum(ShardBatchSampler(10, 3, r, 4), []) for r in range(4)]
    assert sorted(sum(shards, [])) == list(range(10))


def test_augmentation_is_keyed_on_the_draw_seed(demo_folder):
    _, samples = scan_image_folder(os.path.join(demo_folder, "train"))
    train = ImageFolderDataset(samples, RandomResizedCropFlip(32, (0.3, 1.0)))
    a, b, c = train[(0, 11)], train[(0, 11)], train[(0, 12)]
    assert a["image"].shape == (3, 32, 32) and a["image"].dtype == torch.uint8
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert a["label"] == samples[0][1]
    # Eval: the central 0.8 of the image, resized; BGR reverses the channels.
    val = ImageFolderDataset(samples, ResizeCenterCrop(32, 0.8))
    image = np.asarray(Image.open(samples[0][0]))
    assert torch.equal(val[0]["image"].permute(1, 2, 0), torch.from_numpy(image[4:36, 4:36].copy()))
    bgr = ImageFolderDataset(samples, ResizeCenterCrop(32, 0.8), image_format="BGR")
    assert torch.equal(bgr[0]["image"], val[0]["image"].flip(0))


def test_channels_last_option_trains():
    cfg = tiny_small_cfg(5, "PRETRAIN.CHANNELS_LAST", "True")
    model = ClassificationTrainer.build_model(cfg).train()
    conv = model.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    loss = model([{"image": torch.rand(3, 32, 32) * 255, "label": i} for i in range(4)])["loss_cls"]
    loss.backward()
    assert torch.isfinite(loss) and conv.grad is not None
