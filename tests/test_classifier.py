"""randwire_d2/modeling/classifier.py: the head, the label-smoothed loss, channels_last training."""

import os

import pytest
import torch
import torch.nn.functional as F
from common import REPO
from detectron2.modeling import build_model

from randwire_d2.config import load_config
from randwire_d2.engine import ClassificationTrainer

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


def test_channels_last_option_trains():
    cfg = tiny_small_cfg(5, "PRETRAIN.CHANNELS_LAST", "True")
    model = ClassificationTrainer.build_model(cfg).train()
    conv = model.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    loss = model([{"image": torch.rand(3, 32, 32) * 255, "label": i} for i in range(4)])["loss_cls"]
    loss.backward()
    assert torch.isfinite(loss) and conv.grad is not None
