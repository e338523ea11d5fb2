"""The Triton node kernels (run here by Triton's interpreter on CPU tensors) compute the eager
ops' function: forward, every gradient, the fused inference kernel, and whole models with
MODEL.RANDWIRE.EXECUTION "triton" against the reference loop."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from common import close_to_float64 as close64
from common import image_batch as batch
from common import tiny_cls_cfg as tiny_cfg
from common import tiny_trunk
from detectron2.modeling import build_model

from randwire_d2.graphs import StageWiring
from randwire_d2.modeling import execution_path, kernels, wired_stage
from randwire_d2.modeling.randwire import WiredStage

# Triton chose compiled kernels at their definition: they cannot run on CPU tensors here.
assert kernels.INTERPRET, "tests/conftest.py sets TRITON_INTERPRET=1 before randwire_d2 loads"


def node_inputs(k, channels, size, batch=1, layout="contiguous", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    xs = [torch.randn(batch, channels, h, w, generator=g) for _ in range(k)]
    if layout == "channels_last":
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    xs = [x.to(dtype).requires_grad_() for x in xs]
    edge_w = torch.randn(k, generator=g).requires_grad_()
    dw = (torch.randn(channels, 1, 3, 3, generator=g) * 0.5).requires_grad_()
    pw = torch.randn(channels + 3, channels, 1, 1, generator=g) * 0.3
    bias = torch.randn(channels + 3, generator=g)
    return xs, edge_w, dw, pw, bias


def node_grads(fn, leaves, stride):
    """(d, grads of a fixed projection of d) of node function `fn` on `leaves` (xs, w, dw)."""
    *x, w, k = leaves
    d = fn(x, torch.sigmoid(w), k, stride)
    proj = torch.randn(d.shape, generator=torch.Generator().manual_seed(1)).to(d.dtype)
    return d, torch.autograd.grad((d.float() * proj.float()).sum(), leaves)


def kernel_and_eager(xs, edge_w, dw, stride):
    """(d, grads) of the training kernel and of the eager ops, on copies of the same leaves."""
    leaves = xs + [edge_w, dw]
    copies = [t.detach().clone().requires_grad_() for t in leaves]
    return (
        node_grads(kernels.agg_relu_dw, leaves, stride),
        node_grads(kernels.reference_agg_relu_dw, copies, stride),
    )


def eager_float64(xs, edge_w, dw, stride):
    """(d, grads) of the eager ops in float64 on the same leaves: the ground truth."""
    ts = [t.detach().double().requires_grad_() for t in xs + [edge_w, dw]]
    *x, w, k = ts
    d = kernels.reference_agg_relu_dw(x, torch.sigmoid(w), k, stride)
    proj = torch.randn(d.shape, generator=torch.Generator().manual_seed(1))
    return d, torch.autograd.grad((d * proj.double()).sum(), ts)


def close(got, want, tol, what):
    err = (got.float() - want.float()).abs().max().item()
    scale = want.float().abs().max().item() + 1e-6
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol} x {scale:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", range(1, kernels.MAX_SLOTS + 1))
def test_node_kernels_equal_the_eager_ops(one_thread, k, stride, layout):
    # odd sizes and channels (not multiples of any tile), batch 1
    xs, edge_w, dw, pw, bias = node_inputs(k, 7, (9, 6), layout=layout, seed=k)
    (d, grads), (d_ref, grads_ref) = kernel_and_eager(xs, edge_w, dw, stride)
    d64, grads64 = eager_float64(xs, edge_w, dw, stride)
    assert d.shape == d_ref.shape and d.stride() == d_ref.stride()
    close64(d, d_ref, d64, "depthwise output")
    names = [f"input {i}" for i in range(k)] + ["edge weights", "depthwise weight"]
    for g, g_ref, g64, name in zip(grads, grads_ref, grads64, names):
        assert g.shape == g_ref.shape
        close64(g, g_ref, g64, f"gradient of {name}")
    with torch.no_grad():
        z = kernels.agg_relu_dw_pw(
            [x.detach() for x in xs], torch.sigmoid(edge_w), dw, pw, bias, stride
        )
        pw64, bias64 = pw.double(), bias.double()
        z_ref, z64 = F.conv2d(d_ref, pw, bias), F.conv2d(d64, pw64, bias64)
        close64(z, z_ref, z64, "fused inference output")
        z = kernels.agg_relu_dw_pw(
            [x.detach() for x in xs], torch.sigmoid(edge_w), dw, pw, None, stride
        )
        z_ref, z64 = F.conv2d(d_ref, pw), F.conv2d(d64, pw64)
        close64(z, z_ref, z64, "fused inference output without bias")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels", [109, 218])
def test_node_kernels_in_low_precision_at_the_papers_widths(one_thread, dtype, channels):
    # the eager ops in float32 on the same rounded inputs: the kernels accumulate in float32
    xs, edge_w, dw, pw, bias = node_inputs(3, channels, (4, 5), dtype=dtype)
    (d, grads), _ = kernel_and_eager(xs, edge_w, dw, 1)
    xs32 = [x.detach().float().requires_grad_() for x in xs]
    leaves32 = [t.detach().clone().requires_grad_() for t in xs32 + [edge_w, dw]]
    d_ref, grads_ref = node_grads(kernels.reference_agg_relu_dw, leaves32, 1)
    assert d.dtype == dtype and all(g.dtype == dtype for g in grads[:3])
    close(d, d_ref, 1e-2, "depthwise output")
    for g, g_ref in zip(grads, grads_ref):
        close(g, g_ref, 2e-2, "gradient")
    with torch.no_grad():
        z = kernels.agg_relu_dw_pw([x.detach() for x in xs], torch.sigmoid(edge_w), dw, pw, bias, 2)
        z_ref = F.conv2d(
            kernels.reference_agg_relu_dw(xs32, torch.sigmoid(edge_w), dw, 2), pw, bias
        )
    assert z.dtype == dtype
    close(z, z_ref, 2e-2, "fused inference output")


def fp32_trunk(**kw):
    return tiny_trunk("small", "sep_conv3x3", "BN", **kw).float()


def run(model, x, train, key=None):
    model.train(train)
    x = x.clone().requires_grad_(train)
    if key is not None:
        model.seed_edge_removal(key)
    out = model(x)["conv5"]
    grads = {}
    if train:
        g = torch.Generator().manual_seed(2)
        (out * torch.randn(out.shape, generator=g)).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters()} | {"input": x.grad}
    buffers = {n: b.clone() for n, b in model.named_buffers() if b.is_floating_point()}
    return out.detach(), grads, buffers


def assert_as_close(ref32, ref64, got, what):
    """Every value of `got` as close to the float64 `ref64` as `ref32`'s (close64)."""
    assert ref32.keys() == ref64.keys() == got.keys()
    for k in ref32:
        close64(got[k], ref32[k], ref64[k], f"{what} {k}")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_triton_stage_equals_reference(one_thread, train, layout):
    ref = fp32_trunk(drop_edge_prob=1.0 if train else 0.0)
    ref64 = copy.deepcopy(ref).double()
    tri = copy.deepcopy(ref).set_execution("triton")
    x = torch.randn(2, 3, 48, 48)  # stage sides 24, 12, 6, 3 (odd), 2
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    key = (0, 3, 0) if train else None  # training removes the same edge in all three
    (o1, g1, b1), (o2, g2, b2) = run(ref, x, train, key), run(tri, x, train, key)
    o64, g64, b64 = run(ref64, x.double(), train, key)
    close64(o2, o1, o64, "output")
    assert_as_close(g1, g64, g2, "gradient")
    assert_as_close(b1, b64, b2, "BatchNorm buffer")


@pytest.mark.slow
def test_a_node_of_any_in_degree_runs_the_kernels(one_thread):
    """A node with more inputs than kernel slots: the extra inputs ride in one slot."""
    n = kernels.MAX_SLOTS + 4
    wiring = StageWiring(n + 1, tuple((u, v) for v in range(1, n + 1) for u in range(v)))
    torch.manual_seed(0)
    ref = WiredStage(wiring, 4, 6, "sep_conv3x3", "BN", execution="reference")
    with torch.no_grad():
        for node in ref.nodes:
            if node.weight is not None:
                node.weight.normal_()
    tri = copy.deepcopy(ref)
    tri.set_execution("triton")
    ref64 = copy.deepcopy(ref).double()
    x = torch.randn(2, 4, 8, 8)
    outs = []
    for stage in (ref, ref64, tri):
        xi = x.clone().to(next(stage.parameters()).dtype).requires_grad_()
        y = stage(xi)
        (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
        outs.append([y.detach(), xi.grad] + [p.grad for p in stage.parameters()])
    assert max(len(p) for p in ref.preds) == n
    for a, a64, b in zip(*outs):
        close64(b, a, a64, "output or gradient")


@pytest.mark.slow
def test_triton_classifier_equals_reference_and_shares_keys(one_thread):
    """The reference also on 2 threads: the convolutions split their sums another way, as another
    CPU does (held to float32 alone, a BatchNorm-cancelled gradient then missed a 1e-4 bound).
    The interpreted kernels run once, on one thread."""
    cfg = tiny_cfg("small")
    cfg.MODEL.RANDWIRE.EXECUTION = "reference"
    torch.manual_seed(0)
    ref = build_model(cfg)
    cfg.MODEL.RANDWIRE.EXECUTION = "triton"
    tri = build_model(cfg)
    assert list(tri.state_dict()) == list(ref.state_dict())
    tri.load_state_dict(ref.state_dict())  # checkpoints move between executions
    # The ground truth: the reference loop in float64. Both float32 executions are held to it,
    # not to each other (they round in different orders, which differ between CPUs).
    ref64 = copy.deepcopy(ref).double()

    def scores(m):
        with torch.no_grad():
            return torch.stack([o["scores"] for o in m.eval()(batch(3, labels=False))])

    def grads(m):
        m.train()
        m.zero_grad()
        loss = m(batch(4))["loss_cls"]
        loss.backward()
        return {"loss": loss.detach()} | {n: p.grad for n, p in m.named_parameters()}

    s64, s2 = scores(ref64), scores(tri)
    for threads in (1, 2):  # every evaluation before training updates the BatchNorm buffers
        torch.set_num_threads(threads)  # one_thread restores the count
        close64(s2, scores(ref), s64, f"eval scores on {threads} threads")
    torch.set_num_threads(1)
    g64, g2 = grads(ref64), grads(tri)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        assert_as_close(grads(ref), g64, g2, f"training on {threads} threads")


def test_float64_runs_the_eager_fast_path_and_says_so(one_thread, caplog, monkeypatch):
    monkeypatch.setattr(execution_path, "_LOGGED", set())
    trunk = tiny_trunk("small", "sep_conv3x3", "BN").set_execution("triton")
    with caplog.at_level(logging.INFO, logger="randwire_d2.modeling.execution_path"):
        trunk.eval()(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    assert "torch.float64 runs the eager fast path" in caplog.text


@pytest.fixture
def mocked_cuda(monkeypatch):
    """A CUDA device of compute capability 9.0 (an H100) where the kernels would run."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(kernels, "runnable", lambda device: (True, ""))
    monkeypatch.setattr(execution_path, "_LOGGED", set())
    return torch.device("cuda", 0)


def test_triton_where_the_kernels_cannot_run_is_an_error_when_the_model_is_built(monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRET", False)
    with pytest.raises(
        RuntimeError, match="EXECUTION='triton' cannot run on cpu: .*TRITON_INTERPRET=1"
    ):
        tiny_trunk("small", "sep_conv3x3", "BN").set_execution("triton", device="cpu")


def test_fast_on_cuda_runs_the_eager_path_and_says_why(mocked_cuda, caplog, monkeypatch):
    with caplog.at_level(logging.INFO, logger="randwire_d2.modeling.execution_path"):
        trunk = tiny_trunk("small", "sep_conv3x3", "BN").set_execution("fast", device=mocked_cuda)
        assert all(not s.path.kernels for s in trunk.wired_stages().values())
        said = (
            "EXECUTION fast on cuda:0: the eager fast path: no run of benchmarks/kernels.py "
            "has measured the Triton node kernels faster on compute capability 9.0"
        )
        assert caplog.text.count(said) == 1  # decided for every stage, said once
        assert execution_path.choose_execution("triton", mocked_cuda).kernels  # the opt-in
        assert not execution_path.choose_execution("eager", mocked_cuda).kernels
        assert not execution_path.choose_execution("reference", mocked_cuda).kernels
        assert not execution_path.choose_execution("fast", "cpu").kernels
    # decided once, when the model is built: a forward decides nothing
    monkeypatch.setattr(execution_path, "choose_execution", None)
    monkeypatch.setattr(wired_stage, "choose_execution", None)
    out = trunk.float().eval()(torch.randn(1, 3, 32, 32))["conv5"]
    assert out.shape == (1, 32, 1, 1) and torch.isfinite(out).all()


def test_fast_runs_the_kernels_where_a_gpu_run_measured_them_faster(mocked_cuda, monkeypatch):
    monkeypatch.setattr(execution_path, "KERNELS_MEASURED_FASTER", (9,))
    path = execution_path.choose_execution("fast", mocked_cuda)
    assert path.kernels and "measured faster than the eager fast path on" in path.reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert not execution_path.choose_execution("fast", mocked_cuda).kernels


def test_the_builder_decides_for_model_device(mocked_cuda):
    cfg = tiny_cfg("small")
    cfg.MODEL.DEVICE = "cuda"
    cfg.MODEL.RANDWIRE.EXECUTION = "triton"
    from detectron2.layers import ShapeSpec

    from randwire_d2.modeling.randwire import build_randwire_backbone

    trunk = build_randwire_backbone(cfg, ShapeSpec(channels=3))
    assert all(s.path.kernels for s in trunk.wired_stages().values())


def test_the_kernel_ops_run_on_meta_for_counting():
    trunk = fp32_trunk().set_execution("triton").to("meta")
    with torch.no_grad():
        out = trunk.eval()(torch.empty(2, 3, 64, 64, device="meta"))["conv5"]
    assert out.device.type == "meta" and out.shape == (2, 32, 2, 2)
    x = torch.empty(2, 3, 64, 64, device="meta", requires_grad=True)
    trunk.train()(x)["conv5"].sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
