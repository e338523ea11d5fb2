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
from common import load_tool

import randwire_d2.sweep.runner as sweep_runner
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


# A stand-in for tools/train_cls.py: claims OUTPUT_DIR as claim_output_dir does (refusing, with
# train_cls's words, a directory another process holds), then writes a final evaluation. FAKE_REFUSE
# names a run it refuses as if another sweep took it first; when it trains FAKE_FINISH_WHEN, it
# also writes results.json into the FAKE_FINISH folders, as another sweep finishing them would.
FAKE_TRAIN_CLS = textwrap.dedent("""
    import fcntl, json, os, sys
    out = sys.argv[sys.argv.index("OUTPUT_DIR") + 1]
    name = os.path.basename(out)
    os.makedirs(out, exist_ok=True)
    f = open(os.path.join(out, ".lock"), "a+")
    try:
        if os.environ.get("FAKE_REFUSE") == name:
            raise OSError
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "pid 4242 on otherhost since today: tools/train_cls.py"
        sys.exit(
            f"RuntimeError: OUTPUT_DIR={out!r} is in use by {holder}. Two runs in one OUTPUT_DIR "
            "overwrite each other's checkpoints and metrics: choose another OUTPUT_DIR."
        )
    if os.environ.get("FAKE_FINISH_WHEN") == name:
        for folder in os.environ["FAKE_FINISH"].split(os.pathsep):
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "results.json"), "w") as r:
                json.dump({"val_32": {"top1": 40.0, "top5": 90.0}}, r)
    with open(os.path.join(out, "metrics.json"), "a") as m:
        m.write(json.dumps({"iteration": 0, "total_loss": 1.0}) + "\\n")
        m.write(json.dumps({"iteration": 0, "val_32/top1": 50.0, "val_32/top5": 100.0}) + "\\n")
    """)


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    script = tmp_path / "fake_train_cls.py"
    script.write_text(FAKE_TRAIN_CLS)
    monkeypatch.setattr(sweep_runner, "TRAIN_CLS", str(script))
    return script


@pytest.fixture
def hold():
    """hold(folder): another process (a second sweep's train_cls) holds `folder`'s lock, as
    claim_output_dir does; returns the holder text it wrote into `.lock`."""
    procs = []

    def start(folder):
        code = textwrap.dedent("""
            import fcntl, os, sys
            os.makedirs(sys.argv[1], exist_ok=True)
            f = open(os.path.join(sys.argv[1], ".lock"), "a+")
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            f.truncate(0)
            f.write(f"pid {os.getpid()} on otherhost since today: tools/train_cls.py\\n")
            f.flush()
            print("held", flush=True)
            sys.stdin.read()
            """)
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return f"pid {proc.pid} on otherhost"

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
    # s4 between this sweep's look at its lock and train_cls's claim.
    monkeypatch.setenv("FAKE_FINISH_WHEN", RUN.format(2))
    monkeypatch.setenv("FAKE_FINISH", os.pathsep.join([s1, s3]))
    monkeypatch.setenv("FAKE_REFUSE", RUN.format(4))
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


def test_train_cls_refusal_and_the_lock_probe_name_the_holder(tmp_path, hold):
    from randwire_d2.engine import claim_output_dir

    folder = str(tmp_path / "run")
    holder = hold(folder)
    with pytest.raises(RuntimeError) as refusal:
        claim_output_dir(folder)
    assert sweep_runner.refused_by(str(refusal.value)).startswith(holder)
    assert sweep_runner.held_by(folder).startswith(holder)
    assert sweep_runner.held_by(str(tmp_path / "free")) is None
