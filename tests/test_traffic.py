"""benchmarks/traffic.py: the byte and kernel counts of known ops, views, tiny RandWire models,
and the issue's table (ResNet-50 and RandWire-C109, bf16) on the meta device."""

import json

import pytest
import torch
from common import tiny_cls_cfg as tiny_cfg
from detectron2.modeling import build_model
from torch import nn

import benchmarks.traffic as tr
from randwire_d2.modeling.classifier import ClassifierLogits


def nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def tiny_randwire(execution="fast", nodes=8):
    cfg = tiny_cfg("small")
    cfg.MODEL.RANDWIRE.NUM_NODES = nodes
    cfg.MODEL.RANDWIRE.EXECUTION = execution
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return ClassifierLogits(build_model(cfg), normalize=False)


@pytest.mark.parametrize("granularity", ["eager", "conv"])
def test_a_lone_convolution_moves_its_input_weight_and_output_once(granularity):
    conv = nn.Conv2d(3, 4, 3, bias=False)
    got = tr.traffic(conv, batch=2, size=8, dtype="fp32", granularity=granularity, details=True)
    x, w, y = torch.empty(2, 3, 8, 8), conv.weight, torch.empty(2, 4, 6, 6)
    assert got["kernels_per_step"] == 1
    assert got["bytes_per_step"] == nbytes(x, w, y)
    assert got["bytes_per_image"] == nbytes(x, w, y) / 2
    assert list(got["by_op"]) == ["aten.convolution.default"]


def test_views_and_allocations_move_nothing_and_data_movers_count():
    x = torch.empty(4, 6, 8, device="meta")
    with tr.TrafficCounter("eager", "meta") as c:
        x.view(24, 8).t().unsqueeze(0).squeeze(0)
        x.transpose(0, 1).permute(2, 0, 1)
        x[:, 1:3].select(0, 1)
        x.detach().expand(2, 4, 6, 8)
        x.split(2)
        x.unbind(0)
        x.reshape(24, 8)  # contiguous: a view
        torch.empty_like(x)
        x.size(), x.dtype
    assert (c.kernels, c.bytes, c.by_op) == (0, 0, {})
    n = nbytes(x)
    with tr.TrafficCounter("eager", "meta") as c:
        x.transpose(0, 1).reshape(6, 32)  # not viewable: a copy
    assert (c.kernels, c.bytes) == (1, 2 * n)
    cases = [
        (lambda: x.add_(1), 2 * n),  # reads and writes x
        (lambda: x + x, 3 * n),
        (lambda: x.clone(), 2 * n),
        (lambda: x.relu(), 2 * n),
        (lambda: torch.empty_like(x).copy_(x), 2 * n),  # dst is written, not read
        (lambda: x.zero_(), n),
        (lambda: torch.zeros_like(x), n),
        (lambda: x.to(torch.bfloat16), n + n // 2),
    ]
    for fn, expected in cases:
        with tr.TrafficCounter("eager", "meta") as c:
            fn()
        assert (c.kernels, c.bytes) == (1, expected)
    with tr.TrafficCounter("conv", "meta") as c:  # no conv or matmul: nothing
        x.relu().add_(1)
    assert (c.kernels, c.bytes) == (0, 0)


def test_host_side_ops_of_a_meta_run_are_not_counted():
    with tr.TrafficCounter("eager", "meta") as c:
        torch.rand(2).tolist()
    assert c.kernels == 0


@pytest.mark.slow
def test_tiny_randwire_conv_granularity_below_eager_and_training_above_inference():
    got = {
        (train, g): tr.traffic(tiny_randwire(), batch=2, size=32, train=train, granularity=g)
        for train in (False, True)
        for g in ("eager", "conv")
    }
    for train in (False, True):
        eager, conv = got[train, "eager"], got[train, "conv"]
        assert 0 < conv["bytes_per_image"] < eager["bytes_per_image"]
        assert 0 < conv["kernels_per_step"] < eager["kernels_per_step"]
    for g in ("eager", "conv"):
        assert got[True, g]["bytes_per_image"] > 2 * got[False, g]["bytes_per_image"]
        assert got[True, g]["kernels_per_step"] > got[False, g]["kernels_per_step"]
    # Deterministic although a training step draws edges to remove (seeded inside traffic()).
    again = tr.traffic(tiny_randwire(), batch=2, size=32, train=True)
    assert again == got[True, "eager"]


@pytest.mark.slow
def test_fused_execution_counts_its_custom_ops_and_moves_less():
    for train in (False, True):
        fused = tr.traffic(
            tiny_randwire("triton"),
            batch=2,
            size=32,
            train=train,
            granularity="fused",
            details=True,
        )
        eager = tr.traffic(tiny_randwire(), batch=2, size=32, train=train)
        assert any(op.startswith("randwire.") for op in fused["by_op"])
        assert fused["bytes_per_image"] < eager["bytes_per_image"]


@pytest.mark.slow
def test_resnet50_reproduces_the_issue_table():
    """bf16, per image at batch 2, MB = 1e6, kernels per step: 188 MB / 174 kernels (inference),
    69 MB (conv granularity), 470 MB / 407 kernels (training step without the optimizer)."""
    run = dict(batch=2, size=224, dtype="bf16")
    infer = tr.traffic(tr.resnet50(), **run)
    assert infer["kernels_per_step"] == 174
    assert infer["bytes_per_image"] / 1e6 == pytest.approx(188, rel=0.02)
    conv = tr.traffic(tr.resnet50(), granularity="conv", **run)
    assert conv["bytes_per_image"] / 1e6 == pytest.approx(69, rel=0.02)
    train = tr.traffic(tr.resnet50(), train=True, **run)
    assert train["kernels_per_step"] == pytest.approx(407, abs=2)
    assert train["bytes_per_image"] / 1e6 == pytest.approx(470, rel=0.02)


@pytest.mark.slow
def test_randwire_c109_reference_reproduces_the_issue_table():
    """The issue's C109 eager numbers (553 MB / 937 kernels inference, 1468 MB / 2666 kernels
    training) are those of the reference execution at batch 2."""
    run = dict(batch=2, size=224, dtype="bf16")
    infer = tr.traffic(tr.randwire_model(execution="reference"), **run)
    assert infer["kernels_per_step"] == pytest.approx(937, rel=0.01)
    assert infer["bytes_per_image"] / 1e6 == pytest.approx(553, rel=0.02)
    conv = tr.traffic(tr.randwire_model(execution="reference"), granularity="conv", **run)
    assert conv["bytes_per_image"] / 1e6 == pytest.approx(154, rel=0.02)


@pytest.mark.slow
def test_main_prints_the_table_and_writes_json(tmp_path, capsys):
    cfg = tiny_cfg("small")
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.dump())
    out = tmp_path / "t.json"
    tr.main(["--config", str(config), "--batch", "2", "--size", "32", "--json", str(out)])
    printed = capsys.readouterr().out
    assert sum(line.startswith("|") for line in printed.splitlines()) == 2 + len(tr.ROWS)
    assert sum("(eager)" in line for line in printed.splitlines()) == 2  # R50 in the fused rows
    rows = json.loads(out.read_text())["rows"]
    assert [r["granularity"] for r in rows] == [g for _, _, g in tr.ROWS]
    assert rows[0]["ratio"] == pytest.approx(
        rows[0]["r50"]["bytes_per_image"] / rows[0]["randwire"]["bytes_per_image"]
    )
