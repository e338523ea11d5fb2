"""The fast execution of wired stages computes the reference per-node loop's function: same
outputs, gradients and BatchNorm statistics, for every regime, node op, norm and mode."""

import copy

import pytest
import torch
from common import close_to_float64
from common import image_batch as batch
from common import tiny_cls_cfg as tiny_cfg
from common import tiny_trunk
from detectron2.modeling import build_model

from randwire_d2.modeling import NODE_OPS
from randwire_d2.modeling.execution import StagePlan
from randwire_d2.modeling.randwire import execution_mode

NORMS = ["BN", "FrozenBN", "GN", "naiveSyncBN"]


def run(trunk, x, train, key=None):
    """Outputs, parameter gradients and buffers after one forward (+ backward in training)."""
    trunk.train(train)
    x = x.clone().requires_grad_(train)
    if key is not None:
        trunk.seed_edge_removal(key)
    feats = trunk(x)
    outs = {k: v.detach().clone() for k, v in feats.items()}
    grads = {}
    if train:
        g = torch.Generator().manual_seed(1)
        loss = sum((v * torch.randn(v.shape, generator=g)).sum() for v in feats.values())
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trunk.named_parameters() if p.grad is not None}
        grads["input"] = x.grad.clone()
    buffers = {n: b.clone() for n, b in trunk.named_buffers()}
    return outs, grads, buffers


def assert_close(a, b, what):
    assert a.keys() == b.keys(), f"{what}: {sorted(a.keys() ^ b.keys())}"
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(
                b[k], a[k], rtol=1e-9, atol=1e-9, msg=lambda m: f"{what} {k}: {m}"
            )
        else:
            assert torch.equal(a[k], b[k]), f"{what} {k}"


LEAN = {"stored": (False, False), "lean": (True, False), "lean-min": (True, True)}


def compare(regime, node_op, norm, train, lean, drop_edge_prob=0.0, key=None, fold=True):
    ref = tiny_trunk(regime, node_op, norm, drop_edge_prob, out=("conv3", "conv5"))
    fast = copy.deepcopy(ref).set_execution("fast", *LEAN[lean], fold_norms=fold)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad() if not train else torch.enable_grad():
        r = run(ref, x, train, key)
        f = run(fast, x, train, key)
    for a, b, what in zip(r, f, ("output", "gradient", "buffer")):
        assert_close(a, b, what)


@pytest.mark.slow
@pytest.mark.parametrize("lean", sorted(LEAN))
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("node_op", sorted(NODE_OPS))
@pytest.mark.parametrize("regime", ["small", "regular"])
def test_fast_equals_reference_in_training(one_thread, regime, node_op, norm, lean):
    compare(regime, node_op, norm, train=True, lean=lean)


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("node_op", sorted(NODE_OPS))
@pytest.mark.parametrize("regime", ["small", "regular"])
def test_fast_equals_reference_in_eval(one_thread, regime, node_op, norm, fold):
    compare(regime, node_op, norm, train=False, lean="lean", fold=fold)


@pytest.mark.parametrize("norm", ["FrozenBN", "GN"])
def test_fast_unfolded_equals_reference_in_training(one_thread, norm):
    compare("regular", "sep_conv3x3", norm, train=True, lean="lean", fold=False)


@pytest.mark.parametrize("lean", sorted(LEAN))
@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
@pytest.mark.slow
def test_fast_equals_reference_with_edge_removal(one_thread, norm, lean):
    # p=1: an edge is removed at every step; the same key removes the same edge in both.
    for it in range(3):
        compare("small", "sep_conv3x3", norm, True, lean, drop_edge_prob=1.0, key=(0, it, 0))


def test_eval_with_gradients_folds_batchnorm_exactly(one_thread):
    """BN in eval mode is folded into the 1x1 conv also when gradients flow (fine-tuning a
    frozen-statistics model); gradients equal the reference's."""
    ref = tiny_trunk("small", "sep_conv3x3", "BN")
    fast = copy.deepcopy(ref).set_execution("fast", memory_efficient=True, recompute_convs=True)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    for m in (ref, fast):
        m.eval()
    outs = []
    for m in (ref, fast):
        xi = x.clone().requires_grad_()
        m(xi)["conv5"].square().sum().backward()
        outs.append({n: p.grad for n, p in m.named_parameters()} | {"x": xi.grad})
    assert_close(outs[0], outs[1], "gradient")


def test_classifier_loss_and_gradients_match(one_thread):
    cfg = tiny_cfg("regular")
    cfg.MODEL.RANDWIRE.EXECUTION = "reference"
    torch.manual_seed(0)
    ref = build_model(cfg)
    fast = copy.deepcopy(ref)
    fast.backbone.set_execution("fast", memory_efficient=True)
    # Both float32 executions held to the float64 reference loop, not to each other: they sum
    # in different orders, and how far apart that puts them differs between CPUs.
    ref64 = copy.deepcopy(ref).double()
    data = batch()
    steps = []
    for m in (ref, ref64, fast):
        m.train()
        loss = m(data)["loss_cls"]
        loss.backward()
        steps.append({"loss": loss.detach()} | {n: p.grad for n, p in m.named_parameters()})
    for k in steps[0]:
        close_to_float64(steps[2][k], steps[0][k], steps[1][k], k)


def assert_same_training_step(ref, other, rtol, atol):
    """One training step of two classifiers on the same batch: equal losses and gradients."""
    data = batch()
    losses = []
    for m in (ref, other):
        m.train()
        loss = m(data)["loss_cls"]
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=rtol, atol=atol)
    for (n, p), (_, q) in zip(ref.named_parameters(), other.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=rtol, atol=atol, msg=lambda m: f"{n}: {m}")


def test_execution_keeps_state_dict_keys():
    cfg = tiny_cfg()
    keys = {}
    for execution in ("reference", "fast"):
        cfg.MODEL.RANDWIRE.EXECUTION = execution
        model = build_model(cfg)
        keys[execution] = {k: v.shape for k, v in model.state_dict().items()}
    assert keys["reference"] == keys["fast"]


@pytest.mark.parametrize(
    "key,value,message",
    [
        (
            "EXECUTION",
            "fused",
            r"EXECUTION='fused' is unknown: expected one of \['fast', 'reference', 'triton', 'eager'\]",
        ),
        (
            "COMPILE",
            "fastest",
            r"COMPILE='fastest' is unknown: expected one of \['', 'node', 'stage'\]",
        ),
    ],
)
def test_bad_execution_keys_name_the_allowed_values(key, value, message):
    cfg = tiny_cfg()
    cfg.MODEL.RANDWIRE[key] = value
    with pytest.raises(ValueError, match=message):
        build_model(cfg)


def test_execution_mode_context_restores():
    trunk = tiny_trunk("small", "sep_conv3x3", "BN").set_execution("fast")
    with execution_mode(trunk, "reference"):
        assert {s.execution for s in trunk.wired_stages().values()} == {"reference"}
    assert {s.execution for s in trunk.wired_stages().values()} == {"fast"}


def test_plan_frees_each_node_after_its_last_consumer():
    # 0 -> 1 -> 3, 0 -> 2 -> 3, 2 -> 4; outputs 3 and 4
    plan = StagePlan([[], [0], [0], [1, 2], [2]], [3, 4])
    assert plan.sources == ((-1,), (0,), (0,), (1, 2), (2,))
    assert plan.free_after == ((), (), (0,), (1,), (2,))
    assert plan.last_input_use == 0


def test_checkpoint_written_before_fast_execution_loads_and_computes_the_same():
    """tests/data/randwire_tiny_feb114f.pth was written by commit feb114f (per-node loop only),
    with the conv5 features and logits it computed on two images."""
    import os

    from randwire_d2.checkpoint import RandWireCheckpointer

    here = os.path.join(os.path.dirname(__file__), "data")
    expected = torch.load(os.path.join(here, "randwire_tiny_feb114f_logits.pt"), weights_only=True)
    cfg = tiny_cfg("regular")
    cfg.MODEL.RANDWIRE.NUM_NODES = 8
    cfg.MODEL.RANDWIRE.DROP_EDGE_PROB = 0.1
    for memory_efficient in (True, False):
        cfg.MODEL.RANDWIRE.MEMORY_EFFICIENT = memory_efficient
        model = build_model(cfg).eval()
        assert {s.execution for s in model.backbone.wired_stages().values()} == {"fast"}
        RandWireCheckpointer(model).load(os.path.join(here, "randwire_tiny_feb114f.pth"))
        model64 = copy.deepcopy(model).double()
        with torch.no_grad():
            images = model.preprocess_image([{"image": im} for im in expected["images"]])
            # The values feb114f computed (in float32, on its machine) are as close to this
            # version's function in float64 as this machine's float32 is.
            got = {"conv5": model.backbone(images)["conv5"], "logits": model.logits(images)}
            x64 = images.double()
            want = {"conv5": model64.backbone(x64)["conv5"], "logits": model64.logits(x64)}
            for k in got:
                close_to_float64(expected[k], got[k], want[k], k)


def test_forward_hooks_on_a_node_run_in_the_fast_execution(one_thread):
    ref = tiny_trunk("small", "sep_conv3x3", "BN").eval()
    fast = copy.deepcopy(ref).set_execution("fast")
    seen = []
    for m in (ref, fast):
        m.conv3.nodes[2].register_forward_hook(
            lambda mod, args, out: seen.append(out.sum()) or out * 0
        )
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x)["conv5"], ref(x)["conv5"])
    assert len(seen) == 2 and torch.allclose(seen[0], seen[1])


@pytest.mark.slow
def test_compiled_trunk_keeps_keys_and_function(one_thread, monkeypatch):
    """MODEL.RANDWIRE.COMPILE compiles the wired stages in place: same state-dict keys, same
    outputs and gradients as the eager trunk. Traced with the aot_eager backend (Inductor's
    code generation for three stages takes half a minute here; Inductor runs in
    test_gpu_training.py's node test)."""
    from randwire_d2.modeling import regional_compile

    monkeypatch.setattr(regional_compile, "COMPILE_BACKEND", "aot_eager")
    cfg = tiny_cfg("small")
    torch.manual_seed(0)
    eager = build_model(cfg)
    cfg.MODEL.RANDWIRE.COMPILE = "stage"
    compiled = build_model(cfg)
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    compiled.load_state_dict(eager.state_dict())
    assert_same_training_step(eager, compiled, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("execution", ["fast", "triton"])
def test_eval_constants_follow_the_weights(one_thread, execution):
    """Coefficients and folded norms are computed once in eval and recomputed whenever a
    weight or statistic changes: in place (optimizer, loading), replaced, or after training."""
    ref = tiny_trunk("small", "sep_conv3x3", "BN").float()
    model = copy.deepcopy(ref).set_execution(execution).eval()
    ref.eval()
    x = torch.randn(2, 3, 32, 32)

    def assert_follows():  # against the reference loop in float64 (close_to_float64)
        want64 = copy.deepcopy(ref).double()(x.double())["conv5"]
        close_to_float64(model(x)["conv5"], ref(x)["conv5"], want64, f"{execution} conv5")

    with torch.no_grad():
        model(x)
        ref.load_state_dict(tiny_trunk("small", "sep_conv3x3", "BN", seed=1).state_dict())
        with torch.no_grad():
            for t in list(ref.parameters()) + [b for b in ref.buffers() if b.is_floating_point()]:
                t.mul_(1.1)
        model.load_state_dict(ref.state_dict())  # in place: versions change
        assert_follows()
        node = model.conv4.nodes[-1]
        node.transform[-1].running_var.data = node.transform[-1].running_var * 2  # replaced
        ref.conv4.nodes[-1].transform[-1].running_var.mul_(2)
        assert_follows()
    for m in (model, ref):  # a training step moves the statistics
        m.train()(x)
        m.eval()
    with torch.no_grad():
        assert_follows()
