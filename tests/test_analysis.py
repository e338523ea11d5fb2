"""randwire_d2/analysis.py and visualize.py: graph damage (Fig. 5), generator statistics, drawings."""

import os

import pytest
import torch
from common import load_tool

from randwire_d2.analysis import (
    compare_generators,
    graph_damage,
    remove_edge,
    remove_node,
    summarize_damage,
)
from randwire_d2.graphs import NetworkWiring, StageWiring, graph_statistics
from randwire_d2.modeling import RandWire
from randwire_d2.visualize import draw_network

# 0 -> 2, 1 -> 2, 2 -> 3, 1 -> 4: inputs {0, 1}, outputs {3, 4}.
W = StageWiring(5, ((0, 2), (1, 2), (2, 3), (1, 4)))


def trunk():
    """In float64: the stage (fast execution, norms folded) and the node-by-node expectation
    sum in different orders, which in float32 differ by a CPU's rounding."""
    torch.manual_seed(0)
    net = NetworkWiring({"conv3": W, "conv4": W, "conv5": W})
    return RandWire(wiring=net, channels=8, out_features=["conv3", "conv5"]).eval().double()


def test_remove_edge_feeds_zeros_and_is_undone():
    t = trunk()
    st = t.conv3
    x = torch.randn(1, 8, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        before = st(x)
        with remove_edge(t, "conv3", (0, 2)):
            damaged = st(x)
            n1 = st.nodes[1]([x])
            n2 = st.nodes[2].transform(torch.sigmoid(st.nodes[2].weight[1]) * n1)
            expected = (st.nodes[3]([n2]) + st.nodes[4]([n1])) / 2
        after = st(x)
    assert torch.allclose(damaged, expected, atol=1e-6)
    assert not torch.allclose(damaged, before)
    assert torch.equal(after, before)
    with pytest.raises(ValueError, match=r"edge=\(0, 3\) is not in stage conv3"):
        with remove_edge(t, "conv3", (0, 3)):
            pass
    with pytest.raises(ValueError, match=r"stage='conv2' is not a random stage"):
        with remove_edge(t, "conv2", (0, 2)):
            pass


def test_remove_node_zeroes_its_output():
    t = trunk()
    st = t.conv3
    x = torch.randn(1, 8, 16, 16, dtype=torch.float64)
    with torch.no_grad(), remove_node(t, "conv3", 4):
        n1 = st.nodes[1]([x])
        n2 = st.nodes[2]([st.nodes[0]([x]), n1])
        expected = (st.nodes[3]([n2]) + 0) / 2
        assert torch.allclose(st(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"node=5 is invalid"):
        with remove_node(t, "conv3", 5):
            pass


def test_graph_damage_covers_every_node_and_edge():
    t = trunk()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    ref = t(x)["conv5"]
    evaluate = lambda: -float((t(x)["conv5"] - ref).abs().mean())  # noqa: E731
    with torch.no_grad():
        res = graph_damage(t, evaluate, stages=["conv5"])
    assert res["baseline"] == 0.0
    assert [(n, v) for n, v, _, _ in res["nodes"]] == [("conv5", v) for v in range(5)]
    assert [e for _, e, _, _ in res["edges"]] == list(W.edges)
    assert all(d < 0 for *_, d in res["nodes"])  # every removal changes the output
    assert [deg for _, _, deg, _ in res["edges"]] == [2, 2, 1, 1]
    summary = summarize_damage(res["edges"])
    assert set(summary) == {1, 2} and summary[2]["count"] == 2


def test_compare_generators_and_statistics():
    rows = compare_generators(
        [("ws", {"K": 4, "P": 0.0}), ("ba", {"M": 2})], num_nodes=10, seeds=[1, 2]
    )
    assert rows[0]["generator"] == "WS(4, 0.0)" and rows[0]["edges"] == (20.0, 0.0)
    assert rows[0]["input_nodes"] == (1.0, 0.0)  # the ring lattice has one input node
    assert rows[1]["edges"] == (16.0, 0.0) and rows[1]["input_nodes"] == (2.0, 0.0)
    st = graph_statistics(W)
    assert st["components"] == 1 and st["depth"] == 4 and st["max_in_degree"] == 2


@pytest.mark.slow
def test_draw_and_tools(tmp_path, capsys):
    path = draw_network(NetworkWiring({"conv3": W}), str(tmp_path / "w.png"))
    assert os.path.getsize(path) > 1000
    out = tmp_path / "gen.png"
    argv = ["--generators", "ws:K=4,P=0.75", "er:P=0.2", "--num-nodes", "12", "--seeds", "2"]
    load_tool("compare_generators").main(argv + ["--output", str(out)])
    assert "| WS(4, 0.75) | 24.00 ± 0.00 |" in capsys.readouterr().out
    assert out.stat().st_size > 1000
    argv = ["--config-file", "configs/imagenet/randwire_ws_c109_regular.yaml"]
    argv += ["--output", str(tmp_path / "c109.png"), "--save-wiring", str(tmp_path / "c109.json")]
    load_tool("draw_wiring").main(argv)
    assert NetworkWiring.load(str(tmp_path / "c109.json"))["conv2"].num_nodes == 16


@pytest.mark.slow
def test_graph_damage_tool_on_a_checkpoint(tmp_path, capsys, one_thread):
    from detectron2.modeling import build_model

    from randwire_d2.checkpoint import RandWireCheckpointer
    from randwire_d2.config import load_config
    from randwire_d2.data.cls_demo import generate_classification_demo

    data = generate_classification_demo(
        str(tmp_path / "data"), {"train": 1, "val": 2}, image_size=32
    )
    cfg = load_config("configs/demo/randwire_cls_demo.yaml", ["MODEL.DEVICE", "cpu"])
    RandWireCheckpointer(build_model(cfg), str(tmp_path), cfg=cfg).save("model")
    argv = ["--config-file", "configs/demo/randwire_cls_demo.yaml", "--stages", "conv5"]
    argv += ["--output", str(tmp_path / "damage.png"), "MODEL.WEIGHTS", str(tmp_path / "model.pth")]
    argv += ["PRETRAIN.DATA_ROOT", data, "PRETRAIN.TEST_CROPS", "[28]", "MODEL.DEVICE", "cpu"]
    load_tool("graph_damage").main(argv)
    stdout = capsys.readouterr().out
    assert "baseline top-1:" in stdout and "remove one edge" in stdout
    import json

    damage = json.load(open(tmp_path / "damage.json"))
    w = build_model(cfg).backbone.wiring["conv5"]
    assert len(damage["nodes"]) == w.num_nodes and len(damage["edges"]) == len(w.edges)
    assert (tmp_path / "damage.png").stat().st_size > 1000
