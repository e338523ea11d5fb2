"""randwire_d2/complexity.py: FLOPs and params in closed form, against fvcore and Tables 2-3."""

import glob
import json
import logging
import os

import pytest
from torch import nn

import randwire_d2.complexity as complexity
from randwire_d2.complexity import (
    analytic_by_stage,
    analytic_complexity,
    find_channels,
    flops_by_stage,
    model_complexity,
    parse_count,
    seed_statistics,
)
from randwire_d2.config import load_config
from randwire_d2.modeling import NODE_OPS, register_node_op
from randwire_d2.modeling.ops import norm_layer
from randwire_d2.modeling.randwire import wiring_from_cfg

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


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(json.load(open(TABLE))))
def test_frozen_flops_and_params(path, one_thread):
    entry = json.load(open(TABLE))[path]
    flops, params = model_complexity(load(path), entry["input_size"])
    assert (flops, params) == (entry["flops"], entry["params"])


@pytest.fixture
def no_trace(monkeypatch):
    """Fail if anything is built (the closed form needs no model)."""

    def refuse(cfg):
        raise AssertionError("the closed form built a model")

    monkeypatch.setattr(complexity, "build_model", refuse)


@pytest.mark.parametrize("path", sorted(json.load(open(TABLE))))
def test_closed_form_equals_the_frozen_table(path, no_trace):
    # The table is fvcore's count of the sep_conv3x3 configs (test_frozen_flops_and_params).
    entry = json.load(open(TABLE))[path]
    assert analytic_complexity(load(path), entry["input_size"]) == (entry["flops"], entry["params"])


def traced_by_stage(cfg, input_size):
    return flops_by_stage(complexity._build_on_cpu(cfg), input_size)


@pytest.fixture
def no_weight_init(monkeypatch):
    """fvcore counts shapes, not values: skip initializing the convs (a 3x3-conv node op makes
    C=154 a 520M-parameter model)."""
    monkeypatch.setattr(nn.Conv2d, "reset_parameters", lambda self: None)


IMAGENET = sorted(glob.glob("configs/imagenet/*.yaml"))
OTHER_OPS = sorted(op for op in NODE_OPS if op != "sep_conv3x3")  # sep_conv3x3: the table
C78 = "configs/imagenet/randwire_ws_c78_small.yaml"


@pytest.mark.slow
@pytest.mark.parametrize("op", OTHER_OPS)
@pytest.mark.parametrize("path", IMAGENET)
def test_closed_form_equals_fvcore_for_every_node_op(path, op, one_thread, no_weight_init):
    cfg = load(path)
    cfg.MODEL.RANDWIRE.NODE_OP = op
    # 224 for C78; 64 for the others, where a 3x3 conv node would make 67 GFLOPs to run
    # (C=154) and the input size only changes the sides the stages count positions of.
    size = 224 if path == C78 else 64
    assert analytic_by_stage(cfg, size) == traced_by_stage(cfg, size)


# Small networks, so that fvcore traces them in a blink; 37 -> 19 -> 10 -> 5 -> 3 (-> 2): odd
# sides round up as the convs and pools do.
SMALL = ["MODEL.RANDWIRE.NUM_NODES", "10", "MODEL.RANDWIRE.CHANNELS", "9"]
SMALL += ["MODEL.CLASSIFIER.HEAD_CHANNELS", "24", "MODEL.CLASSIFIER.NUM_CLASSES", "7"]
EDGE_CASES = {
    # A ring (WS K=2, P=0): every node but the last has in-degree 1 (no aggregation weight).
    "in-degree 1": ["MODEL.RANDWIRE.WS_K", "2", "MODEL.RANDWIRE.WS_P", "0.0"],
    "ER(0.9)": ["MODEL.RANDWIRE.GENERATOR", "er", "MODEL.RANDWIRE.ER_P", "0.9"],
    "WS(8, 0)": ["MODEL.RANDWIRE.WS_K", "8", "MODEL.RANDWIRE.WS_P", "0.0"],
    "BA(7) conv3x3": ["MODEL.RANDWIRE.GENERATOR", "ba", "MODEL.RANDWIRE.BA_M", "7"]
    + ["MODEL.RANDWIRE.NODE_OP", "conv3x3"],
    "regular C=3 max-pool": ["MODEL.RANDWIRE.REGIME", "regular", "MODEL.RANDWIRE.CHANNELS", "3"]
    + ["MODEL.RANDWIRE.NODE_OP", "max_pool3x3_conv1x1"],
    "GN avg-pool": ["MODEL.RANDWIRE.NORM", "GN", "MODEL.RANDWIRE.NODE_OP", "avg_pool3x3_conv1x1"],
    "FrozenBN": ["MODEL.RANDWIRE.NORM", "FrozenBN"],
    "SyncBN": ["MODEL.RANDWIRE.NORM", "SyncBN"],
    "FREEZE_AT 3": ["MODEL.BACKBONE.FREEZE_AT", "3"],
    "regular FREEZE_AT 5 GN": ["MODEL.RANDWIRE.REGIME", "regular", "MODEL.BACKBONE.FREEZE_AT", "5"]
    + ["MODEL.RANDWIRE.NORM", "GN"],
    # The head reads conv3; conv4 and conv5 run for outputs the logits drop (no traced FLOPs).
    "head on conv3": ["MODEL.RANDWIRE.OUT_FEATURES", "['conv5', 'conv3']"],
    "up to conv4": ["MODEL.RANDWIRE.OUT_FEATURES", "['conv4']", "MODEL.RANDWIRE.REGIME", "regular"],
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
@pytest.mark.slow
def test_closed_form_equals_fvcore_on_edge_cases(case, one_thread):
    cfg = load_config(C78, SMALL + EDGE_CASES[case])
    size = 64 if "GN" in case else 37  # GroupNorm needs > 1 value per group at conv5
    assert analytic_by_stage(cfg, size) == traced_by_stage(cfg, size)
    assert analytic_complexity(cfg, size) == model_complexity(cfg, size)


def test_edge_cases_have_the_in_degrees_they_claim():
    def degrees(case):
        cfg = load_config(C78, SMALL + EDGE_CASES[case])
        stage = wiring_from_cfg(cfg)["conv3"]
        return [len(stage.predecessors(v)) for v in range(stage.num_nodes)]

    assert degrees("in-degree 1").count(1) == 8  # node 0 has none, node 9 two
    assert max(degrees("ER(0.9)")) >= 7 and max(degrees("BA(7) conv3x3")) == 7
    assert max(degrees("WS(8, 0)")) == 8


class Said(logging.Handler):
    """The messages of a logger (whether or not it propagates to pytest's caplog)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.slow
def test_a_node_op_the_closed_form_does_not_know_is_traced(monkeypatch, one_thread):
    monkeypatch.setattr(complexity, "_SAID", set())
    said = Said()
    monkeypatch.setattr(complexity.logger, "handlers", [said])

    @register_node_op("test_dilated_conv3x3")
    def dilated(in_channels, out_channels, stride, norm):
        conv = nn.Conv2d(in_channels, out_channels, 3, stride, 2, dilation=2, bias=False)
        return nn.Sequential(
            nn.ReLU(),
            conv,
            nn.Conv2d(out_channels, out_channels, 1),
            norm_layer(norm, out_channels),
        )

    try:
        cfg = load_config(C78, SMALL, freeze=False)
        cfg.MODEL.RANDWIRE.NODE_OP = "test_dilated_conv3x3"
        assert analytic_complexity(cfg, 37) == model_complexity(cfg, 37)
        assert analytic_by_stage(cfg, 37) == traced_by_stage(cfg, 37)
        assert len(said.messages) == 1, said.messages  # once
        assert "NODE_OP='test_dilated_conv3x3'" in said.messages[0]
        assert "counted by an fvcore trace" in said.messages[0]
        # A shipped name whose function was replaced is not the shipped op either.
        monkeypatch.setitem(NODE_OPS, "conv3x3", dilated)
        cfg.MODEL.RANDWIRE.NODE_OP = "conv3x3"
        assert analytic_complexity(cfg, 37) == model_complexity(cfg, 37)
    finally:
        NODE_OPS.pop("test_dilated_conv3x3")


def test_closed_form_refuses_a_bad_input_size():
    cfg = load(C78)
    with pytest.raises(ValueError, match=r"input_size=0 is invalid: expected an integer >= 1"):
        analytic_complexity(cfg, 0)


# Tables 2-3: mean over seeds 1..5, WS(4, 0.75), N = 32, at 224x224 (in closed form, which
# equals fvcore's count: the tests above).
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
    target = seed_statistics(cfg, [1, 2], 64, trace=True)["flops_mean"]
    c, f = find_channels(cfg, target * 1.001, seeds=[1, 2], input_size=64)
    assert c == 20 and f == target


def test_parse_count():
    assert parse_count("583M") == 583e6 and parse_count("4.0B") == 4e9 and parse_count("5e3") == 5e3
    with pytest.raises(ValueError, match="count='lots'"):
        parse_count("lots")
