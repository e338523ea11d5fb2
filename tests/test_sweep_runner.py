"""randwire_d2/sweep/runner.py: runs trained, skipped, resumed, refused, submitted (submitit)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from common import CLS_CONFIG as DEMO
from common import REPO, TOOL_ENV, load_tool, read_metrics
from common import sweep_tool as sweep
from common import tiny_opts, tool_path

import randwire_d2.sweep.runner as sweep_runner
from randwire_d2.data.cls_demo import generate_classification_demo
from randwire_d2.engine import OutputDirInUse
from randwire_d2.engine.pretrain import EXIT_OUTPUT_DIR_IN_USE
from randwire_d2.sweep import expand, run_state, submit_sweep

SWEEP = tool_path("sweep")
# fmt: off
TINY = ["MODEL.RANDWIRE.NUM_NODES", "6", "MODEL.RANDWIRE.CHANNELS", "8",
        "MODEL.CLASSIFIER.HEAD_CHANNELS", "32", "SOLVER.IMS_PER_BATCH", "16",
        "PRETRAIN.WARMUP_EPOCHS", "1", "PRETRAIN.TRAIN_CROP", "32", "PRETRAIN.TEST_CROPS", "[32]",
        "DATALOADER.NUM_WORKERS", "0", "PRETRAIN.EVAL_PERIOD_EPOCHS", "0"]
# fmt: on
RUN = "er_P0.2-sep_conv3x3-C16-small-s{}"  # the runs of ER_02 below, by seed
ER_02 = ["--config-file", DEMO, "--generators", "er:P=0.2"]
GOOD = {"val_32": {"top1": 60.0, "top5": 100.0}}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep_data") / "demo"
    return generate_classification_demo(str(folder), {"train": 4, "val": 2}, image_size=32)


def prepare(folder, seeds, opts=()):
    """The runs of ER_02 x `seeds`, and their sweep folder `folder`."""
    runs = expand([DEMO], [("er", {"P": 0.2})], seeds=seeds, opts=list(opts))
    os.makedirs(folder, exist_ok=True)
    return runs


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


# A stand-in for the pretraining entry point (run as `python -m`): claims OUTPUT_DIR as
# claim_output_dir does, refusing a directory another process holds with its own words and the
# entry point's exit status EXIT_OUTPUT_DIR_IN_USE, then writes a final evaluation. When it trains
# FAKE_FINISH_WHEN, it also writes results.json into the FAKE_FINISH folders, as another sweep
# finishing them would.
FAKE_PRETRAIN = textwrap.dedent("""
    import fcntl, json, os, sys
    out = sys.argv[sys.argv.index("OUTPUT_DIR") + 1]
    name = os.path.basename(out)
    os.makedirs(out, exist_ok=True)
    f = open(os.path.join(out, ".lock"), "a+")
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"fake pretraining: {out} is taken, not training", file=sys.stderr)
        sys.exit(EXIT_OUTPUT_DIR_IN_USE)
    if os.environ.get("FAKE_FINISH_WHEN") == name:
        for folder in os.environ["FAKE_FINISH"].split(os.pathsep):
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "results.json"), "w") as r:
                json.dump({"val_32": {"top1": 40.0, "top5": 90.0}}, r)
    with open(os.path.join(out, "metrics.json"), "a") as m:
        m.write(json.dumps({"iteration": 0, "total_loss": 1.0}) + "\\n")
        m.write(json.dumps({"iteration": 0, "val_32/top1": 50.0, "val_32/top5": 100.0}) + "\\n")
    """).replace("EXIT_OUTPUT_DIR_IN_USE", str(EXIT_OUTPUT_DIR_IN_USE))


def fake_module(tmp_path, monkeypatch, name, text):
    """Each run's process runs module `name` (tmp_path/name.py, holding `text`) instead of the
    pretraining entry point."""
    (tmp_path / f"{name}.py").write_text(text)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setattr(sweep_runner, "PRETRAIN", name)


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    fake_module(tmp_path, monkeypatch, "fake_pretrain", FAKE_PRETRAIN)


@pytest.fixture
def hold():
    """hold(folder): another process (a second sweep's run) holds `folder`'s lock, as
    claim_output_dir does; returns the holder text it wrote into `.lock` ("pid <its pid, or
    `pid`> on otherhost")."""
    procs = []

    def start(folder, pid=None):
        code = textwrap.dedent("""
            import fcntl, os, sys
            os.makedirs(sys.argv[1], exist_ok=True)
            f = open(os.path.join(sys.argv[1], ".lock"), "a+")
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            f.truncate(0)
            pid = sys.argv[2] or os.getpid()
            f.write(f"pid {pid} on otherhost since today: tools/train_cls.py\\n")
            f.flush()
            print("held", flush=True)
            sys.stdin.read()
            """)
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(folder), str(pid or "")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return f"pid {pid or proc.pid} on otherhost"

    yield start
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=10)


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
    code, text, _ = sweep(capsys, *args)
    assert code == 0
    assert "1 of 2 runs finished; training 1" in text
    assert os.path.getmtime(first / "results.json") == finished_at  # not trained again
    for run in (first, second):
        iterations = [it for it, r in read_metrics(run) if "total_loss" in r]
        assert iterations == list(range(30)), run  # each iteration once, resumed not restarted
    assert "| ER(0.2) | sep_conv3x3 | 8 | 1/1 |" in text
    code, again, _ = sweep(capsys, *args)
    assert code == 0
    assert "0 of 2" not in again and "2 of 2 runs finished; training 0" in again
    # --collect draws the same table from disk.
    code, collected, _ = sweep(capsys, "--collect", str(out))
    assert code == 0 and "| WS(2, 0.5) | sep_conv3x3 | 8 | 1/1 |" in collected
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


# Defect 11: corrupt or out-of-range results are "run again", named.


def test_a_corrupt_or_out_of_range_result_is_trained_again(tmp_path, fake_train, capsys):
    folder = tmp_path / "sweep"
    prepare(folder, [1, 2, 3])
    first, second, third = (folder / RUN.format(s) for s in (1, 2, 3))
    write(str(first / "results.json"), '{"val_32": {"top1": 6')  # truncated by a full disk
    write(str(first / "last_checkpoint"), "model_final.pth")
    write(str(second / "results.json"), json.dumps({"val_32": {"top1": 99999, "top5": 100}}))
    write(str(third / "results.json"), json.dumps([60.0]))  # not {"val_<crop>": {...}}
    code, out, err = sweep(capsys, *ER_02, "--seeds", "1-3", "--output", str(folder))
    assert code == 0, err
    assert "0 of 3 runs finished; training 3" in out
    assert f"warning: {first / 'results.json'} is unreadable JSON" in err
    assert f"warning: {second / 'results.json'}: val_32/top1 = 99999 is outside [0, 100]" in err
    assert f"warning: {third / 'results.json'}: expected" in err
    assert err.count("run is not finished: training it again") == 3
    assert "--resume" in (first / "sweep_log.txt").read_text()  # resumed, not restarted
    assert "--resume" not in (second / "sweep_log.txt").read_text()
    for run in (first, second, third):
        assert json.loads((run / "results.json").read_text())["val_32"]["top1"] == 50.0
    assert "| ER(0.2) | sep_conv3x3 | 16 | 3/3 |" in out and "50.00 ± 0.00" in out


# Defect 13: a run another sweep holds is in progress elsewhere, not a failure.


def test_a_run_held_by_another_sweep_is_in_progress_elsewhere(tmp_path, fake_train, hold, capsys):
    folder = tmp_path / "sweep"
    runs = prepare(folder, [1, 2])
    holder = hold(folder / RUN.format(1))
    write(str(folder / RUN.format(2) / "results.json"), json.dumps(GOOD))
    code, out, err = sweep(capsys, *ER_02, "--seeds", "1-2", "--output", str(folder))
    assert code == 0 and "FAILED" not in err, err
    assert f"[in progress elsewhere] {RUN.format(1)}: held by {holder}" in out
    assert "not counted as failed" in out and "| ER(0.2) | sep_conv3x3 | 16 | 1/2 |" in out
    assert not (folder / RUN.format(1) / "sweep_log.txt").exists()  # not even tried
    # Submitting to Slurm leaves it to its holder too.
    lines = []
    failed = submit_sweep(runs, str(folder), cluster="local", wait=True, log=lines.append)
    assert failed == {} and json.loads((folder / "jobs.json").read_text()) == {}
    assert len(lines) == 1 and "not submitted" in lines[0]
    assert lines[0].startswith(f"[in progress elsewhere] {RUN.format(1)}: held by {holder}")


def test_a_refused_run_and_runs_finished_elsewhere_meanwhile(
    tmp_path, fake_train, hold, monkeypatch, capsys
):
    folder = tmp_path / "sweep"
    prepare(folder, [1, 2, 3, 4])
    s1, s2, s3, s4 = (str(folder / RUN.format(s)) for s in (1, 2, 3, 4))
    holder = hold(s1)
    # While this sweep trains s2, the other sweep finishes s1 (it held it) and s3; then it takes
    # s4 between this sweep's look at its lock and the run's claim.
    monkeypatch.setenv("FAKE_FINISH_WHEN", RUN.format(2))
    monkeypatch.setenv("FAKE_FINISH", os.pathsep.join([s1, s3]))
    look = sweep_runner.held_by

    def look_then_taken(path):
        found = look(path)
        if path == s4 and not os.path.exists(os.path.join(s4, ".lock")):
            hold(s4, pid=4242)  # the other sweep, just after this look
        return found

    monkeypatch.setattr(sweep_runner, "held_by", look_then_taken)
    code, out, err = sweep(capsys, *ER_02, "--seeds", "1-4", "--output", str(folder))
    assert code == 0 and "FAILED" not in err, err
    assert "0 of 4 runs finished; training 4" in out
    assert f"[in progress elsewhere] {RUN.format(1)}: held by {holder}" in out
    assert f"[finished] {RUN.format(2)}" in out
    assert f"[finished elsewhere] {RUN.format(3)}" in out
    assert not os.path.exists(os.path.join(s3, "sweep_log.txt"))  # not trained again
    assert f"[in progress elsewhere] {RUN.format(4)}: held by pid 4242 on otherhost" in out
    assert f"[finished elsewhere] {RUN.format(1)}: another sweep finished it meanwhile" in out
    assert "| ER(0.2) | sep_conv3x3 | 16 | 3/4 |" in out
    # The refused run's process said so in its own words: the exit status told it apart.
    log = open(os.path.join(s4, "sweep_log.txt")).read()
    assert "fake pretraining:" in log and "in use by" not in log


def test_train_cls_refusal_and_the_lock_probe_name_the_holder(tmp_path, hold):
    from randwire_d2.engine import claim_output_dir

    folder = str(tmp_path / "run")
    holder = hold(folder)
    with pytest.raises(RuntimeError) as refusal:
        claim_output_dir(folder)
    assert isinstance(refusal.value, OutputDirInUse) and refusal.value.holder.startswith(holder)
    assert f"OUTPUT_DIR={folder!r} is in use by {holder} since today" in str(refusal.value)
    assert sweep_runner.held_by(folder).startswith(holder)
    assert sweep_runner.held_by(str(tmp_path / "free")) is None


# Each run is its own process of the package's pretraining entry point, told apart by exit status.


def test_each_run_is_a_process_of_the_package_s_pretraining_module(tmp_path):
    (run,) = prepare(tmp_path / "sweep", [1])
    cmd = sweep_runner.train_command(run, str(tmp_path / "sweep" / run.name), num_gpus=2)
    assert cmd[:3] == [sys.executable, "-m", "randwire_d2.engine.pretrain"]
    assert not [a for a in cmd if "tools" in a.split(os.sep)], cmd
    assert cmd[-2:] == ["OUTPUT_DIR", str(tmp_path / "sweep" / run.name)]
    assert cmd[cmd.index("--num-gpus") + 1] == "2"


def test_a_refusal_is_told_by_exit_status_not_by_words(tmp_path, monkeypatch):
    (run,) = prepare(tmp_path / "sweep", [1])
    folder = str(tmp_path / "sweep" / run.name)
    # The old refusal's words, but an ordinary failure's status: a failure.
    words = f"OUTPUT_DIR={folder!r} is in use by pid 7 on h since t: x. Two runs in one OUTPUT_DIR"
    fake_module(tmp_path, monkeypatch, "says_in_use", f"import sys; sys.exit({words!r})")
    with pytest.raises(RuntimeError, match=r"failed \(exit 1") as failure:
        sweep_runner.train_run(run, folder)
    assert not isinstance(failure.value, sweep_runner.RunInProgressElsewhere)
    # Silent, with the refusal's status: in progress elsewhere (its holder gone meanwhile).
    code = f"import sys; sys.exit({EXIT_OUTPUT_DIR_IN_USE})"
    fake_module(tmp_path, monkeypatch, "refuses_silently", code)
    with pytest.raises(sweep_runner.RunInProgressElsewhere, match="held by another process"):
        sweep_runner.train_run(run, folder)


@pytest.mark.slow
def test_the_pretraining_module_exits_with_its_status_for_a_held_output_dir(
    tmp_path, hold, cls_data_root
):
    folder = tmp_path / "run"
    holder = hold(folder)
    proc = subprocess.run(
        [sys.executable, "-m", "randwire_d2.engine.pretrain", "--config-file", DEMO]
        + tiny_opts(cls_data_root, folder),
        cwd=REPO,
        env=TOOL_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == EXIT_OUTPUT_DIR_IN_USE, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"OUTPUT_DIR={str(folder)!r} is in use by {holder}" in proc.stderr
    assert not (folder / "config.yaml").exists()


@pytest.mark.parametrize("exit_code, refused", [(EXIT_OUTPUT_DIR_IN_USE, True), (1, False)])
def test_a_spawned_process_s_refusal_is_the_command_s_exit_status(monkeypatch, exit_code, refused):
    import torch.multiprocessing as mp

    from randwire_d2.engine import pretrain

    def launch(main_func, args):  # as Detectron2's launch reports a spawned process' exit
        raise mp.ProcessExitedException(f"exit code {exit_code}", 0, 1234, exit_code)

    monkeypatch.setattr(pretrain, "launch", launch)
    if refused:
        assert pretrain.cli(["--config-file", DEMO]) == EXIT_OUTPUT_DIR_IN_USE
    else:
        with pytest.raises(mp.ProcessExitedException):
            pretrain.cli(["--config-file", DEMO])


def test_a_submitit_job_refused_returns_its_status(tmp_path, monkeypatch, hold):
    import submitit

    (run,) = prepare(tmp_path / "sweep", [1])
    folder = str(tmp_path / "sweep" / run.name)
    holder = hold(folder)
    executor = submitit.AutoExecutor(folder=str(tmp_path / "jobs"), cluster="debug")
    outcome = executor.submit(sweep_runner.cluster_job, run, folder, 1, 1).result()
    assert isinstance(outcome, sweep_runner.RunInProgressElsewhere)
    assert outcome.holder.startswith(holder)
    # submit_sweep, its look at the lock made before the other sweep took the folder.
    look, looks = sweep_runner.held_by, []

    def before_taken(path):
        looks.append(path)
        return None if len(looks) == 1 else look(path)

    monkeypatch.setattr(sweep_runner, "held_by", before_taken)
    lines = []
    sweep_dir = str(tmp_path / "sweep")
    failed = submit_sweep([run], sweep_dir, cluster="debug", wait=True, log=lines.append)
    assert failed == {}
    assert len(lines) == 1 and lines[0].endswith("; not counted as failed")
    assert lines[0].startswith(f"[in progress elsewhere] {run.name}: held by {holder}")
