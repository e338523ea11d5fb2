"""randwire_d2/checkpoint.py and engine/resume.py: checkpoints saved, loaded and resumed."""

import os
import pickle
import shutil
import stat

import pytest
import torch
import torchvision
from common import (
    CLS_CONFIG,
    LAZY_DET_CONFIG,
    TINY_LAZY,
    TINY_PREDICT_CLS,
    call_tool,
    make_cfg,
    read_metrics,
    tiny_cfg,
    tiny_cls_cfg,
    tiny_opts,
    write_image,
)
from detectron2.config import instantiate
from detectron2.modeling import build_model

from randwire_d2.checkpoint import (
    CheckpointError,
    RandWireCheckpointer,
    build_checkpointer,
    load_for_eval,
)
from randwire_d2.config import load_lazy_config
from randwire_d2.engine import ClassificationTrainer, claim_output_dir, evaluate_checkpoint
from randwire_d2.engine.output_dir import release_output_dir
from randwire_d2.engine.resume import resume_or_load

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


def tiny_classifier(cls_data_root, tmp_path, **extra):
    return build_model(make_cfg(tiny_opts(cls_data_root, tmp_path, **extra)))


def write_pkl(tmp_path, value):
    path = str(tmp_path / "w.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": value}, "__author__": "x"}, f, protocol=2)
    return path


# Nothing listens on port 9 (discard) of this machine: the connection is refused at once, as
# any download is on a machine without network.
OFFLINE_URL = "http://127.0.0.1:9/model_final.pth"


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


@pytest.mark.parametrize("value", ["abc", 3, [1.0, 2.0]], ids=["str", "int", "list"])
def test_a_pkl_weight_that_is_not_an_array_is_named_with_its_file(tmp_path, value):
    path = write_pkl(tmp_path, value)
    model = build_model(tiny_cfg())
    with pytest.raises(CheckpointError, match=rf"w\.pkl holds 'w' as a {type(value).__name__}"):
        build_checkpointer(model, "").load(path, checkpointables=[])


@pytest.mark.parametrize("content", ["../../elsewhere.pth", "/etc/passwd", ""])
def test_last_checkpoint_names_a_file_in_output_dir(tmp_path, content):
    (tmp_path / "last_checkpoint").write_text(content)
    checkpointer = build_checkpointer(build_model(tiny_cfg()), str(tmp_path))
    with pytest.raises(CheckpointError, match="last_checkpoint names .*expected the file name"):
        checkpointer.get_checkpoint_file()


def test_a_checkpoint_iteration_that_is_not_a_count_is_refused(tmp_path):
    model = build_model(tiny_cfg())
    path = str(tmp_path / "model_0000009.pth")
    build_checkpointer(model, str(tmp_path)).save("model_0000009")
    data = torch.load(path, weights_only=True)
    data["trainer"] = {"iteration": "9; rm -rf"}
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"holds trainer\.iteration='9; rm -rf': expected an"):
        build_checkpointer(model, "").load(path, checkpointables=[])


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


def test_weights_at_a_url_without_network_name_the_key_and_the_url(tmp_path):
    reason = "[Errno 111] Connection refused"
    cfg = tiny_cls_cfg()
    cfg.MODEL.WEIGHTS = OFFLINE_URL
    with pytest.raises(OSError) as e:
        load_for_eval(cfg, build_model(cfg))
    assert str(e.value) == (
        f"MODEL.WEIGHTS='{OFFLINE_URL}' cannot be downloaded ({reason}): without network "
        "access, download it elsewhere and set MODEL.WEIGHTS to the local file"
    )
    lazy = load_lazy_config(LAZY_DET_CONFIG, TINY_LAZY + [f"train.init_checkpoint={OFFLINE_URL}"])
    checkpointer = build_checkpointer(instantiate(lazy.model), str(tmp_path))
    with pytest.raises(OSError, match=rf"^train.init_checkpoint='{OFFLINE_URL}' cannot be down"):
        resume_or_load(lazy, checkpointer, None, None, False, None, None, False)
    image = write_image(tmp_path / "a.jpg")
    proc = call_tool(
        "predict",
        "--config-file",
        CLS_CONFIG,
        "--input",
        image,
        *TINY_PREDICT_CLS,
        "MODEL.WEIGHTS",
        OFFLINE_URL,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: MODEL.WEIGHTS='{OFFLINE_URL}' cannot be downloaded ({reason}): without network "
        "access, download it elsewhere and set MODEL.WEIGHTS to the local file"
    )


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


def test_freeze_at_without_weights_is_an_error(cls_data_root, tmp_path):
    cfg = make_cfg(tiny_opts(cls_data_root, tmp_path, **{"MODEL.BACKBONE.FREEZE_AT": 2}))
    trainer = ClassificationTrainer(cfg)
    with pytest.raises(ValueError, match="FREEZE_AT=2 freezes .* MODEL.WEIGHTS is empty"):
        trainer.resume_or_load(resume=False)


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


def test_resume_falls_back_to_the_newest_intact_checkpoint(
    trained, cls_data_root, tmp_path, caplog
):
    out = copy_run(trained, tmp_path / "run")
    (out / "model_final.pth").write_bytes(b"truncated")
    trainer = ClassificationTrainer(make_cfg(tiny_opts(cls_data_root, out, epochs=5)))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 3  # model_0000002.pth, the newest intact one
    assert "model_0000002.pth instead of the last checkpoint" in caplog.text


# The tests below share the module-scoped `trained` run (a 3-iteration training) with the
# resume tests above, so they live here although OUTPUT_DIR (engine/output_dir.py) and the
# file mode atomic writes give (utils/atomic.py) are what they check.


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
