"""The GPU check's parts (benchmarks/speed.py), on CPU: profile categories, layouts, train-step."""

import json
import os

import pytest
import torch
from torch import nn

from benchmarks import speed
from benchmarks.speed import IDLE, busy_time, categorize, summarize
from randwire_d2.data.cls_demo import generate_classification_demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DW = [[8, 64, 56, 56], [64, 1, 3, 3], [], [], [], [], []]  # aten::conv2d's input shapes
PW = [[8, 64, 56, 56], [128, 64, 1, 1], [], [], [], [], []]


def conv_forward(shapes):
    """A cuDNN conv kernel's launching op and its callers, innermost first."""
    ops = ("aten::cudnn_convolution", "aten::_convolution", "aten::convolution", "aten::conv2d")
    return [(op, shapes) for op in ops]


def conv_backward(grad, x, w):
    return [
        ("aten::convolution_backward", [grad, x, w, [], [], [], [], [], [], [], []]),
        ("ConvolutionBackward0", [grad]),
        ("autograd::engine::evaluate_function: ConvolutionBackward0", []),
    ]


@pytest.mark.parametrize(
    "name, chain, expected",
    [
        ("sm90_xmma_fprop", conv_forward(DW), "depthwise conv forward"),
        ("sm90_xmma_fprop", conv_forward(PW), "pointwise conv forward"),
        ("stem", conv_forward([[8, 3, 224, 224], [64, 3, 3, 3]]), "other conv forward"),
        # groups == in_channels == 1 is an ordinary conv of a one-channel image
        ("k", conv_forward([[8, 1, 32, 32], [16, 1, 3, 3]]), "other conv forward"),
        # depthwise 5x5 is not the 3x3 of the node op
        ("k", conv_forward([[8, 64, 32, 32], [64, 1, 5, 5]]), "other conv forward"),
        (
            "dgrad",
            conv_backward([8, 64, 56, 56], [8, 64, 56, 56], [64, 1, 3, 3]),
            "depthwise conv backward",
        ),
        (
            "wgrad",
            conv_backward([8, 128, 56, 56], [8, 64, 56, 56], [128, 64, 1, 1]),
            "pointwise conv backward",
        ),
        # an autograd node alone (no weight shape recorded): a conv, kind unknown
        ("k", conv_backward([8, 4, 8, 8], [], [])[1:], "other conv backward"),
        # the bias gradient's reduction under convolution_backward is the conv's
        (
            "reduce_kernel",
            [("aten::sum", [[8, 128, 56, 56]])]
            + conv_backward([8, 128, 56, 56], [8, 64, 56, 56], [128, 64, 1, 1]),
            "pointwise conv backward",
        ),
        # autocast's weight cast inside conv2d is a copy: elementwise
        ("copy_kernel", [("aten::copy_", [[64, 1, 3, 3]])] + conv_forward(DW), "elementwise"),
        (
            "bn_fw_tr",
            [("aten::cudnn_batch_norm", [[8, 64, 56, 56]]), ("aten::batch_norm", [])],
            "BN forward",
        ),
        (
            "bn_bw",
            [("aten::cudnn_batch_norm_backward", []), ("CudnnBatchNormBackward0", [])],
            "BN backward",
        ),
        ("bn", [("aten::native_batch_norm", [[8, 64, 56, 56]])], "BN forward"),
        (
            "multi_tensor_apply_kernel",
            [("aten::_foreach_add_", []), ("Optimizer.step#SGD.step", [])],
            "optimizer",
        ),
        ("_agg_relu_dw_fwd_kernel", [("randwire::agg_relu_dw", [])], "fused node kernels forward"),
        (
            "_agg_relu_dw_bwd_kernel",
            [("randwire::agg_relu_dw_backward", []), ("torch::autograd::CppNode", [])],
            "fused node kernels backward",
        ),
        # what a fused op launches besides its kernel (a zero-filled gradient) is the node's
        (
            "fill",
            [("aten::zero_", []), ("randwire::agg_relu_dw_backward", [])],
            "fused node kernels backward",
        ),
        ("_agg_relu_dw_bwd_kernel", [], "fused node kernels backward"),  # launcher unrecorded
        ("vectorized_elementwise_kernel", [("aten::add_", [[8, 64]])], "elementwise"),
        ("elementwise", [("aten::threshold_backward", [])], "elementwise"),
        ("gemm", [("aten::addmm", [[8, 1280], [1000, 1280]])], "other"),
        ("unrolled_elementwise_kernel", [], "elementwise"),
        ("cutlass_gemm", [], "other"),
    ],
)
def test_categorize(name, chain, expected):
    assert categorize(name, chain) == expected


def test_busy_time_is_the_union_of_intervals():
    assert busy_time([]) == 0
    assert busy_time([(0, 2), (1, 3), (5, 6), (5.5, 5.8), (10, 11)]) == pytest.approx(5)


def test_summarize_shares_and_idle_gaps():
    items = [
        ("fprop", conv_forward(DW), 30.0),
        ("fprop", conv_forward(PW), 20.0),
        ("bn", [("aten::native_batch_norm", [])], 10.0),
        ("sgd", [("aten::_foreach_mul_", []), ("Optimizer.step#SGD.step", [])], 15.0),
        ("_agg_relu_dw_fwd_kernel", [("randwire::agg_relu_dw", [])], 5.0),
    ]
    rows = summarize(items, wall=100.0)  # busy: the items' sum, 80
    assert rows["depthwise conv forward"] == {"time": 30.0, "share": 0.3, "count": 1}
    assert rows["optimizer"]["time"] == 15.0
    assert rows["fused node kernels forward"]["time"] == 5.0
    assert rows[IDLE]["time"] == pytest.approx(20.0)
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)
    # on a device: idle = wall - the union of the kernel intervals
    rows = summarize(items, wall=100.0, busy=busy_time([(0, 50), (40, 90)]))
    assert rows[IDLE]["time"] == pytest.approx(10.0)
    assert list(rows)[-1] == IDLE and "other" not in rows


def test_a_real_cpu_profile_is_categorized_by_weight_shape(one_thread):
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 1, bias=False),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(2, 8, 16, 16)

    def step():
        model(x).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    with torch.profiler.profile(record_shapes=True) as prof:
        step()
    items, busy = speed.profiled_items(prof, cuda=False)
    rows = summarize(items, wall=1e9)
    for category in (
        "depthwise conv forward",
        "depthwise conv backward",
        "pointwise conv forward",
        "pointwise conv backward",
        "BN forward",
        "BN backward",
        "optimizer",
    ):
        assert rows[category]["time"] > 0, category
    assert not any(c.startswith("other conv") for c in rows), rows


@pytest.mark.slow
def test_layouts_runs_on_cpu(tmp_path, capsys, one_thread):
    out = tmp_path / "layouts.json"
    argv = "layouts --device cpu --dtypes fp32 --batch 2 --rounds 1 --models rw-c78 r50 --size 32"
    rows = speed.main(argv.split() + ["--json", str(out)])
    printed = capsys.readouterr().out
    assert "| model | layout | dtype | inference img/s | ÷ ResNet-50 |" in printed
    assert "fastest rw-c78 training: " in printed
    assert {(r["name"], r["layout"]) for r in rows} == {
        (m, layout) for m in ("rw-c78", "r50") for layout in ("NCHW", "channels_last")
    }
    saved = json.loads(out.read_text())
    r50 = [r for r in saved["rows"] if r["name"] == "r50"]
    assert all(r["train_ratio"] == pytest.approx(1.0) for r in r50)
    assert saved["fastest"][0].startswith("fastest rw-c78 training")


@pytest.mark.slow
def test_train_step_runs_on_cpu(tmp_path, capsys, one_thread):
    data = generate_classification_demo(str(tmp_path / "data"), {"train": 4, "val": 2}, 32)
    out = tmp_path / "train_step.json"
    # fmt: off
    opts = [
        "MODEL.DEVICE", "cpu", "MODEL.RANDWIRE.NUM_NODES", "6", "MODEL.RANDWIRE.CHANNELS", "8",
        "MODEL.CLASSIFIER.HEAD_CHANNELS", "32", "SOLVER.IMS_PER_BATCH", "4",
        "PRETRAIN.DATA_ROOT", data, "PRETRAIN.TRAIN_CROP", "32", "PRETRAIN.TEST_CROPS", "[32]",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out"),
    ]
    # fmt: on
    status = speed.main(
        [
            "train-step",
            "--config-file",
            os.path.join(REPO, "configs", "demo", "randwire_cls_demo.yaml"),
        ]
        + ["--iters", "2", "--warmup", "1", "--json", str(out)]
        + ["--compare", "MODEL.RANDWIRE.EXECUTION", "reference", "fast", "--loss-tol", "1e-4"]
        + opts
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "| run | img/s (median) | step ms (median) | warm-up s | build s |" in printed
    assert "end-to-end ÷ model-only" in printed
    result = json.loads(out.read_text())
    assert len(result["runs"]) == 4 and result["batch"] == 4
    for run in result["runs"]:
        assert len(run["step_s"]) == len(run["losses"]) == 3
        assert run["img_per_s"] > 0
    # one batch repeated vs the real loader: the same first batch, the same first loss
    first = {r["run"]: r["losses"][0] for r in result["runs"] if "reference" in r["variant"]}
    assert first["model-only"] == pytest.approx(first["end-to-end"])
    assert set(result["ratios"]) == {
        f"MODEL.RANDWIRE.EXECUTION={e} end-to-end/model-only" for e in ("reference", "fast")
    }
    for cmp in result["compare"].values():  # the fast execution computes the same function
        assert cmp["iterations"] == 3 and cmp["within_tol"]
    # OUTPUT_DIR given: kept, one metrics file per run
    assert sorted(os.listdir(tmp_path / "out"))[-2:] == ["metrics_e2e.json", "metrics_model.json"]


def test_cuda_kernels_are_charged_to_their_launching_ops():
    """profiled_items on CUDA-like events: a kernel goes to its launching op's chain; one
    launched outside any op is categorized by its name; busy is the union of kernel times."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import Interval, Kernel

    def event(id, name, device, start, end, parent=None, shapes=(), kernels=(), linked=0):
        return SimpleNamespace(
            id=id, name=name, device_type=device, time_range=Interval(start, end),
            cpu_parent=parent, input_shapes=list(shapes), kernels=list(kernels),
            linked_correlation_id=linked, is_async=False, cpu_children=[],
        )  # fmt: skip

    cpu, cuda = DeviceType.CPU, DeviceType.CUDA
    conv2d = event(1, "aten::conv2d", cpu, 0, 5, shapes=DW)
    cudnn = event(2, "aten::cudnn_convolution", cpu, 1, 4, conv2d, DW, [Kernel("fprop", 0, 10)])
    prof = SimpleNamespace(
        events=lambda: [
            conv2d,
            cudnn,
            event(3, "fprop", cuda, 10, 20, linked=2),
            event(4, "_agg_relu_dw_fwd_kernel", cuda, 15, 30, linked=0),
        ]
    )
    items, busy = speed.profiled_items(prof, cuda=True)
    assert busy == 20
    rows = summarize(items, wall=40.0, busy=busy)
    assert rows["depthwise conv forward"]["time"] == 10
    assert rows["fused node kernels forward"]["time"] == 15
    assert rows[IDLE]["time"] == 20


def test_benchmark_sizes_are_bounded():
    """Every size a benchmark flag sets is checked: a value out of range is refused naming it."""
    import argparse

    from randwire_d2.utils.args import bounded_int

    parse = bounded_int(1, 4096)
    assert parse("128") == 128
    for bad, msg in [("0", "0 is invalid: expected 1..4096"), ("1e9", "is not an integer")]:
        with pytest.raises(argparse.ArgumentTypeError, match=msg):
            parse(bad)
