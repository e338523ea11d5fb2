import glob
import json
import os

import pytest

from randwire_d2.complexity import find_channels, model_complexity, parse_count, seed_statistics
from randwire_d2.config import load_config

TABLE = os.path.join(os.path.dirname(__file__), "complexity_table.json")


def load(path):
    return load_config(path, freeze=False)


def classifier_configs():
    paths = sorted(glob.glob("configs/**/*.yaml", recursive=True))
    return [p for p in paths if load(p).MODEL.META_ARCHITECTURE == "RandWireClassifier"]


def test_every_classifier_config_is_frozen():
    with open(TABLE) as f:
        table = json.load(f)
    configs = classifier_configs()
    assert "configs/imagenet/randwire_ws_c78_small.yaml" in configs
    missing = [p for p in configs if p not in table]
    assert (
        not missing
    ), f"{missing}: record them with python tools/analyze_model.py --config-file P --update-table {TABLE}"


@pytest.mark.parametrize("path", sorted(json.load(open(TABLE))))
def test_frozen_flops_and_params(path):
    entry = json.load(open(TABLE))[path]
    flops, params = model_complexity(load(path), entry["input_size"])
    assert (flops, params) == (entry["flops"], entry["params"])


# Tables 2-3: mean over seeds 1..5, WS(4, 0.75), N = 32, at 224x224.
PAPER = [
    ("configs/imagenet/randwire_ws_c78_small.yaml", 583e6, 5.6e6),
    ("configs/imagenet/randwire_ws_c109_regular.yaml", 4.0e9, 31.9e6),
    ("configs/imagenet/randwire_ws_c154_regular.yaml", 7.9e9, 61.5e6),
]


@pytest.mark.parametrize("path,flops,params", PAPER)
def test_paper_complexity_over_seeds_1_to_5(path, flops, params):
    st = seed_statistics(load(path), range(1, 6))
    assert abs(st["flops_mean"] / flops - 1) < 0.03, st["flops_mean"]
    assert abs(st["params_mean"] / params - 1) < 0.04, st["params_mean"]
    # Sec. 3.2: FLOPs deviate about +-2% among instances.
    assert st["flops_std"] / st["flops_mean"] < 0.02
    assert len(set(st["per_seed"].values())) > 1  # seeds give different networks


def test_find_channels_bisection():
    cfg = load("configs/imagenet/randwire_ws_c78_small.yaml")
    measure = lambda c: float(c.MODEL.RANDWIRE.CHANNELS) ** 2  # noqa: E731
    assert find_channels(cfg, 78**2 + 10, measure=measure) == (78, 78.0**2)
    assert find_channels(cfg, 78.6**2, measure=measure)[0] == 79
    with pytest.raises(ValueError, match=r"target_flops=-1"):
        find_channels(cfg, -1, measure=measure)


def test_find_channels_real_model():
    cfg = load("configs/imagenet/randwire_ws_c78_small.yaml")
    cfg.MODEL.RANDWIRE.NUM_NODES = 6
    cfg.MODEL.RANDWIRE.WS_K = 2
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = 10
    cfg.MODEL.CLASSIFIER.HEAD_CHANNELS = 32
    cfg.MODEL.RANDWIRE.CHANNELS = 20
    target = seed_statistics(cfg, [1, 2], 64)["flops_mean"]
    c, f = find_channels(cfg, target * 1.001, seeds=[1, 2], input_size=64)
    assert c == 20 and f == target


def test_parse_count():
    assert parse_count("583M") == 583e6 and parse_count("4.0B") == 4e9 and parse_count("5e3") == 5e3
    with pytest.raises(ValueError, match="count='lots'"):
        parse_count("lots")
