"""randwire_d2/sweep/store.py: results files read strictly, records collected, a folder's plan."""

import json
import os

import pytest
from common import CLS_CONFIG as DEMO
from common import sweep_tool as sweep

from randwire_d2.sweep import expand, save_plan

RUN = "er_P0.2-sep_conv3x3-C16-small-s{}"  # the runs of DEMO x er:P=0.2, by seed
GOOD = {"val_32": {"top1": 60.0, "top5": 100.0}}


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


# Defect 11: corrupt or out-of-range results are "run again", named.


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


def test_a_sweep_folder_refuses_runs_of_another_plan(tmp_path):
    from randwire_d2.sweep import save_plan

    runs = expand([DEMO], [("er", {"P": 0.2})], seeds=[1], opts=["PRETRAIN.EPOCHS", "5"])
    save_plan(runs, str(tmp_path), {runs[0].name: (1, 1)})
    save_plan(runs, str(tmp_path), {runs[0].name: (1, 1)})  # the same plan again: fine
    other = expand([DEMO], [("er", {"P": 0.2})], seeds=[1], opts=["PRETRAIN.EPOCHS", "9"])
    with pytest.raises(ValueError, match="holds run er_P0.2-sep_conv3x3-C16-small-s1 of another"):
        save_plan(other, str(tmp_path), {other[0].name: (1, 1)})
