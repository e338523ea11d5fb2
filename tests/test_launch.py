"""Multi-machine runs as they can be tested here: two commands on localhost, one per "machine"
(--num-machines 2 --machine-rank 0|1 --dist-url tcp://127.0.0.1:PORT), for both tools."""

import os
import socket
import subprocess
import sys

import pytest
import torch
from common import (
    CLS_CONFIG,
    DET_CONFIG,
    REPO,
    TINY_DET,
    TOOL_ENV,
    as_args,
    read_metrics,
    run_tool,
    tiny_opts,
)

from randwire_d2.data.cls_demo import generate_classification_demo
from randwire_d2.data.detection_demo import generate_detection_demo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_machines(tool: str, args, timeout: int = 300):
    """Run `tool` as machine 0 and machine 1 of 2 (one process each); their outputs."""
    url = f"tcp://127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tools", tool), *args[:2], "--num-gpus", "1"]
            + ["--num-machines", "2", "--machine-rank", str(rank), "--dist-url", url, *args[2:]],
            cwd=REPO,
            env=TOOL_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (1, 0)
    ]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


@pytest.mark.slow
def test_train_cls_on_two_machines(tmp_path):
    data = generate_classification_demo(str(tmp_path / "data"), {"train": 4, "val": 2}, 32)
    out = tmp_path / "out"
    logs = two_machines("train_cls.py", ["--config-file", CLS_CONFIG, *tiny_opts(data, out)])
    assert "World size: 2" in logs[1]
    assert [it for it, r in read_metrics(out) if "total_loss" in r] == [0, 1]
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 1


@pytest.mark.slow
def test_train_net_on_two_machines(tmp_path):
    paths = generate_detection_demo(
        str(tmp_path), {"train": 8}, image_size=(64, 64), object_size=(14, 30), seed=3
    )
    out = tmp_path / "out"
    args = ["--config-file", DET_CONFIG, "--dataset", "two_train", paths["train"]]
    args += [str(tmp_path / "train"), *as_args(TINY_DET), "DATASETS.TRAIN", "('two_train',)"]
    args += ["DATASETS.TEST", "()", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1"]
    logs = two_machines("train_net.py", args + ["SOLVER.STEPS", "()", "OUTPUT_DIR", str(out)])
    assert "World size: 2" in logs[1]
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 2


@pytest.mark.slow
def test_train_net_joins_a_torchrun_group(tmp_path):
    paths = generate_detection_demo(
        str(tmp_path), {"train": 8}, image_size=(64, 64), object_size=(14, 30), seed=3
    )
    out = tmp_path / "out"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    args = ["--config", DET_CONFIG]
    args += ["--dataset", "tr_train", paths["train"], str(tmp_path / "train")]
    args += [*as_args(TINY_DET), "DATASETS.TRAIN", "('tr_train',)", "DATASETS.TEST", "()"]
    args += ["SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "OUTPUT_DIR", str(out)]
    proc = run_tool("train_net", *args, prefix=[*torchrun, "2"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "World size: 2" in proc.stdout + proc.stderr
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 1
