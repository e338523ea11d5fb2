"""End-to-end pretraining runs (tools/train_cls.py, ClassificationTrainer) on tiny data, CPU.

Every run uses configs/demo/randwire_cls_demo.yaml shrunk by `tiny_opts`: 20 training images of
32x32 and a global batch of 16, so one epoch is one iteration and every iteration is written to
metrics.json.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from common import (
    CLS_CONFIG,
    DET_CONFIG,
    REPO,
    TOOL_ENV,
    call_tool,
    make_cfg,
    read_metrics,
    run_tool,
    tiny_opts,
)
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

from randwire_d2.checkpoint import RandWireCheckpointer
from randwire_d2.config import load_config
from randwire_d2.data.shapes import CLASSES
from randwire_d2.engine import ClassificationTrainer, evaluate_checkpoint

# Every test here trains tiny models: one torch thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def train_in_process(opts, resume=False):
    cfg = make_cfg(opts)
    seed_all_rng(cfg.SEED)  # what default_setup does for rank 0
    trainer = ClassificationTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def run_cli(*args, timeout=240, prefix=(sys.executable,)):
    """tools/train_cls.py ARGS in fresh processes (several: launch or torchrun); its output."""
    proc = run_tool("train_cls", *args, check=True, timeout=timeout, prefix=prefix)
    return proc.stdout + proc.stderr


def call_cli(*args):
    """tools/train_cls.py ARGS in-process; its output."""
    proc = call_tool("train_cls", *args, check=True)
    return proc.stdout + proc.stderr


def train_losses(output_dir):
    return {it: r["total_loss"] for it, r in read_metrics(output_dir) if "total_loss" in r}


def test_single_process_run(cls_data_root, tmp_path):
    trainer = train_in_process(tiny_opts(cls_data_root, tmp_path, epochs=3))
    s = trainer.cfg.SOLVER
    assert (trainer.iters_per_epoch, s.MAX_ITER, s.WARMUP_ITERS) == (1, 3, 1)
    assert s.BASE_LR == pytest.approx(0.4 * 16 / 256)  # LR_PER_256 x global batch / 256

    records = dict(read_metrics(tmp_path))
    assert sorted(train_losses(tmp_path)) == [0, 1, 2]
    # Warmup starts at WARMUP_FACTOR x peak; the last lr is on the cosine's way down to 0.
    assert records[0]["lr"] == pytest.approx(0.1 * s.BASE_LR)
    assert 0 < records[2]["lr"] < s.BASE_LR
    assert records[2]["images_per_sec"] > 0
    final = [r for _, r in read_metrics(tmp_path) if "val_32/top1" in r]
    assert len(final) == 1 and 0 <= final[0]["val_32/top1"] <= 100.0
    assert "val_32/top5" not in final[0]  # 5 classes: top-5 would be 100 by construction
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))

    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["classes"] == sorted(CLASSES)  # ImageFolder order: sorted folder names
    assert ckpt["arch"] == "RandWireClassifier" and ckpt["iteration"] == 2
    assert ckpt["input_format"] == "RGB" and len(ckpt["pixel_mean"]) == 3
    assert len(ckpt["wiring_fingerprint"]) == 16 and "conv5" in ckpt["wiring"]
    assert ckpt["trainer"]["iteration"] == 2 and "optimizer" in ckpt["trainer"]["_trainer"]

    # --eval-only on the final checkpoint reproduces the evaluation that ended training.
    weights = {"MODEL.WEIGHTS": str(tmp_path / "model_final.pth")}
    results = evaluate_checkpoint(make_cfg(tiny_opts(cls_data_root, tmp_path / "eval", **weights)))
    assert results["val_32"]["top1"] == pytest.approx(final[0]["val_32/top1"])


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["launch", "torchrun"])
def test_two_processes_match_one_process_at_the_same_global_batch(
    launcher, cls_data_root, tmp_path
):
    # naiveSyncBN: the two processes normalize with the statistics of the whole global batch.
    common = dict(epochs=2, **{"MODEL.RANDWIRE.NORM": "naiveSyncBN"})
    single, double = tmp_path / "one", tmp_path / "two"
    train_in_process(tiny_opts(cls_data_root, single, **common))
    args = ["--config-file", CLS_CONFIG, *tiny_opts(cls_data_root, double, **common)]
    if launcher == "launch":  # Detectron2's launch spawns 2 gloo processes
        run_cli("--num-gpus", "2", "--dist-url", "auto", *args)
    else:  # torchrun starts them; train_cls.py joins from WORLD_SIZE/RANK/LOCAL_RANK/MASTER_ADDR
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
        ]
        run_cli(*args, prefix=torchrun)
    one, two = train_losses(single), train_losses(double)
    assert sorted(one) == sorted(two) == [0, 1]
    # Iteration 0: the same images, weights and normalization; iteration 1 also checks that
    # DDP averaged the gradients of iteration 0 like one process would have computed them.
    assert two[0] == pytest.approx(one[0], rel=1e-5)
    assert two[1] == pytest.approx(one[1], rel=1e-4)
    # The final evaluation: each process scores its half of val; the counts are summed.
    evals = [[r for _, r in read_metrics(d) if "val_32/top1" in r] for d in (single, double)]
    assert len(evals[0]) == len(evals[1]) == 1
    assert evals[1][0]["val_32/top1"] == pytest.approx(evals[0][0]["val_32/top1"])


@pytest.mark.slow
def test_resume_continues_at_the_saved_iteration_with_the_same_lr_and_data(cls_data_root, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    # With edge removal on: the removed edges must also be those of the uninterrupted run.
    edges = {"MODEL.RANDWIRE.DROP_EDGE_PROB": 0.5}
    train_in_process(tiny_opts(cls_data_root, full, epochs=6, **edges))
    # A run that stopped after iteration 2: its output folder holds that checkpoint only.
    os.makedirs(resumed)
    os.link(full / "model_0000002.pth", resumed / "model_0000002.pth")
    (resumed / "last_checkpoint").write_text("model_0000002.pth")

    cfg = make_cfg(tiny_opts(cls_data_root, resumed, epochs=6, **edges))
    trainer = ClassificationTrainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 3
    assert trainer._trainer.data_loader.batch_sampler.start_iter == 3
    lr_full = {it: r["lr"] for it, r in read_metrics(full) if "lr" in r}
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lr_full[3], rel=1e-9)
    trainer.train()

    a, b = train_losses(full), train_losses(resumed)
    assert sorted(b) == [3, 4, 5]
    for it in (3, 4, 5):  # same weights, optimizer state, lr and images as the uninterrupted run
        assert b[it] == pytest.approx(a[it], rel=1e-5)


@pytest.mark.slow
def test_sigkill_then_resume_loses_at_most_one_checkpoint_period(cls_data_root, tmp_path):
    period = 3
    opts = tiny_opts(
        cls_data_root, tmp_path, epochs=60, **{"PRETRAIN.CHECKPOINT_PERIOD_EPOCHS": float(period)}
    )
    proc = subprocess.Popen(  # a process to kill mid-run
        [sys.executable, os.path.join(REPO, "tools", "train_cls.py"), "--config-file", CLS_CONFIG]
        + opts,
        cwd=REPO,
        env=TOOL_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = tmp_path / "metrics.json"
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and max((it for it, _ in read_metrics(tmp_path)), default=-1) >= 10:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()

    killed = {it: r for it, r in read_metrics(tmp_path) if "total_loss" in r}
    killed_at = max(killed)
    saved = (tmp_path / "last_checkpoint").read_text()
    saved_iter = torch.load(tmp_path / saved, map_location="cpu", weights_only=True)["iteration"]
    assert killed_at - saved_iter < period

    call_cli("--config-file", CLS_CONFIG, "--resume", *opts)
    iterations = [it for it, r in read_metrics(tmp_path) if "total_loss" in r]
    assert iterations == list(range(60))  # each once: the killed run's later lines are dropped
    resumed = {it: r for it, r in read_metrics(tmp_path) if "total_loss" in r}
    # Iterations after the checkpoint ran twice (killed run, resumed run): identically.
    for it in range(saved_iter + 1, killed_at + 1):
        assert resumed[it]["lr"] == pytest.approx(killed[it]["lr"], rel=1e-9)
        assert resumed[it]["total_loss"] == pytest.approx(killed[it]["total_loss"], rel=1e-5)


def test_checkpoint_loads_weights_only_and_initialises_the_demo_detector(cls_data_root, tmp_path):
    # The demo classifier at its real size (its wiring must be the detector's), on tiny data.
    opts = tiny_opts(cls_data_root, tmp_path, epochs=1)
    for key in (
        "MODEL.RANDWIRE.NUM_NODES",
        "MODEL.RANDWIRE.CHANNELS",
        "MODEL.CLASSIFIER.HEAD_CHANNELS",
    ):
        i = opts.index(key)
        del opts[i : i + 2]
    classifier = train_in_process(opts).model
    path = tmp_path / "model_final.pth"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["classes"] == sorted(CLASSES)  # ImageFolder order: sorted folder names

    det_cfg = load_config(DET_CONFIG, ["MODEL.DEVICE", "cpu"])
    cls_cfg = make_cfg(opts)
    for key in ("GENERATOR", "NUM_NODES", "SEED", "WS_K", "WS_P", "CHANNELS", "REGIME", "NODE_OP"):
        assert det_cfg.MODEL.RANDWIRE[key] == cls_cfg.MODEL.RANDWIRE[key], key
    assert det_cfg.INPUT.FORMAT == ckpt["input_format"]
    assert list(det_cfg.MODEL.PIXEL_MEAN) == pytest.approx(ckpt["pixel_mean"])

    detector = build_model(det_cfg)
    RandWireCheckpointer(detector, str(tmp_path / "det")).resume_or_load(str(path), resume=False)
    det_state = detector.state_dict()
    trunk = {k: v for k, v in classifier.state_dict().items() if k.startswith("backbone.")}
    assert len(trunk) > 50
    for k, v in trunk.items():
        assert torch.equal(det_state["backbone.bottom_up." + k[len("backbone.") :]], v), k


@pytest.mark.parametrize(
    "config, epochs, weight_decay, extra",
    [
        (
            "randwire_ws_c109_regular.yaml",
            "100",
            "1e-05",
            ["dropout before fc: 0.2", "edge removal p: 0.1"],
        ),
        (
            "randwire_ws_c78_small.yaml",
            "250",
            "5e-05",
            ["dropout before fc: 0", "edge removal p: 0"],
        ),
        (
            "randwire_ws_c154_regular.yaml",
            "100",
            "1e-05",
            ["dropout before fc: 0.2", "edge removal p: 0.1"],
        ),
    ],
)
def test_dry_run_prints_the_paper_schedule_for_imagenet(
    config, epochs, weight_decay, extra, tmp_path
):
    out = call_cli(
        "--config-file",
        os.path.join(REPO, "configs", "imagenet", config),
        "--dry-run",
        "--num-gpus",
        "8",
        "PRETRAIN.DATA_ROOT",
        str(tmp_path / "no_imagenet_here"),
    )
    ipe = 1_281_167 // 256
    expect = [
        "training images: 1,281,167",
        "processes: 8",
        "global batch: 256 (32 per process)",
        f"epochs: {epochs}",
        f"iterations per epoch: {ipe:,}",
        f"total iterations: {ipe * int(epochs):,}",
        f"warmup iterations: {ipe * 5:,}",
        "peak lr: 0.1",
        "momentum: 0.9",
        f"weight decay: {weight_decay} (norm layers: 0)",
        "label smoothing: 0.1",
        "test crops: 224, 320",
    ] + extra
    lines = [" ".join(line.split()) for line in out.splitlines()]
    for e in expect:
        assert e in lines, f"{e!r} not printed:\n{out}"
    assert not os.path.exists(tmp_path / "no_imagenet_here")  # nothing trained, nothing written


def test_dry_run_scales_lr_with_the_global_batch(tmp_path):
    out = call_cli(
        "--config-file",
        os.path.join(REPO, "configs", "imagenet", "randwire_ws_c78_small.yaml"),
        "--dry-run",
        "--num-gpus",
        "4",
        "--num-machines",
        "4",
        "--dataset-size",
        "100000",
        "SOLVER.IMS_PER_BATCH",
        "1024",
    )
    lines = [" ".join(line.split()) for line in out.splitlines()]
    for e in [
        "processes: 16",
        "global batch: 1024 (64 per process)",
        "iterations per epoch: 97",
        "total iterations: 24,250",
        "warmup iterations: 485",
        "peak lr: 0.4",
    ]:
        assert e in lines, f"{e!r} not printed:\n{out}"


def test_resume_into_a_changed_model_names_the_changed_key(cls_data_root, tmp_path):
    """Every checkpoint of OUTPUT_DIR is of the run's model: --resume after changing it names the
    key, instead of trying each checkpoint and saying none is intact."""
    from randwire_d2.checkpoint import WeightsMismatchError

    trainer = train_in_process(tiny_opts(cls_data_root, tmp_path, epochs=1))
    del trainer
    changed = tiny_opts(cls_data_root, tmp_path, epochs=2, **{"MODEL.RANDWIRE.CHANNELS": 12})
    with pytest.raises(
        WeightsMismatchError,
        match=r"--resume: .*model_final\.pth does not fit the model this config builds: the "
        r"config changed MODEL\.RANDWIRE\.CHANNELS 8 -> 12",
    ):
        train_in_process(changed, resume=True)
