"""randwire_d2/config.py: loading yaml and LazyConfig files, and their overrides."""

import glob
import os

import pytest
from common import CLS_CONFIG, DET_CONFIG, LAZY_DET_CONFIG, REPO, call_tool, load_tool
from detectron2.config import LazyConfig, get_cfg

import randwire_d2
from randwire_d2.config import load_config

YAMLS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_shipped_yaml_loads_the_plain_detectron2_way(path):
    cfg = get_cfg()
    randwire_d2.add_randwire_config(cfg)
    cfg.merge_from_file(path)  # the idiom every Detectron2 user types first
    ours = load_config(path)
    assert cfg.dump() == ours.dump()


def test_a_lazy_runs_saved_config_is_evaluated_by_the_lazy_tool_and_named_by_the_yaml_one(
    tmp_path,
):
    from randwire_d2.config import load_lazy_config

    path = str(tmp_path / "config.yaml")
    LazyConfig.save(LazyConfig.load(LAZY_DET_CONFIG), path)
    cfg = load_lazy_config(path, ["train.device=cpu"])  # what lazyconfig_train_net reads
    assert cfg.train.device == "cpu" and not isinstance(cfg.model._target_, str)
    with pytest.raises(
        ValueError, match=r"is a lazy run's saved LazyConfig .*lazyconfig_train_net"
    ):
        load_config(path)  # train_net / train_cls
    out = call_tool("train_net", "--config-file", path, "--eval-only")
    assert out.returncode != 0 and "tools/lazyconfig_train_net.py" in out.stderr
    with pytest.raises(ValueError, match=r"is a yaml config, not a LazyConfig"):
        load_lazy_config(DET_CONFIG)


HINT = "expected KEY VALUE pairs (options such as --resume go before the overrides)"


@pytest.mark.parametrize(
    "tool, config, late",
    [
        ("train_net", DET_CONFIG, ["--resume"]),
        ("train_net", DET_CONFIG, ["--resume", "--overwrite"]),
        ("train_cls", CLS_CONFIG, ["--eval-only"]),
    ],
)
def test_options_after_the_overrides_are_an_error_that_says_where_they_go(tool, config, late):
    module = load_tool(tool)
    args = module.build_parser().parse_args(
        ["--config-file", config, "MODEL.WEIGHTS", "w.pth", *late]
    )
    with pytest.raises(ValueError) as e:
        module.setup(args)
    assert str(e.value) == f"override {late[0]!r} is invalid: {HINT}"
