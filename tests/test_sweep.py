"""tools/sweep.py: expansion, naming, presets, skip/resume after a kill, submitit's local executor,
aggregation from disk (the maths of the aggregation is in test_sweep_report.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from common import CLS_CONFIG as DEMO
from common import REPO, load_tool, read_metrics, tool_path

from randwire_d2.data.cls_demo import generate_classification_demo
from randwire_d2.sweep import expand, parse_generators, run_state, submit_sweep

SWEEP = tool_path("sweep")
# fmt: off
TINY = ["MODEL.RANDWIRE.NUM_NODES", "6", "MODEL.RANDWIRE.CHANNELS", "8",
        "MODEL.CLASSIFIER.HEAD_CHANNELS", "32", "SOLVER.IMS_PER_BATCH", "16",
        "PRETRAIN.WARMUP_EPOCHS", "1", "PRETRAIN.TRAIN_CROP", "32", "PRETRAIN.TEST_CROPS", "[32]",
        "DATALOADER.NUM_WORKERS", "0", "PRETRAIN.EVAL_PERIOD_EPOCHS", "0"]
# fmt: on


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep_data") / "demo"
    return generate_classification_demo(str(folder), {"train": 4, "val": 2}, image_size=32)


def sweep_here(capsys, *args):
    """tools/sweep.py's main in this process: its stdout (exit status 0 asserted)."""
    capsys.readouterr()
    assert load_tool("sweep").main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def test_generator_settings_are_crossed():
    settings = parse_generators(["er:P=0.1,0.2", "ba:M=5", "ws:K=2,4,P=0,0.75"])
    assert settings == [
        ("er", {"P": 0.1}),
        ("er", {"P": 0.2}),
        ("ba", {"M": 5}),
        ("ws", {"K": 2, "P": 0}),
        ("ws", {"K": 2, "P": 0.75}),
        ("ws", {"K": 4, "P": 0}),
        ("ws", {"K": 4, "P": 0.75}),
    ]
    with pytest.raises(ValueError, match="expected GEN:NAME=V"):
        parse_generators(["er:0.2"])


def test_runs_are_named_and_carry_their_overrides():
    runs = expand([DEMO], parse_generators(["ws:K=4,P=0.75", "er:P=0.2"]), seeds=[1, 2])
    assert [r.name for r in runs] == [
        "ws_K4_P0.75-sep_conv3x3-C16-small-s1",
        "ws_K4_P0.75-sep_conv3x3-C16-small-s2",
        "er_P0.2-sep_conv3x3-C16-small-s1",
        "er_P0.2-sep_conv3x3-C16-small-s2",
    ]
    opts = dict(zip(runs[2].opts[::2], runs[2].opts[1::2]))
    assert opts["MODEL.RANDWIRE.GENERATOR"] == "er" and opts["MODEL.RANDWIRE.ER_P"] == "0.2"
    assert opts["MODEL.RANDWIRE.SEED"] == opts["SEED"] == "1" and runs[2].group == "ER(0.2)"
    with pytest.raises(ValueError, match="twice"):
        expand([DEMO], [("er", {"P": 0.2})] * 2, seeds=[1])
    with pytest.raises(ValueError, match="parameter 'K' is invalid for generator 'er'"):
        expand([DEMO], [("er", {"K": 2})], seeds=[1])


def test_fig6_dry_run_keeps_the_flops_of_the_separable_conv(capsys):
    argv = ["--preset", "fig6", "--generators", "ws:K=4,P=0.75", "--seeds", "1", "--dry-run"]
    assert load_tool("sweep").main(argv) == 0  # in process: FLOPs in closed form, no model built
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ws_")]
    assert [r[0].split("-")[1] for r in rows] == [
        "sep_conv3x3",
        "conv3x3",
        "max_pool3x3_conv1x1",
        "avg_pool3x3_conv1x1",
    ]
    flops = [float(r[4]) for r in rows]
    assert 570 < flops[0] < 600  # C=78, as Table 2
    assert all(abs(f / flops[0] - 1) < 0.03 for f in flops), rows
    assert "C78" not in rows[1][0]  # C was adjusted for the 3x3 conv


@pytest.mark.slow
def test_killed_sweep_continues_and_trains_each_run_once(data_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    args = ["--config-file", DEMO, "--generators", "er:P=0.2", "--generators", "ws:K=2,P=0.5"]
    args += ["--seeds", "1", "--output", str(out), "--data-root", data_root]
    args += TINY + ["PRETRAIN.EPOCHS", "30", "PRETRAIN.CHECKPOINT_PERIOD_EPOCHS", "2"]
    proc = subprocess.Popen(
        [sys.executable, SWEEP, *args],
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # killed with its train_cls child, as a cancelled job is
    )
    first, second = (
        out / "er_P0.2-sep_conv3x3-C8-small-s1",
        out / "ws_K2_P0.5-sep_conv3x3-C8-small-s1",
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (second / "last_checkpoint").exists():
            time.sleep(0.2)
        assert run_state(str(first)) == "finished"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert run_state(str(second)) == "interrupted"
    finished_at = os.path.getmtime(first / "results.json")
    # The killed sweep ran as a user runs it; the reruns run here (each run still trains in its
    # own process, as the sweep starts it).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", REPO)
    text = sweep_here(capsys, *args)
    assert "1 of 2 runs finished; training 1" in text
    assert os.path.getmtime(first / "results.json") == finished_at  # not trained again
    for run in (first, second):
        iterations = [it for it, r in read_metrics(run) if "total_loss" in r]
        assert iterations == list(range(30)), run  # each iteration once, resumed not restarted
    assert "| ER(0.2) | sep_conv3x3 | 8 | 1/1 |" in text
    again = sweep_here(capsys, *args)
    assert "0 of 2" not in again and "2 of 2 runs finished; training 0" in again
    # --collect draws the same table from disk.
    assert "| WS(2, 0.5) | sep_conv3x3 | 8 | 1/1 |" in sweep_here(capsys, "--collect", str(out))
    assert os.path.getsize(out / "fig3.png") > 0


@pytest.mark.slow
def test_submitit_local_executor_trains_a_run(data_root, tmp_path):
    opts = ["PRETRAIN.DATA_ROOT", data_root, *TINY, "PRETRAIN.EPOCHS", "2"]
    runs = expand([DEMO], [("er", {"P": 0.2})], seeds=[1], opts=opts)
    failed = submit_sweep(runs, str(tmp_path), cluster="local", wait=True, timeout_min=10)
    assert failed == {}
    assert run_state(str(tmp_path / runs[0].name)) == "finished"
    with open(tmp_path / "jobs.json") as f:
        assert list(json.load(f)) == [runs[0].name]
    with open(tmp_path / runs[0].name / "results.json") as f:
        assert 0 <= json.load(f)["val_32"]["top1"] <= 100


def test_a_sweep_folder_refuses_runs_of_another_plan(tmp_path):
    from randwire_d2.sweep import save_plan

    runs = expand([DEMO], [("er", {"P": 0.2})], seeds=[1], opts=["PRETRAIN.EPOCHS", "5"])
    save_plan(runs, str(tmp_path), {runs[0].name: (1, 1)})
    save_plan(runs, str(tmp_path), {runs[0].name: (1, 1)})  # the same plan again: fine
    other = expand([DEMO], [("er", {"P": 0.2})], seeds=[1], opts=["PRETRAIN.EPOCHS", "9"])
    with pytest.raises(ValueError, match="holds run er_P0.2-sep_conv3x3-C16-small-s1 of another"):
        save_plan(other, str(tmp_path), {other[0].name: (1, 1)})
