"""randwire_d2/sweep/plan.py: generator settings, expansion, naming, presets, a plan's bounds."""

import tracemalloc

import pytest
from common import CLS_CONFIG as DEMO
from common import load_tool
from common import sweep_tool as sweep

from randwire_d2.graphs import parse_seeds
from randwire_d2.sweep import expand, parse_generators

ER_02 = ["--config-file", DEMO, "--generators", "er:P=0.2"]


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
