"""User input (wiring files, config keys) fails early with a ValueError naming what is wrong."""

import json

import pytest
import torch
from common import tiny_cfg as tiny_detector_cfg
from common import tiny_cls_cfg as tiny_cfg
from detectron2.modeling import build_model

from randwire_d2.complexity import wiring_stats
from randwire_d2.graphs import NetworkWiring, StageWiring, graph_statistics
from randwire_d2.modeling import RandWire, network_wiring, ops, randwire
from randwire_d2.modeling.randwire import stage_specs, wiring_from_cfg

GOOD = {"num_nodes": 4, "edges": [[0, 1], [0, 2], [1, 3]]}


@pytest.mark.parametrize(
    "stage,match",
    [
        ({"num_nodes": 4, "edges": [[0, 1], [3, 1]]}, r"edge \[3, 1\].*0 <= u < v < 4"),
        ({"num_nodes": 3, "edges": [[0, 1], [1, 2], [2, 0]]}, r"edge \[2, 0\]"),  # a cycle
        ({"num_nodes": 4, "edges": [[2, 2]]}, r"edge \[2, 2\]"),
        ({"num_nodes": 4, "edges": [[0, 4]]}, r"edge \[0, 4\]"),
        ({"num_nodes": 4, "edges": [[0, 1, 2]]}, r"edge \[0, 1, 2\].*pair"),
        ({"num_nodes": 4, "edges": [[0, "1"]]}, r"edge \[0, '1'\]"),
        ({"num_nodes": 4, "edges": [[0, 1], [0, 1]]}, r"edge \[0, 1\] appears twice"),
        ({"num_nodes": 5.5, "edges": []}, r"num_nodes=5.5 .*integer in \[2, 2048\]"),
        ({"num_nodes": "5", "edges": []}, r"num_nodes='5' .*integer in \[2, 2048\]"),
        ({"num_nodes": True, "edges": []}, r"num_nodes=True .*integer in \[2, 2048\]"),
        ({"num_nodes": 1, "edges": []}, r"num_nodes=1 .*integer in \[2, 2048\]"),
        ({"num_nodes": 4}, r"missing 'edges'"),
        ({"edges": []}, r"missing 'num_nodes'"),
        ({"num_nodes": 4, "edges": {"0": 1}}, r"edges=.*list"),
        ([4, [[0, 1]]], r"expected a dict"),
    ],
)
def test_wiring_file_is_strict(tmp_path, stage, match):
    path = tmp_path / "bad_wiring.json"
    path.write_text(json.dumps({"conv3": GOOD, "conv4": stage}))
    with pytest.raises(ValueError, match=r"bad_wiring\.json.*stage 'conv4'.*" + match):
        NetworkWiring.load(str(path))
    with pytest.raises(ValueError, match=r"stage 'conv4'.*" + match):
        NetworkWiring.from_json(path.read_text())


@pytest.mark.parametrize(
    "text,match", [("{", "invalid JSON"), ("[1, 2]", "expected a JSON object")]
)
def test_wiring_file_not_a_wiring(tmp_path, text, match):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"broken\.json.*" + match):
        NetworkWiring.load(str(path))


def test_wiring_file_round_trip_keeps_fingerprint(tmp_path):
    net = network_wiring("ws", 16, 3, "regular", K=4, P=0.75)
    net.save(str(tmp_path / "w.json"))
    back = NetworkWiring.load(str(tmp_path / "w.json"))
    assert back.fingerprint() == net.fingerprint()
    # The generator path still takes undirected pairs in any order.
    assert StageWiring(3, ((2, 0), (1, 0))).edges == ((0, 1), (0, 2))


def test_regular_wiring_rejected_in_small_regime(tmp_path):
    path = str(tmp_path / "regular.json")
    wiring_from_cfg(tiny_cfg("regular")).save(path)
    cfg = tiny_cfg("small")
    cfg.MODEL.RANDWIRE.WIRING_FILE = path
    with pytest.raises(ValueError, match=r"extra stages \['conv2'\].*'conv3', 'conv4', 'conv5'"):
        build_model(cfg)


@pytest.mark.parametrize(
    "regime,num_nodes,low",
    [("small", 1, 2), ("small", 0, 2), ("small", -4, 2), ("small", 5.5, 2), ("regular", 3, 4)],
)
def test_num_nodes_too_small_or_not_integer(regime, num_nodes, low):
    cfg = tiny_cfg(regime, generator="er")
    cfg.MODEL.RANDWIRE.NUM_NODES = num_nodes
    with pytest.raises(
        ValueError, match=rf"MODEL.RANDWIRE.NUM_NODES={num_nodes!r} .*integer >= {low}"
    ):
        build_model(cfg)


def test_num_nodes_minimum_builds():
    assert [n for _, n, _ in stage_specs("regular", 4, 8)] == [2, 4, 4, 4]
    assert [n for _, n, _ in stage_specs("small", 2, 8)] == [2, 2, 2]


def test_unknown_norm():
    with pytest.raises(ValueError, match=r"MODEL.RANDWIRE.NORM='foo' .*'BN'.*'FrozenBN'.*'GN'"):
        ops.norm_layer("foo", 8)
    cfg = tiny_cfg()
    cfg.MODEL.RANDWIRE.NORM = "foo"
    with pytest.raises(ValueError, match="MODEL.RANDWIRE.NORM='foo'"):
        build_model(cfg)
    assert isinstance(ops.norm_layer(torch.nn.BatchNorm2d, 8), torch.nn.BatchNorm2d)


def test_fpn_in_features_not_returned_by_trunk():
    cfg = tiny_detector_cfg()
    cfg.MODEL.RANDWIRE.OUT_FEATURES = ["conv3", "conv4", "conv5"]
    with pytest.raises(
        ValueError, match=r"MODEL.FPN.IN_FEATURES=.*'conv2'.*MODEL.RANDWIRE.OUT_FEATURES"
    ):
        build_model(cfg)
    cfg.MODEL.RANDWIRE.OUT_FEATURES = ["conv2", "conv3", "conv4", "conv5"]
    build_model(cfg)


def test_stages_after_last_out_feature_are_not_built():
    w = network_wiring("ws", 6, 1, "small", K=2, P=0.5)
    full = RandWire(wiring=w, channels=8, out_features=["conv5"])
    trunk = RandWire(wiring=w, channels=8, out_features=["conv2", "conv3"]).eval()
    assert trunk.stage_names == ["conv1", "conv2", "conv3"]
    assert not hasattr(trunk, "conv4") and not hasattr(trunk, "conv5")
    assert not [k for k in trunk.state_dict() if k.startswith(("conv4", "conv5"))]
    assert all(full.state_dict()[k].shape == v.shape for k, v in trunk.state_dict().items())
    assert torch.equal(trunk.wiring_fingerprint, full.wiring_fingerprint)
    feats = trunk(torch.rand(2, 3, 64, 64))
    for name, spec in trunk.output_shape().items():
        assert feats[name].shape == (2, spec.channels, 64 // spec.stride, 64 // spec.stride)
    assert RandWire(wiring=w, channels=8, out_features=["conv1"], freeze_at=2).stage_names == [
        "conv1"
    ]


def test_docs_name_what_exists():
    assert "register_node_op(" in ops.__doc__ and "NODE_OPS.register" not in ops.__doc__
    assert "one builder" not in randwire.build_randwire_backbone.__doc__


def test_wiring_stats_are_graph_statistics():
    w = StageWiring(5, ((0, 2), (1, 2), (2, 3), (1, 4)))
    stats = wiring_stats(NetworkWiring({"conv3": w}))
    assert stats == {"conv3": {"nodes": 5, **graph_statistics(w)}}
