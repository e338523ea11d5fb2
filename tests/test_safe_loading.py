"""Data is not code: weights files and yaml configs never run what they hold; every shipped yaml
loads the plain Detectron2 way."""

import glob
import os
import pickle

import numpy as np
import pytest
import torch
from common import DET_CONFIG, LAZY_DET_CONFIG, REPO, TINY_DET, TINY_LAZY, tiny_cfg
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import randwire_d2
from randwire_d2.checkpoint import CheckpointError, read_pickled_weights
from randwire_d2.config import UnsafeConfigError, load_config, load_lazy_config
from randwire_d2.engine import argument_parser, build_checkpointer

YAMLS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))


class _Payload:
    """Unpickling this creates `marker`: what a malicious weights file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil_pkl(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:  # as a model-zoo file would look, with the payload inside
        pickle.dump({"model": {"w": _Payload(str(marker))}, "__author__": "x"}, f)
    return str(path), marker


def test_a_pkl_payload_never_runs_in_any_weights_loader(evil_pkl, tmp_path):
    path, marker = evil_pkl
    detector = build_model(tiny_cfg())
    baseline = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1))  # no trunk: the baselines' loader
    for model in (detector, baseline):
        with pytest.raises(CheckpointError, match=r"asks for posix\.system.*could run code"):
            build_checkpointer(model, "", strict=True).load(path, checkpointables=[])
        assert not marker.exists()
    # predict and export load through the same strict checkpointer
    from randwire_d2.inference_setup import load_model
    from randwire_d2.predict import build_predictor, setup_cfg

    cfg = tiny_cfg("MODEL.WEIGHTS", path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_model(cfg)
    with pytest.raises(CheckpointError, match="could run code"):
        build_predictor(setup_cfg(DET_CONFIG, TINY_DET + ["MODEL.WEIGHTS", path]))
    # the LazyConfig tool's --eval-only
    from randwire_d2.checkpoint import load_for_eval
    from randwire_d2.engine.lazy import build_model as build_lazy

    lazy = load_lazy_config(
        LAZY_DET_CONFIG,
        TINY_LAZY
        + [
            f"train.init_checkpoint={path}",
            f"train.output_dir={tmp_path / 'lazy'}",
            "train.device=cpu",
        ],
    )
    with pytest.raises(CheckpointError, match="could run code"):
        load_for_eval(lazy, build_lazy(lazy), resume=False)
    assert not marker.exists()


def test_model_zoo_pkl_of_numpy_arrays_still_loads(tmp_path):
    source = build_model(tiny_cfg())
    state = {k: v.numpy() for k, v in source.state_dict().items()}
    path = str(tmp_path / "zoo.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "test", "step": np.float32(3)}, f, protocol=2)
    assert all(isinstance(v, np.ndarray) for v in read_pickled_weights(path)["model"].values())
    target = build_model(tiny_cfg())
    build_checkpointer(target, "", strict=True).load(path, checkpointables=[])
    for k, v in source.state_dict().items():
        assert torch.equal(v, target.state_dict()[k]), k


def test_a_yaml_config_with_a_python_tag_is_refused_unless_allowed(tmp_path):
    marker = tmp_path / "yaml_payload_ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(
        f"_BASE_: {os.path.join(REPO, 'configs/demo/faster_rcnn_randwire_demo.yaml')}\n"
        "MODEL:\n  RANDWIRE:\n    GENERATOR_PARAMS:\n"
        f"      X: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    leaf = tmp_path / "leaf.yaml"  # an unsafe file anywhere in the _BASE_ chain
    leaf.write_text(f"_BASE_: {evil}\nSEED: 3\n")
    for config in (evil, leaf):
        with pytest.raises(UnsafeConfigError, match=r"evil\.yaml.*line 5.*--allow-unsafe-config"):
            load_config(str(config))
        assert not marker.exists()
    args = argument_parser().parse_args(["--config-file", str(evil), "--allow-unsafe-config"])
    assert args.allow_unsafe_config
    load_config(str(evil), allow_unsafe=True)  # the opt-in runs it, as Detectron2 would
    assert marker.exists()


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_shipped_yaml_loads_the_plain_detectron2_way(path):
    cfg = get_cfg()
    randwire_d2.add_randwire_config(cfg)
    cfg.merge_from_file(path)  # the idiom every Detectron2 user types first
    ours = load_config(path)
    assert cfg.dump() == ours.dump()


def test_a_saved_lazy_config_builds_only_known_targets(tmp_path):
    """A lazy run's saved config.yaml is data: a `_target_` outside the model, data and solver
    packages (here os.system) is refused before anything is built, unless
    --allow-unsafe-config; predict and export load such files."""
    import yaml

    from randwire_d2.config import UnsafeConfigError
    from randwire_d2.inference_setup import load_any_config

    marker = tmp_path / "ran"
    config = tmp_path / "config.yaml"
    saved = {
        "model": {"_target_": "os.system", "command": f"touch {marker}"},
        "train": {"init_checkpoint": "", "device": "cpu"},
        "dataloader": {"test": {"dataset": {"names": "x"}}},
    }
    config.write_text(yaml.safe_dump(saved))
    with pytest.raises(UnsafeConfigError, match=r"_target_ 'os.system' at model: .*--allow-unsafe"):
        load_any_config(str(config))
    cfg = load_any_config(str(config), allow_unsafe=True)  # loaded, not built
    assert cfg.model._target_ == "os.system" and not marker.exists()
