"""Run state and results on disk: a sweep folder holds `sweep.json` (the plan with each run's
FLOPs and params) and one readable run folder per run (`ws_K4_P0.75-sep_conv3x3-C78-small-s1`).
A run with a valid `results.json` is finished, one with checkpoints is resumed, others start
afresh, so rerunning a sweep continues it; a run whose folder another process holds is left to it.
"""

import dataclasses
import fcntl
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from ..analysis import label
from ..engine.output_dir import metrics_record
from ..trust import read_bounded
from ..utils.atomic import atomic_write
from .plan import Run, _short

__all__ = ["run_state", "read_results", "check_results", "final_results", "held_by"]
__all__ += ["save_plan", "load_records"]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def check_results(results) -> Optional[str]:
    """What is wrong with a run's results ({"val_<crop>": {"top1": %, ...}}), or None."""
    form = 'expected {"val_<crop>": {"top1": %, "top5": %}}'
    if not isinstance(results, dict) or not results:
        return f"{form}, found {_short(results)}"
    for crop, metrics in results.items():
        if not crop.startswith("val_") or not isinstance(metrics, dict) or "top1" not in metrics:
            return f"{form}, found {crop!r}: {_short(metrics)}"
        for metric, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"{crop}/{metric} = {_short(value)} is not a number in [0, 100]"
            if not 0 <= value <= 100:
                return f"{crop}/{metric} = {value!r} is outside [0, 100]"
    return None


def read_results(folder: str) -> Tuple[Optional[Dict], Optional[str]]:
    """(results, None) of a finished run, (None, what is wrong) for a corrupt results.json (the
    run must be run again), (None, None) when there is none."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        return None, None
    try:
        results = json.loads(read_bounded(path, "results.json", "results", text=True))
    except (OSError, ValueError) as e:  # too large, JSONDecodeError and UnicodeDecodeError
        return None, f"{path} is unreadable JSON ({e})"
    problem = check_results(results)
    return (None, f"{path}: {problem}") if problem else (results, None)


def run_state(folder: str) -> str:
    """ "finished" (valid results.json), "interrupted" (checkpoints, no valid results) or "new"."""
    if read_results(folder)[0] is not None:
        return "finished"
    if os.path.isfile(os.path.join(folder, "last_checkpoint")):
        return "interrupted"
    return "new"


def final_results(folder: str) -> Optional[Dict]:
    """{"val_224": {"top1", "top5"}, ...} of metrics.json's last evaluation, if the final one."""
    path = os.path.join(folder, "metrics.json")
    if not os.path.isfile(path):
        return None
    last, found = -1, {}
    with open(path) as f:
        for line in f:
            row = metrics_record(line)
            if row is None:
                continue
            it = row["iteration"]
            last = max(last, it)
            evals = {k: v for k, v in row.items() if k.startswith("val_")}
            if evals:
                found = {"iteration": it, **evals}
    if not found or found["iteration"] != last:
        return None
    results: Dict[str, Dict] = {}
    for key, value in found.items():
        if "/" in key:
            crop, metric = key.split("/")
            results.setdefault(crop, {})[metric] = value
    return results


def _holder(text: str) -> str:
    """ "pid 12 on host since <time>" of claim_output_dir's "<that>: <command line>"."""
    return text.strip().split(": ", 1)[0] or "another process"


def held_by(folder: str) -> Optional[str]:
    """Who holds `folder` as a live run's OUTPUT_DIR (its `.lock` is locked), or None. The probe
    locks for an instant; a run starting then exits with EXIT_OUTPUT_DIR_IN_USE, which the runner
    recognizes."""
    path = os.path.join(folder, ".lock")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "a+") as f:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                return _holder(f.read(4096))
            fcntl.lockf(f, fcntl.LOCK_UN)
    except OSError:  # unreadable: train_cls will say what is wrong
        return None
    return None


def save_plan(runs: Sequence[Run], sweep_dir: str, complexity: Dict[str, Tuple[int, int]]):
    """Write sweep.json, refusing run folders of an earlier plan with other overrides."""
    path = os.path.join(sweep_dir, "sweep.json")
    if os.path.isfile(path):
        before = {r["name"]: r for r in _read_plan(path)}
        for r in runs:
            old = before.get(r.name)
            if old and (old["config_file"], list(old["opts"])) != (r.config_file, list(r.opts)):
                raise ValueError(
                    f"{sweep_dir} holds run {r.name} of another plan (config {old['config_file']}, "
                    f"overrides {old['opts']}; now {r.config_file}, {list(r.opts)}): choose "
                    "another --output, or the same config and overrides"
                )
    os.makedirs(sweep_dir, exist_ok=True)
    plan = [
        dict(dataclasses.asdict(r), flops=complexity[r.name][0], params_count=complexity[r.name][1])
        for r in runs
    ]
    atomic_write(os.path.join(sweep_dir, "sweep.json"), lambda f: json.dump(plan, f, indent=1), "w")


def _read_plan(path: str) -> List[Dict]:
    """The runs of a sweep.json, or a ValueError naming the file."""
    try:
        plan = json.loads(read_bounded(path, "sweep plan", "results", text=True))
    except ValueError as e:
        raise ValueError(
            f"{path} is unreadable JSON ({e}): not a plan tools/sweep.py wrote"
        ) from None
    keys = {"name", "generator", "params"}
    if not isinstance(plan, list) or not all(isinstance(r, dict) and keys <= set(r) for r in plan):
        raise ValueError(f"{path} is not a list of runs: not a plan tools/sweep.py wrote")
    return plan


def load_records(sweep_dir: str, warn=_warn) -> List[Dict]:
    """A sweep folder's run records (plan + results so far); corrupt results warned, left None."""
    path = os.path.join(sweep_dir, "sweep.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{sweep_dir} holds no sweep.json: not a sweep folder")
    records = []
    for r in _read_plan(path):
        results, problem = read_results(os.path.join(sweep_dir, r["name"]))
        if problem:
            warn(
                f"{problem}; run {r['name']} is left out of the report: it needs to be run again "
                "(run the sweep's command again)"
            )
        records.append(dict(r, group=label(r["generator"], r["params"]), results=results))
    return records
