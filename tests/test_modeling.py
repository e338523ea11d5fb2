"""randwire_d2/modeling (randwire.py, ops.py, fpn.py): the trunk as Fig. 2 and Table 1 build it."""

import numpy as np
import pytest
import torch
from common import image_batch as batch
from common import tiny_cfg as tiny_detector_cfg
from common import tiny_cls_cfg as tiny_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

from randwire_d2.graphs import NetworkWiring, StageWiring, sample_stages
from randwire_d2.modeling import (
    NODE_OPS,
    Node,
    RandWire,
    WiredStage,
    WiringMismatchError,
    network_wiring,
    ops,
    randwire,
)
from randwire_d2.modeling.randwire import stage_specs, wiring_from_cfg


@pytest.mark.parametrize("regime", ["small", "regular"])
@pytest.mark.parametrize("node_op", sorted(NODE_OPS))
def test_forward_backward_every_regime_and_node_op(regime, node_op):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(regime, node_op))
    model.train()
    loss = model(batch())["loss_cls"]
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), name
    model.eval()
    out = model(batch(3, labels=False))
    assert len(out) == 3
    for o in out:
        assert o["scores"].shape == (5,)
        assert torch.allclose(o["scores"].sum(), torch.tensor(1.0), atol=1e-5)


@pytest.mark.parametrize("generator", ["ws", "er", "ba"])
def test_generators_build(generator):
    model = build_model(tiny_cfg(generator=generator))
    model.train()
    model(batch())["loss_cls"].backward()


@pytest.mark.parametrize(
    "regime,names",
    [
        ("small", ["conv1", "conv2", "conv3", "conv4", "conv5"]),
        ("regular", ["conv1", "conv2", "conv3", "conv4", "conv5"]),
    ],
)
def test_stage_outputs_match_output_shape(regime, names):
    w = network_wiring("ws", 6, 1, regime, K=2, P=0.5)
    trunk = RandWire(wiring=w, channels=8, regime=regime, out_features=names).eval()
    feats = trunk(torch.rand(2, 3, 64, 64))
    assert list(feats) == names
    shapes = trunk.output_shape()
    mult = {"small": [0.5, 1, 1, 2, 4], "regular": [0.5, 1, 2, 4, 8]}[regime]
    for name, m in zip(names, mult):
        assert feats[name].shape[1] == shapes[name].channels == int(8 * m)
        assert 64 // feats[name].shape[-1] == shapes[name].stride
    assert [shapes[n].stride for n in names] == [2, 4, 8, 16, 32]
    # Random stages are where Table 1 says they are.
    wired = list(trunk.wired_stages())
    assert wired == (["conv3", "conv4", "conv5"] if regime == "small" else names[1:])


def test_node_is_sigmoid_weighted_sum_then_relu_conv_bn():
    node = Node(3, 4, 4, 1, "conv3x3", "BN").eval()
    with torch.no_grad():
        node.weight.copy_(torch.tensor([0.0, 1.0, -2.0]))
    xs = [torch.randn(1, 4, 5, 5) for _ in range(3)]
    agg = sum(torch.sigmoid(w) * x for w, x in zip(node.weight, xs))
    assert torch.allclose(node(xs), node.transform(agg))
    relu, conv, bn = node.transform
    assert isinstance(relu, torch.nn.ReLU) and isinstance(bn, torch.nn.BatchNorm2d)
    assert torch.allclose(node(xs), bn(conv(torch.relu(agg))))
    # One input: passed on, no aggregation weight.
    single = Node(1, 4, 4, 1, "conv3x3", "BN").eval()
    assert single.weight is None
    assert torch.allclose(single([xs[0]]), single.transform(xs[0]))


def test_separable_conv_is_depthwise_then_pointwise():
    op = NODE_OPS["sep_conv3x3"](6, 10, 2, "BN")
    relu, (dw, pw), bn = op
    assert dw.groups == 6 and dw.kernel_size == (3, 3) and dw.stride == (2, 2)
    assert pw.kernel_size == (1, 1) and pw.in_channels == 6 and pw.out_channels == 10


def test_stage_wiring_stride_and_unweighted_output_mean():
    # 0 -> 2, 1 -> 2, 2 -> 3, and 1 -> 4: inputs {0, 1}, outputs {3, 4}.
    wiring = StageWiring(5, ((0, 2), (1, 2), (2, 3), (1, 4)))
    # float64: the stage (fast execution, norms folded) and the nodes one by one sum in
    # different orders, which in float32 differ by a CPU's rounding
    stage = WiredStage(wiring, 3, 8, "sep_conv3x3", "BN").eval().double()
    for v, node in enumerate(stage.nodes):
        conv = node.transform[1][0]
        fed_by_input = v in (0, 1)
        assert conv.stride == ((2, 2) if fed_by_input else (1, 1))
        assert conv.in_channels == (3 if fed_by_input else 8)
        assert (node.weight is not None) == (v == 2)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    y = stage(x)
    n0, n1 = stage.nodes[0]([x]), stage.nodes[1]([x])
    n2 = stage.nodes[2]([n0, n1])
    n3, n4 = stage.nodes[3]([n2]), stage.nodes[4]([n1])
    assert torch.allclose(y, (n3 + n4) / 2, atol=1e-6)
    # The extra input/output nodes hold no parameters: the stage's are the nodes'.
    assert sum(p.numel() for p in stage.parameters()) == sum(
        p.numel() for n in stage.nodes for p in n.parameters()
    )


def test_edge_removal_only_into_multi_input_nodes_and_only_in_training():
    wiring = StageWiring(5, ((0, 2), (1, 2), (2, 3), (1, 4)))
    stage = WiredStage(wiring, 3, 8, "sep_conv3x3", "BN").eval()
    assert stage.removable_edges() == [(2, 0), (2, 1)]
    x = torch.randn(1, 3, 16, 16)
    n0, n1 = stage.nodes[0]([x]), stage.nodes[1]([x])
    only_n1 = stage.nodes[2].transform(torch.sigmoid(stage.nodes[2].weight[1]) * n1)
    assert torch.allclose(stage.nodes[2]([n0, n1], removed=0), only_n1, atol=1e-6)

    trunk = RandWire(
        wiring=NetworkWiring({"conv3": wiring, "conv4": wiring, "conv5": wiring}),
        channels=8,
        drop_edge_prob=1.0,
    )
    trunk.train()
    picks = {trunk._sample_removed_edge() for _ in range(50)}
    assert picks <= {(s, e) for s in ("conv3", "conv4", "conv5") for e in [(2, 0), (2, 1)]}
    assert len(picks) > 1
    trunk.eval()
    assert trunk._sample_removed_edge() is None
    trunk.train()
    trunk.drop_edge_prob = 0.0
    assert trunk._sample_removed_edge() is None


def test_freeze_at():
    w = network_wiring("ws", 6, 1, "regular", K=2, P=0.5)
    trunk = RandWire(wiring=w, channels=8, regime="regular", freeze_at=2)
    for name in trunk.stage_names:
        params = list(getattr(trunk, name).parameters())
        frozen = name in ("conv1", "conv2")
        assert all(p.requires_grad != frozen for p in params), name
        has_frozen_bn = any(
            isinstance(m, FrozenBatchNorm2d) for m in getattr(trunk, name).modules()
        )
        assert has_frozen_bn == frozen
    with pytest.raises(ValueError, match=r"FREEZE_AT=6 .*\[0, 5\]"):
        RandWire(wiring=w, channels=8, regime="regular", freeze_at=6)


def test_bad_model_arguments_name_the_value():
    w = network_wiring("ws", 6, 1, "small", K=2, P=0.5)
    with pytest.raises(ValueError, match=r"REGIME='tiny' is unknown"):
        RandWire(wiring=w, channels=8, regime="tiny")
    with pytest.raises(ValueError, match=r"OUT_FEATURES=\['res5'\]"):
        RandWire(wiring=w, channels=8, out_features=["res5"])
    with pytest.raises(ValueError, match=r"wiring has no stage \['conv2'\]"):
        RandWire(wiring=w, channels=8, regime="regular")
    with pytest.raises(ValueError, match=r"NODE_OP='conv5x5' is unknown"):
        RandWire(wiring=w, channels=8, node_op="conv5x5")
    cfg = tiny_cfg()
    cfg.MODEL.CLASSIFIER.DROPOUT = 1.0
    with pytest.raises(ValueError, match=r"DROPOUT=1.0"):
        build_model(cfg)


def test_wiring_travels_with_weights_and_mismatch_raises(tmp_path):
    a = build_model(tiny_cfg(seed=1))
    b = build_model(tiny_cfg(seed=1))
    b.load_state_dict(a.state_dict())  # same wiring: fine
    c = build_model(tiny_cfg(seed=2))
    with pytest.raises(WiringMismatchError, match="trained with wiring"):
        c.load_state_dict(a.state_dict())
    sd = {k: v for k, v in a.state_dict().items() if "wiring_fingerprint" not in k}
    with pytest.raises(WiringMismatchError, match="carry no wiring fingerprint"):
        c.load_state_dict(sd, strict=False)
    # WIRING_FILE rebuilds the same network as the generator keys.
    path = tmp_path / "wiring.json"
    a.backbone.wiring.save(str(path))
    cfg = tiny_cfg(seed=5)
    cfg.MODEL.RANDWIRE.WIRING_FILE = str(path)
    d = build_model(cfg)
    assert d.backbone.wiring.fingerprint() == a.backbone.wiring.fingerprint()
    d.load_state_dict(a.state_dict())


def test_user_generator_from_config():
    from randwire_d2.graphs import GENERATORS, register_generator

    if "star_for_test" not in GENERATORS:

        @register_generator("star_for_test")
        def star(num_nodes, rng, hub):
            return [(min(hub, v), max(hub, v)) for v in range(num_nodes) if v != hub]

    cfg = tiny_cfg(generator="star_for_test")
    cfg.MODEL.RANDWIRE.GENERATOR_PARAMS.hub = 0
    model = build_model(cfg)
    assert model.backbone.wiring["conv3"].input_nodes == [0]
    assert len(model.backbone.wiring["conv3"].edges) == 5


def test_seeded_edge_removal_is_reproducible():
    w = StageWiring(5, ((0, 2), (1, 2), (2, 3), (1, 4)))
    trunk = RandWire(
        wiring=NetworkWiring({"conv3": w, "conv4": w, "conv5": w}), channels=8, drop_edge_prob=0.5
    )
    trunk.train()

    def picks(keys):
        out = []
        for k in keys:
            trunk.seed_edge_removal(k)
            out.append(trunk._sample_removed_edge())
        return out

    keys = [(0, it, 0) for it in range(40)]
    first = picks(keys)
    assert picks(keys) == first  # same (seed, iteration, rank): same removals, as after --resume
    assert None in first and len({p for p in first if p is not None}) > 1  # p = 0.5, several edges
    assert picks([(0, it, 1) for it in range(40)]) != first  # another rank removes other edges


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


def tiny_trunk(drop_edge_prob):
    wiring = sample_stages("ws", {"conv3": 8, "conv4": 8, "conv5": 8}, 1, K=4, P=0.75)
    return RandWire(wiring=wiring, channels=8, regime="small", drop_edge_prob=drop_edge_prob)


# Edge removal (Sec. 4.2) ---------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_edge_removal_only_touches_edges_into_nodes_of_input_degree_above_one():
    trunk = tiny_trunk(drop_edge_prob=1.0).train()
    removable = {(n, e) for n, s in trunk.wired_stages().items() for e in s.removable_edges()}
    torch.manual_seed(0)
    drawn = [trunk._sample_removed_edge() for _ in range(2000)]
    assert all(d is not None for d in drawn)  # p = 1: one edge per minibatch
    for stage, (node, position) in drawn:
        preds = trunk.wired_stages()[stage].preds[node]
        assert len(preds) > 1 and 0 <= position < len(preds)
    # Every eligible edge can be drawn, and no other.
    assert set(drawn) == removable
    single_input = [
        (n, v)
        for n, s in trunk.wired_stages().items()
        for v, p in enumerate(s.preds)
        if len(p) <= 1
    ]
    assert single_input and not {(n, v) for n, (v, _) in drawn} & set(single_input)


@pytest.mark.usefixtures("one_thread")
def test_edge_removal_never_runs_in_eval():
    trunk = tiny_trunk(drop_edge_prob=1.0).eval()
    assert all(trunk._sample_removed_edge() is None for _ in range(200))
    reference = tiny_trunk(drop_edge_prob=0.0).eval()
    reference.load_state_dict(trunk.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(trunk(x)["conv5"], reference(x)["conv5"])


@pytest.mark.usefixtures("one_thread")
def test_edge_removal_probability_and_training_effect():
    trunk = tiny_trunk(drop_edge_prob=0.1).train()
    torch.manual_seed(0)
    rate = np.mean([trunk._sample_removed_edge() is not None for _ in range(4000)])
    assert rate == pytest.approx(0.1, abs=0.02)
    # A removed edge contributes nothing to its target node's aggregation.
    node = Node(3, 4, 4, 1, "sep_conv3x3", "BN").eval()
    xs = [torch.randn(1, 4, 8, 8) for _ in range(3)]
    with torch.no_grad():
        removed = node(xs, removed=1)
        zeroed = node([xs[0], torch.zeros_like(xs[1]), xs[2]])
        assert torch.allclose(removed, zeroed, atol=1e-6)
        assert not torch.allclose(removed, node(xs), atol=1e-4)
