"""randwire_d2/engine/schedule.py: SOLVER keys from epochs, lr scaling, the lr curve, errors."""

import os

import numpy as np
import pytest
import torch
from common import REPO

from randwire_d2.config import load_config
from randwire_d2.engine import resolve_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


def imagenet_cfg(name="randwire_ws_c109_regular.yaml", opts=()):
    return load_config(os.path.join(REPO, "configs", "imagenet", name), opts, freeze=False)


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
