"""The node kernels fit sm_80 and sm_90, checked here without a GPU (benchmarks/kernels.py fit: an
ahead-of-time compile to a cubin with the ptxas Triton bundles), over launches recorded from the
networks themselves."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import kernels
from randwire_d2.modeling.execution import NodeSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The heaviest variants the networks launch: in-degree 8, fp32, both layouts, the widest C109
# and C154 stages (the fp32 inference kernel asked for up to 1.2 MB of shared memory), and a
# stride-2 backward in bf16.
HEAVIEST = [
    ("forward", 8, 1, "fp32", "channels_last", 109, 0),
    ("forward", 8, 1, "bf16", "nchw", 872, 0),
    ("backward", 8, 1, "fp32", "channels_last", 109, 0),
    ("backward", 8, 1, "fp32", "nchw", 1232, 0),
    ("backward", 1, 2, "bf16", "channels_last", 436, 0),
    ("inference", 8, 1, "fp32", "channels_last", 872, 872),
    ("inference", 8, 1, "fp32", "nchw", 1232, 1232),
    ("inference", 8, 1, "fp16", "channels_last", 109, 109),
]


def compile_for_gpus(calls, archs=(80, 90)):
    """kernels.compile_one of each call for each target, in a process without Triton's
    interpreter (the tests' own process defined the kernels for it)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import json; from benchmarks import kernels; "
        "print(json.dumps([kernels.compile_one((c, kernels.bound_launches(c)[0], a)) "
        f"for c in {calls!r} for a in {archs!r}]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.slow
def test_the_heaviest_kernel_variants_fit_sm80_and_sm90():
    rows = compile_for_gpus(HEAVIEST)
    assert len(rows) == 2 * len(HEAVIEST)
    for r in rows:
        what = f"sm_{r['arch']} {r['call']}"
        assert r["registers"] > 0 and r["spill_stores"] == 0, f"{what} spills: {r}"
        assert r["shared"] <= kernels.LIMIT_SMEM, f"{what} shared memory: {r}"
        assert r["compile_s"] <= kernels.LIMIT_COMPILE_S, f"{what} compile time: {r}"
        if r["kernel"] in kernels.TRAINING_KERNELS:
            assert r["warps_per_sm"] >= kernels.LIMIT_TRAINING_WARPS, f"{what} occupancy: {r}"
        assert r["failures"] == []
    # channels_last at a C divisible by 4 loads 16-byte vectors
    wide = [r for r in rows if r["call"][4] == "channels_last" and r["call"][5] % 4 == 0]
    assert wide and all(r["vector_loads"] > 0 for r in wide)


def test_the_occupancy_rules():
    # 255 registers, 4 warps: two blocks (the old kernels' 8 warps per SM)
    assert kernels.warps_per_sm(90, 255, 0, 4) == 8
    assert kernels.warps_per_sm(90, 128, 0, 4) == 16
    assert kernels.warps_per_sm(90, 64, 0, 4) == 32
    # shared memory bounds the blocks: 100 KB fits two blocks on sm_90, one on sm_80
    assert kernels.warps_per_sm(90, 32, 100 * 1024, 4) == 8
    assert kernels.warps_per_sm(80, 32, 100 * 1024, 4) == 4
    r = dict(kernel="inference", arch=90, shared=485632, spill_stores=0, warps_per_sm=0)
    assert kernels.failures(r | {"compile_s": 110.0})[0].startswith("cannot launch")


@pytest.mark.slow
def test_the_launches_are_recorded_from_the_networks():
    """The checked variants are what the network launches: per wired stage, one forward,
    backward and inference call per separable-conv node, at the node's in-degree and stride."""
    calls = kernels.launches(["c78"], ["fp32"], ["nchw"])
    trunk = kernels.trunk("c78")
    expected = set()
    for stage in trunk.wired_stages().values():
        for v, preds in enumerate(stage.preds):
            dw, pw = NodeSpec(stage.nodes[v]).layers
            k, stride = max(1, len(preds)), dw.stride[0]
            c, co = dw.in_channels, pw.out_channels
            for kind in ("forward", "backward"):
                expected.add((kind, k, stride, "fp32", "nchw", c, 0))
            expected.add(("inference", k, stride, "fp32", "nchw", c, co))
    assert set(calls) == expected
