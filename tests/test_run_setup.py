"""randwire_d2/engine/run_setup.py: the checks every run applies before it builds anything."""

import pytest
import torch
from common import CLS_CONFIG, LAZY_DET_CONFIG, tiny_cfg

from randwire_d2.config import load_config, load_lazy_config
from randwire_d2.engine import check_iterations
from randwire_d2.engine.launch import argument_parser
from randwire_d2.engine.lazy import setup_lazy
from randwire_d2.engine.run_setup import resolve_device

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cuda_to_cpu_fallback_is_said(caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(CLS_CONFIG, ["MODEL.DEVICE", "cuda"], freeze=False)
    resolve_device(cfg)
    assert cfg.MODEL.DEVICE == "cpu"
    assert "MODEL.DEVICE='cuda' but CUDA is not available: using CPU" in caplog.text


@pytest.mark.parametrize("value", [-5, 0, "abc"])
@pytest.mark.slow
def test_iteration_counts_are_checked_for_both_config_systems(value, tmp_path):
    lazy = load_lazy_config(LAZY_DET_CONFIG, [f"train.max_iter={value}"])
    with pytest.raises(ValueError, match=rf"train.max_iter={value!r} is invalid: .*integer >= 1"):
        setup_lazy(lazy, argument_parser().parse_args([]))
    if value != "abc":  # yacs refuses a string for an int key itself, naming it
        cfg = tiny_cfg("SOLVER.MAX_ITER", value)
        with pytest.raises(ValueError, match=rf"SOLVER.MAX_ITER={value} is invalid"):
            check_iterations(cfg)
    lazy = load_lazy_config(LAZY_DET_CONFIG, ["train.checkpointer.period=0"])
    with pytest.raises(ValueError, match=r"train.checkpointer.period=0 is invalid"):
        check_iterations(lazy)
    check_iterations(load_lazy_config(LAZY_DET_CONFIG))
    check_iterations(tiny_cfg())
