"""randwire_d2/engine/pretrain.py's setup and engine/schedule.py: epochs and SOLVER keys."""

import pytest
import torch
from common import CLS_CONFIG, call_tool, load_tool, make_cfg, read_metrics, tiny_opts

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(*args):
    """tools/train_cls.py ARGS in-process, which must succeed; its output."""
    proc = call_tool("train_cls", *args, check=True)
    return proc.stdout + proc.stderr


def test_explicit_solver_keys_win_over_the_epoch_schedule(cls_data_root, tmp_path, caplog):
    train_cls = load_tool("train_cls")
    opts = tiny_opts(cls_data_root, tmp_path, epochs=50)
    opts += ["SOLVER.MAX_ITER", "7", "SOLVER.BASE_LR", "0.01", "SOLVER.CHECKPOINT_PERIOD", "3"]
    args = train_cls.build_parser().parse_args(["--config-file", CLS_CONFIG, "--dry-run", *opts])
    cfg = train_cls.setup(args, world_size=1).cfg
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
