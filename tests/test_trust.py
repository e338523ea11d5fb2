"""A run never lies: OUTPUT_DIR ownership, weights that do not fit, explicit overrides, resume
contradictions, non-finite checkpoints, early errors and leftovers (issue 8's defects 1-5, 8-10;
the data defects are in test_data_checks.py, the wiring ones in test_validation.py)."""

import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch
import torchvision
from common import (
    CLS_CONFIG,
    DET_CONFIG,
    REPO,
    TINY_DET,
    as_args,
    call_tool,
    load_tool,
    make_cfg,
    read_metrics,
    tiny_cfg,
    tiny_opts,
)
from detectron2.modeling import build_model

from randwire_d2.checkpoint import CheckpointError, RandWireCheckpointer
from randwire_d2.config import load_config
from randwire_d2.data.detection_demo import generate_detection_demo
from randwire_d2.engine import ClassificationTrainer, claim_output_dir, evaluate_checkpoint
from randwire_d2.engine.output_dir import release_output_dir, truncate_metrics
from randwire_d2.engine.run_setup import resolve_device

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(cls_data_root, tmp_path_factory):
    """A 3-iteration tiny run: model_0000000/1.pth, model_final.pth (iteration 2)."""
    out = tmp_path_factory.mktemp("trained")
    cfg = make_cfg(tiny_opts(cls_data_root, out, epochs=3))
    trainer = ClassificationTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return out


def run_cli(*args):
    """tools/train_cls.py ARGS in-process, which must succeed; its output."""
    proc = call_tool("train_cls", *args, check=True)
    return proc.stdout + proc.stderr


def run_fail(*args):
    """tools/train_cls.py ARGS in-process, which must fail; its output."""
    proc = call_tool("train_cls", *args, check=False)
    return proc.stdout + proc.stderr


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


# 1. OUTPUT_DIR: one run at a time; a fresh run never overwrites another's checkpoints ---------


@pytest.mark.slow
def test_a_held_output_dir_is_refused_naming_the_holder(tmp_path):
    code = (
        "import sys, time; from randwire_d2.engine import claim_output_dir; "
        "claim_output_dir(sys.argv[1]); print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=rf"in use by pid {holder.pid} on .*-c"):
            claim_output_dir(str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    assert claim_output_dir(str(tmp_path))  # a killed holder frees it: no stale lock
    release_output_dir(str(tmp_path))


@pytest.mark.slow
def test_fresh_run_over_checkpoints_is_refused_unless_overwrite(trained, tmp_path, cls_data_root):
    out = copy_run(trained, tmp_path / "run")
    opts = tiny_opts(cls_data_root, out, epochs=3)
    message = run_fail("--config-file", CLS_CONFIG, *opts)
    assert "holds checkpoints of an earlier run (last_checkpoint, model_0000000.pth" in message
    assert "--resume" in message and "--overwrite" in message
    assert (out / "model_final.pth").exists()
    # --overwrite: the old checkpoints and metrics go, the new run writes its own.
    before = os.path.getmtime(out / "model_final.pth")
    run_cli("--config-file", CLS_CONFIG, "--overwrite", *opts)
    assert os.path.getmtime(out / "model_final.pth") > before
    assert [it for it, r in read_metrics(out) if "total_loss" in r] == [0, 1, 2]


# 2. Weights that do not fit fail, naming what does not fit -------------------------------------


def tiny_classifier(cls_data_root, tmp_path, **extra):
    return build_model(make_cfg(tiny_opts(cls_data_root, tmp_path, **extra)))


def test_torchvision_resnet_weights_do_not_load_into_randwire(cls_data_root, tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    model = tiny_classifier(cls_data_root, tmp_path)
    with pytest.raises(
        CheckpointError,
        match=r"\d+ tensors are missing \(backbone\..*holds 320 tensors \(conv1\.weight",
    ):
        RandWireCheckpointer(model).load(str(path))


def test_classifier_of_other_channels_does_not_load(cls_data_root, tmp_path):
    small = tiny_classifier(cls_data_root, tmp_path, **{"MODEL.RANDWIRE.CHANNELS": 8})
    RandWireCheckpointer(small, str(tmp_path)).save("c8")
    wide = tiny_classifier(cls_data_root, tmp_path, **{"MODEL.RANDWIRE.CHANNELS": 16})
    with pytest.raises(
        CheckpointError,
        match=r"\d+ have other shapes \(e\.g\. backbone\.conv1.*holds \d+ tensors \(backbone",
    ):
        RandWireCheckpointer(wide).load(str(tmp_path / "c8.pth"))


def test_detector_checkpoint_given_to_the_classifier_says_what_it_is(cls_data_root, tmp_path):
    RandWireCheckpointer(build_model(tiny_cfg()), str(tmp_path)).save("detector")
    model = tiny_classifier(cls_data_root, tmp_path)
    with pytest.raises(CheckpointError, match="is a GeneralizedRCNN checkpoint.*a detector's"):
        RandWireCheckpointer(model).load(str(tmp_path / "detector.pth"))


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 100])
def test_empty_or_random_weight_files_are_named(cls_data_root, tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    model = tiny_classifier(cls_data_root, tmp_path)
    with pytest.raises(CheckpointError, match=rf"weights\.pth' is not a readable checkpoint "):
        RandWireCheckpointer(model).load(str(path))


def test_eval_only_with_another_class_count_fails(trained, cls_data_root, tmp_path):
    # 5 classes in the checkpoint; a 5-class val folder, but NUM_CLASSES 7 -> the fc differs.
    weights = {"MODEL.WEIGHTS": str(trained / "model_final.pth")}
    cfg = make_cfg(
        tiny_opts(cls_data_root, tmp_path, **weights, **{"MODEL.CLASSIFIER.NUM_CLASSES": 7})
    )
    with pytest.raises(CheckpointError, match=r"head\.fc\.weight: \(5, 32\) in the file"):
        evaluate_checkpoint(cfg)


def test_eval_only_needs_no_train_folder(trained, cls_data_root, tmp_path):
    only_val = tmp_path / "data"
    shutil.copytree(os.path.join(cls_data_root, "val"), only_val / "val")
    weights = {"MODEL.WEIGHTS": str(trained / "model_final.pth")}
    cfg = make_cfg(tiny_opts(cls_data_root, tmp_path / "out", **weights))
    cfg.defrost()
    cfg.PRETRAIN.DATA_ROOT = str(only_val)
    assert 0 <= evaluate_checkpoint(cfg)["val_32"]["top1"] <= 100


# 3. Explicit SOLVER keys are honoured (and said so); epochs take fractions ---------------------


def test_explicit_solver_keys_win_over_the_epoch_schedule(cls_data_root, tmp_path, caplog):
    train_cls = load_tool("train_cls")
    opts = tiny_opts(cls_data_root, tmp_path, epochs=50)
    opts += ["SOLVER.MAX_ITER", "7", "SOLVER.BASE_LR", "0.01", "SOLVER.CHECKPOINT_PERIOD", "3"]
    args = train_cls.build_parser().parse_args(["--config-file", CLS_CONFIG, "--dry-run", *opts])
    cfg = train_cls.setup(args, world_size=1)
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.BASE_LR, cfg.SOLVER.CHECKPOINT_PERIOD) == (7, 0.01, 3)
    err = caplog.text
    assert "SOLVER.MAX_ITER=7 is given explicitly: it is used instead of the 50" in err
    assert "SOLVER.BASE_LR=0.01 is given explicitly" in err


def test_a_smoke_test_trains_max_iter_iterations(cls_data_root, tmp_path):
    run_cli("--config-file", CLS_CONFIG, *tiny_opts(cls_data_root, tmp_path, epochs=100), *[
        "SOLVER.MAX_ITER", "2"])  # fmt: skip
    assert [it for it, r in read_metrics(tmp_path) if "total_loss" in r] == [0, 1]
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 1


def test_fractional_epochs(cls_data_root, tmp_path):
    cfg = make_cfg(tiny_opts(cls_data_root, tmp_path, epochs=2, **{"SOLVER.IMS_PER_BATCH": 4}))
    opts = {"SOLVER.IMS_PER_BATCH": 4, "PRETRAIN.WARMUP_EPOCHS": 0.0}
    half = make_cfg(tiny_opts(cls_data_root, tmp_path, epochs=0.5, **opts))
    assert (cfg.SOLVER.MAX_ITER, half.SOLVER.MAX_ITER) == (10, 2)  # 5 iterations per epoch


# 4. --resume: what the restored state contradicts is refused, other changes are named --------


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"PRETRAIN.LR_PER_256": 0.8}, r"SOLVER\.BASE_LR 0\.025 -> 0\.05"),
        ({"SOLVER.IMS_PER_BATCH": 8}, r"SOLVER\.IMS_PER_BATCH 16 -> 8"),
        ({"PRETRAIN.EPOCHS": 2.0}, r"at iteration 3, but SOLVER\.MAX_ITER=2: nothing is left"),
    ],
)
def test_resume_refuses_what_the_checkpoint_contradicts(
    trained, cls_data_root, tmp_path, extra, match
):
    out = copy_run(trained, tmp_path / "run")
    opts = tiny_opts(cls_data_root, out, epochs=6, **extra)
    trainer = ClassificationTrainer(make_cfg(opts))
    with pytest.raises(ValueError, match=match):
        trainer.resume_or_load(resume=True)


def test_resume_with_more_epochs_applies_and_names_them(trained, cls_data_root, tmp_path, caplog):
    out = copy_run(trained, tmp_path / "run")
    trainer = ClassificationTrainer(make_cfg(tiny_opts(cls_data_root, out, epochs=5)))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 3 and trainer.max_iter == 5
    assert (
        "--resume applies changed keys" in caplog.text and "SOLVER.MAX_ITER 3 -> 5" in caplog.text
    )


def test_resume_of_a_finished_run_only_evaluates(trained, cls_data_root, tmp_path, caplog):
    # A run killed during its final evaluation: resuming it evaluates, and trains nothing.
    out = copy_run(trained, tmp_path / "run")
    trainer = ClassificationTrainer(make_cfg(tiny_opts(cls_data_root, out, epochs=3)))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == trainer.max_iter == 3
    assert "only its final evaluation runs" in caplog.text
    before = [it for it, r in read_metrics(out) if "total_loss" in r]
    trainer.train()
    assert [it for it, r in read_metrics(out) if "total_loss" in r] == before
    assert "val_32/top1" in read_metrics(out)[-1][1]


# 5. Non-finite weights are never saved and never evaluated -------------------------------------


def test_non_finite_weights_are_never_saved_or_evaluated(trained, cls_data_root, tmp_path):
    out = copy_run(trained, tmp_path / "run")
    cfg = make_cfg(tiny_opts(cls_data_root, out, epochs=3))
    model = build_model(cfg)
    checkpointer = RandWireCheckpointer(model, str(out), cfg=cfg)
    checkpointer.load(str(out / "model_final.pth"))
    model.backbone.conv1.norm.running_var.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match=r"backbone\.conv1\.norm\.running_var"):
        checkpointer.save("model_0000003")
    assert not (out / "model_0000003.pth").exists()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    # A poisoned file (as an older version wrote after a NaN stop) is refused for evaluation.
    data = torch.load(out / "model_final.pth", weights_only=True)
    data["model"]["backbone.conv1.norm.running_var"].fill_(float("nan"))
    torch.save(data, out / "poisoned.pth")
    cfg = make_cfg(tiny_opts(cls_data_root, out, **{"MODEL.WEIGHTS": str(out / "poisoned.pth")}))
    with pytest.raises(CheckpointError, match="holds NaN/inf in 1 tensors"):
        evaluate_checkpoint(cfg)


# 8. Errors that name the key, the value and what is allowed ------------------------------------


@pytest.mark.parametrize(
    "opts, match",
    [
        (["PRETRAIN.LR_PER_256", "-0.1"], r"PRETRAIN\.LR_PER_256=-0\.1 is invalid: expected > 0"),
        (["SOLVER.BASE_LR", "-1.0"], r"SOLVER\.BASE_LR=-1\.0 is invalid: expected > 0"),
        (["PRETRAIN.AMP_DTYPE", "float8"], r"PRETRAIN\.AMP_DTYPE='float8' is invalid: expected"),
    ],
)
def test_dry_run_rejects_invalid_values(cls_data_root, tmp_path, opts, match):
    train_cls = load_tool("train_cls")
    argv = ["--config-file", CLS_CONFIG, "--dry-run", *tiny_opts(cls_data_root, tmp_path), *opts]
    with pytest.raises(ValueError, match=match):
        train_cls.setup(train_cls.build_parser().parse_args(argv), world_size=1)


def test_detector_with_fewer_classes_than_the_dataset_fails_before_training(tmp_path):
    paths = generate_detection_demo(
        str(tmp_path), {"train": 2}, image_size=(64, 64), object_size=(14, 30), seed=3
    )
    dataset = ["--dataset", "few_train", paths["train"], str(tmp_path / "train")]
    proc = call_tool(
        "train_net",
        "--config",
        DET_CONFIG,
        *dataset,
        *as_args(TINY_DET),
        *("DATASETS.TRAIN", "('few_train',)", "DATASETS.TEST", "()"),
        *("MODEL.ROI_HEADS.NUM_CLASSES", "3", "OUTPUT_DIR", tmp_path / "out"),
    )
    assert proc.returncode != 0
    assert "MODEL.ROI_HEADS.NUM_CLASSES=3" in proc.stderr and "Starting training" not in proc.stderr


# 9. Leftovers --------------------------------------------------------------------------------


def test_partial_files_go_and_checkpoints_are_readable_by_others(trained, tmp_path):
    out = copy_run(trained, tmp_path / "run")
    (out / ".tmp_abc123.pth").write_bytes(b"half a checkpoint")
    claim_output_dir(str(out))
    release_output_dir(str(out))
    assert not (out / ".tmp_abc123.pth").exists()
    mode = stat.S_IMODE(os.stat(trained / "model_final.pth").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # mkstemp alone gives 0600


def test_resume_falls_back_to_the_newest_intact_checkpoint(
    trained, cls_data_root, tmp_path, caplog
):
    out = copy_run(trained, tmp_path / "run")
    (out / "model_final.pth").write_bytes(b"truncated")
    trainer = ClassificationTrainer(make_cfg(tiny_opts(cls_data_root, out, epochs=5)))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 3  # model_0000002.pth, the newest intact one
    assert "model_0000002.pth instead of the last checkpoint" in caplog.text


def test_metrics_of_iterations_after_the_resumed_checkpoint_are_dropped(tmp_path):
    lines = [f'{{"iteration": {i}, "total_loss": 1.0}}\n' for i in (0, 1, 2, 3)]
    (tmp_path / "metrics.json").write_text("".join(lines))
    truncate_metrics(str(tmp_path), 2)
    assert [it for it, _ in read_metrics(tmp_path)] == [0, 1]


def test_metrics_lines_that_are_json_but_not_records_do_not_stop_a_resume(tmp_path):
    """A metrics.json line that parses but is not a record (a list, a number, a string) is
    kept as unreadable, in truncate_metrics (resume) and in a sweep's final_results."""
    from randwire_d2.sweep.store import final_results

    lines = ['{"iteration": 0, "val_32/top1": 50.0}\n', "[1, 2]\n", "7\n", '"x"\n']
    lines.append('{"iteration": 3, "total_loss": 1.0}\n')
    (tmp_path / "metrics.json").write_text("".join(lines))
    assert final_results(str(tmp_path)) is None  # the last iteration (3) has no evaluation
    truncate_metrics(str(tmp_path), 2)
    kept = (tmp_path / "metrics.json").read_text().splitlines()
    assert kept == [ln.strip() for ln in lines[:4]]


def test_train_cls_generates_the_demo_data_on_a_fresh_clone(tmp_path, monkeypatch):
    import randwire_d2.data.cls_demo as cls_demo

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    tiny = dict(cls_demo.DEMO_CLS_PARAMS, images_per_class={"train": 2, "val": 1}, image_size=32)
    monkeypatch.setattr(cls_demo, "DEMO_CLS_PARAMS", tiny)
    train_cls = load_tool("train_cls")
    argv = ["--config-file", CLS_CONFIG, "--dry-run", "SOLVER.IMS_PER_BATCH", "4"]
    cfg = train_cls.setup(train_cls.build_parser().parse_args(argv), world_size=1)
    assert cfg.PRETRAIN.DATA_ROOT == "datasets/randwire_demo_cls"
    assert len(os.listdir(tmp_path / "datasets/randwire_demo_cls/train")) == 5


# 10. Checked before the first iteration --------------------------------------------------------


def test_freeze_at_without_weights_is_an_error(cls_data_root, tmp_path):
    cfg = make_cfg(tiny_opts(cls_data_root, tmp_path, **{"MODEL.BACKBONE.FREEZE_AT": 2}))
    trainer = ClassificationTrainer(cfg)
    with pytest.raises(ValueError, match="FREEZE_AT=2 freezes .* MODEL.WEIGHTS is empty"):
        trainer.resume_or_load(resume=False)


def test_missing_val_folder_fails_before_training(cls_data_root, tmp_path):
    only_train = tmp_path / "data"
    shutil.copytree(os.path.join(cls_data_root, "train"), only_train / "train")
    cfg = make_cfg(tiny_opts(str(only_train), tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="val"):
        ClassificationTrainer(cfg)


def test_cuda_to_cpu_fallback_is_said(caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(CLS_CONFIG, ["MODEL.DEVICE", "cuda"], freeze=False)
    resolve_device(cfg)
    assert cfg.MODEL.DEVICE == "cpu"
    assert "MODEL.DEVICE='cuda' but CUDA is not available: using CPU" in caplog.text


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_amp_step_trainer_runs_an_iteration(dtype, monkeypatch):
    """The GPU check found `AMPTrainer(model, loader, optimizer, scaler)` putting the scaler in
    gather_metric_period: the first iteration failed in _write_metrics. AMPTrainer's autocast is
    CUDA's, inactive on CPU, so the step runs here in float32 through the same code."""
    import warnings

    from detectron2.engine import AMPTrainer

    from randwire_d2.engine.trainer import step_trainer

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, batch):
            return {"loss": self.fc(batch).pow(2).mean()}

    model = Model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler/autocast: CUDA is not available
        trainer = step_trainer(model, iter([torch.ones(3, 4)] * 4), optimizer, dtype)
        assert isinstance(trainer, AMPTrainer) and trainer.precision == dtype
        assert trainer.gather_metric_period == 1
        assert isinstance(trainer.grad_scaler, torch.amp.GradScaler)
        from detectron2.utils.events import EventStorage

        before = model.fc.weight.detach().clone()
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # run_step asserts it
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        with EventStorage(0) as storage:
            trainer.iter = 0
            trainer.run_step()
        assert "total_loss" in storage.histories() and not torch.equal(before, model.fc.weight)


def test_ddp_gets_forward_sync_buffers_instead_of_the_deprecated_broadcast_buffers(monkeypatch):
    """torch 2.13 deprecates DistributedDataParallel(broadcast_buffers=...) with a FutureWarning
    in every process of a multi-process run."""
    import randwire_d2.engine.trainer as trainer

    seen = {}
    monkeypatch.setattr(trainer.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(trainer, "DistributedDataParallel", lambda model, **kw: seen.update(kw))
    trainer.create_ddp_model(torch.nn.Linear(2, 2), broadcast_buffers=False)
    assert seen == {"forward_sync_buffers": False}
