"""tools/sweep.py never lies: bounded plans (a seed range is refused before it is expanded),
corrupt or out-of-range results are "run again" (rerun and --collect), inputs the sweep would drop
are errors, and a run another sweep holds is "in progress elsewhere", not a failure (issue 11's
defects 3, 11, 12, 13). Training is a stand-in script: these are the sweep's decisions, not
train_cls's (test_sweep.py trains for real)."""

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc

import pytest
from common import CLS_CONFIG as DEMO
from common import REPO, TOOL_ENV, load_tool, tiny_opts

import randwire_d2.sweep.runner as sweep_runner
from randwire_d2.engine import OutputDirInUse
from randwire_d2.engine.pretrain import EXIT_OUTPUT_DIR_IN_USE
from randwire_d2.graphs import parse_seeds
from randwire_d2.sweep import expand, parse_generators, save_plan, submit_sweep

SWEEP = load_tool("sweep")
RUN = "er_P0.2-sep_conv3x3-C16-small-s{}"  # the runs of ER_02 below, by seed
ER_02 = ["--config-file", DEMO, "--generators", "er:P=0.2"]
GOOD = {"val_32": {"top1": 60.0, "top5": 100.0}}


def sweep(capsys, *argv):
    """tools/sweep.py main(argv) in this process: (exit code, stdout, stderr)."""
    try:
        code = SWEEP.main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


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


# Defect 3: a plan's size is bounded before anything is expanded.


def test_a_seed_range_is_bounded_before_it_is_expanded(capsys):
    with pytest.raises(ValueError, match=r"--seeds '1-2000000' .*2000000 seeds.*at most 10000"):
        parse_seeds("1-2000000")
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"--seeds '1-1000000000' .*at most 10000"):
            parse_seeds("1-1000000000")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # nothing of the billion seeds was built
    code, out, err = sweep(capsys, *ER_02, "--seeds", "1-1000000000", "--dry-run")
    assert code == 2 and out == ""
    assert "--seeds '1-1000000000'" in err and "at most 10000" in err and "Traceback" not in err
    with pytest.raises(ValueError, match=r"--seeds '1,1' .*seed 1 twice"):
        parse_seeds("1,1")
    with pytest.raises(ValueError, match=r"--seeds '4294967296' .*outside \[0, 2147483648\)"):
        parse_seeds("4294967296")


def test_the_runs_of_a_sweep_are_bounded(capsys):
    with pytest.raises(ValueError, match=r"6000 runs .* at most 2000 per sweep"):
        expand([DEMO], parse_generators(["er:P=0.1,0.2"]), seeds=range(1, 3001))
    ks = ",".join(str(k) for k in range(2, 3002, 2))  # 1500 values of K
    with pytest.raises(ValueError, match=r"--generators 'ws:K=2,4,.*3000 settings.*at most 2000"):
        parse_generators([f"ws:K={ks},P=0,0.5"])
    code, out, err = sweep(capsys, *ER_02, "--generators", "er:P=0.3", "--seeds", "1-1500")
    assert code == 2 and "3000 runs" in err and "at most 2000 per sweep" in err


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


def test_collect_skips_corrupt_and_out_of_range_results(tmp_path, capsys):
    folder = tmp_path / "sweep"
    runs = expand([DEMO], [("er", {"P": 0.2})], seeds=[1, 2, 3, 4, 5])
    save_plan(runs, str(folder), {r.name: (1e6, 1e5) for r in runs})
    write(str(folder / RUN.format(1) / "results.json"), json.dumps(GOOD))
    write(str(folder / RUN.format(2) / "results.json"), '{"val_32": {"top1": 6')
    bad = {"val_32": {"top1": 99999, "top5": 100}}
    write(str(folder / RUN.format(3) / "results.json"), json.dumps(bad))
    write(str(folder / RUN.format(4) / "results.json"), json.dumps({"val_32": {"top1": "60"}}))
    write(str(folder / RUN.format(5) / "results.json"), "\xff\xfe not utf-8 \x00")
    code, out, err = sweep(capsys, "--collect", str(folder))
    assert code == 0 and "Traceback" not in err
    for s in (2, 3, 4, 5):
        path = folder / RUN.format(s) / "results.json"
        assert f"warning: {path}" in err
    assert "val_32/top1 = 99999 is outside [0, 100]" in err
    assert err.count("left out of the report: it needs to be run again") == 4
    assert "| ER(0.2) | sep_conv3x3 | 16 | 1/5 |" in out
    assert "60.00 ± 0.00" in out  # the one good run only: 99999 is not averaged in


# Defect 12: sweep inputs the sweep would drop or misread are errors.


@pytest.mark.parametrize(
    "text, match",
    [
        ("er", r"--generators 'er' lacks parameter P: er needs P \(e.g. er:P=0.2\)"),
        ("ba:", r"--generators 'ba:' lacks parameter M: ba needs M \(e.g. ba:M=5\)"),
        ("ws:K=4", r"--generators 'ws:K=4' lacks parameter P: ws needs K and P"),
        ("ws:P=0.5", r"--generators 'ws:P=0.5' lacks parameter K: ws needs K and P"),
        ("er:Q=0.2", r"--generators 'er:Q=0.2' has unknown parameter Q: er needs P"),
        ("er:P=0.1,P=0.2", r"--generators 'er:P=0.1,P=0.2' gives parameter P twice"),
        ("er:P=0.1,,0.2", r"--generators 'er:P=0.1,,0.2' .*'' is not a number"),
        ("er:P=nan", r"--generators 'er:P=nan' .*'nan' is not a number"),
        ("mine:X=", r"--generators 'mine:X=' .*'' is not a number"),
        ("mine:X=abc", r"--generators 'mine:X=abc' .*'abc' is not a number"),
        ("mine:=1", r"--generators 'mine:=1' .*'' is not a parameter name"),
        (":P=0.2", r"--generators ':P=0.2' .*'' is not a generator name"),
    ],
)
def test_a_generator_setting_must_be_complete_and_well_formed(text, match):
    with pytest.raises(ValueError, match=match):
        parse_generators([text])


def test_generator_errors_reach_the_command_line_as_errors(capsys):
    code, out, err = sweep(capsys, "--config-file", DEMO, "--generators", "er", "--dry-run")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "--generators 'er' lacks parameter P: er needs P (e.g. er:P=0.2)" in err


def test_an_empty_seed_range_is_an_error(capsys):
    with pytest.raises(ValueError, match=r"--seeds '5-1' .*empty \(5 > 1\).*LO <= HI"):
        parse_seeds("5-1")
    code, out, err = sweep(capsys, *ER_02, "--seeds", "5-1", "--dry-run")
    assert code == 2 and out == "" and "--seeds '5-1'" in err


@pytest.mark.parametrize(
    "override, flags, message",
    [
        (["MODEL.RANDWIRE.SEED", "7"], [], "MODEL.RANDWIRE.SEED is set per run by --seeds"),
        (["SEED", "7"], [], "SEED is set per run by --seeds"),
        (["OUTPUT_DIR", "/tmp/x"], [], "OUTPUT_DIR is set per run by --output"),
        (["MODEL.RANDWIRE.GENERATOR", "ba"], [], "GENERATOR is set per run by --generators"),
        (["MODEL.RANDWIRE.ER_P", "0.3"], [], "ER_P is set per run by --generators"),
        (["MODEL.RANDWIRE.WS_K", "6"], [], "WS_K is set per run by --generators"),
        (["MODEL.RANDWIRE.GENERATOR_PARAMS.X", "1"], [], "is set per run by --generators"),
        (["MODEL.RANDWIRE.WIRING_FILE", "w.json"], [], "by --generators and --seeds"),
        (["MODEL.RANDWIRE.NODE_OP", "conv3x3"], [], "NODE_OP is set per run by --node-ops"),
        (["MODEL.RANDWIRE.CHANNELS", "20"], ["--match-flops"], "set per run by --match-flops"),
    ],
)
def test_overrides_the_sweep_sets_per_run_are_refused(override, flags, message, capsys):
    code, out, err = sweep(capsys, *ER_02, "--seeds", "1", *flags, "--dry-run", *override)
    assert code == 2 and out == "" and "Traceback" not in err
    assert message in err and f"override {' '.join(override)} is refused" in err


def test_channels_without_match_flops_are_the_config_s():
    runs = expand([DEMO], [("er", {"P": 0.2})], seeds=[1], opts=["MODEL.RANDWIRE.CHANNELS", "20"])
    assert runs[0].name == "er_P0.2-sep_conv3x3-C20-small-s1"


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
