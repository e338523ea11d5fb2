"""Running a sweep's runs, each its own pretraining process, locally or as submitit jobs,
skipping finished runs and resuming interrupted ones. A run whose folder another process holds
is told apart by its exit status (EXIT_OUTPUT_DIR_IN_USE).
"""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import List, Sequence

from ..engine.pretrain import EXIT_OUTPUT_DIR_IN_USE
from ..utils.atomic import atomic_write
from .plan import Run
from .store import _warn, check_results, final_results, held_by, read_results, run_state

__all__ = ["RunInProgressElsewhere", "train_run", "run_sweep", "submit_sweep"]

# Each run's process runs this module (`python -m`) in ROOT, the folder that holds the package.
PRETRAIN = "randwire_d2.engine.pretrain"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class RunInProgressElsewhere(RuntimeError):
    """A run whose folder another process holds (another sweep's run): not a failure."""

    def __init__(self, name: str, holder: str):
        super().__init__(f"run {name} is in progress elsewhere: held by {holder}")
        self.name, self.holder = name, holder

    def __reduce__(self):  # submitit pickles what a job returns
        return type(self), (self.name, self.holder)


def train_command(run: Run, folder: str, num_gpus: int = 1, extra: Sequence[str] = ()) -> List[str]:
    """The pretraining command line of `run` in `folder` (resuming what is there)."""
    resume = ["--resume"] if run_state(folder) == "interrupted" else []
    cmd = [sys.executable, "-m", PRETRAIN, "--config-file", run.config_file]
    cmd += ["--num-gpus", str(num_gpus)]
    return cmd + [*extra, *resume, *run.opts, "OUTPUT_DIR", folder]


def train_run(run: Run, folder: str, num_gpus: int = 1, extra: Sequence[str] = (), main=True):
    """Train (or resume) one run to the end, then (`main`) write its results.json and return
    the results. A run another process holds raises RunInProgressElsewhere: one held before it
    starts, or one whose process exits with EXIT_OUTPUT_DIR_IN_USE (taken meanwhile)."""
    results, _ = read_results(folder)
    if results is not None:
        return results
    holder = held_by(folder)
    if holder:
        raise RunInProgressElsewhere(run.name, holder)
    os.makedirs(folder, exist_ok=True)
    log_path = os.path.join(folder, "sweep_log.txt")
    with open(log_path, "ab") as out:
        cmd = train_command(run, folder, num_gpus, extra)
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode == EXIT_OUTPUT_DIR_IN_USE:  # taken by another sweep after our look at it
        raise RunInProgressElsewhere(run.name, held_by(folder) or "another process")
    results = final_results(folder)
    if not main:
        return results
    problem = "no final evaluation in metrics.json" if results is None else check_results(results)
    if proc.returncode != 0 or problem:
        why = f"exit {proc.returncode}" + (f", {problem}" if problem else "")
        raise RuntimeError(f"run {run.name} failed ({why}): see {log_path}")
    atomic_write(os.path.join(folder, "results.json"), lambda f: json.dump(results, f), "w")
    return results


def run_sweep(
    runs: Sequence[Run], sweep_dir: str, jobs: int = 1, num_gpus: int = 1, log=print, warn=_warn
):
    """Train every unfinished run, `jobs` at a time; {name: error} of the runs that failed. A run
    another process holds is left to it, not counted as failed."""
    todo = []
    for r in runs:
        folder = os.path.join(sweep_dir, r.name)
        results, problem = read_results(folder)
        if problem:
            resume = " (resuming its checkpoints)" if run_state(folder) == "interrupted" else ""
            warn(f"{problem}; the run is not finished: training it again{resume}")
        if results is None:
            todo.append(r)
    log(f"{len(runs) - len(todo)} of {len(runs)} runs finished; training {len(todo)}")
    elsewhere = {}

    def one(run):
        folder = os.path.join(sweep_dir, run.name)
        state = run_state(folder)
        if state == "finished":
            log(f"[finished elsewhere] {run.name}: another sweep finished it")
            return run.name, None
        log(f"[{state}] {run.name}")
        try:
            train_run(run, folder, num_gpus)
        except RunInProgressElsewhere as e:
            log(f"[in progress elsewhere] {run.name}: held by {e.holder}")
            elsewhere[run.name] = e.holder
            return run.name, None
        except RuntimeError as e:
            return run.name, str(e)
        log(f"[finished] {run.name}")
        return run.name, None

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        failed = {name: err for name, err in pool.map(one, todo) if err}
    for name, holder in elsewhere.items():
        if run_state(os.path.join(sweep_dir, name)) == "finished":
            log(f"[finished elsewhere] {name}: another sweep finished it meanwhile (in the report)")
        else:
            log(
                f"[in progress elsewhere] {name}: held by {holder}; not counted as failed, and not "
                "in this report: run the sweep again (or --collect) once it ends"
            )
    return failed


def cluster_job(run: Run, folder: str, num_gpus: int, nodes: int, port: int = 29500):
    """What a submitit job runs on each of its `nodes` (one task per node): this node's part of
    a multi-machine run. Returns the results, or a RunInProgressElsewhere (not raised: submitit
    hands the caller a raised exception as text only)."""
    import submitit

    env = submitit.JobEnvironment()
    extra = []
    if nodes > 1:
        extra = ["--num-machines", str(nodes), "--machine-rank", str(env.node)]
        extra += ["--dist-url", f"tcp://{env.hostnames[0]}:{port}"]
    try:
        return train_run(run, folder, num_gpus, extra, main=env.node == 0)
    except RunInProgressElsewhere as e:
        return e


def submit_sweep(
    runs, sweep_dir: str, *, cluster=None, num_gpus=1, nodes=1, wait=False, log=print, **params
):
    """Submit every unfinished run as a submitit job (`params` to AutoExecutor); with `wait`,
    block until all end; {name: error} of the failed ones. Held runs are not submitted."""
    import submitit

    executor = submitit.AutoExecutor(folder=os.path.join(sweep_dir, "jobs", "%j"), cluster=cluster)
    executor.update_parameters(
        nodes=nodes, tasks_per_node=1, gpus_per_node=num_gpus, name="randwire_sweep", **params
    )
    todo = []
    for r in runs:
        folder = os.path.join(sweep_dir, r.name)
        holder = held_by(folder) if run_state(folder) != "finished" else None
        if holder:
            log(
                f"[in progress elsewhere] {r.name}: held by {holder}; not submitted, not counted "
                "as failed: submit again (or --collect) once it ends"
            )
        elif run_state(folder) != "finished":
            todo.append(r)
    jobs = [
        executor.submit(cluster_job, r, os.path.join(sweep_dir, r.name), num_gpus, nodes)
        for r in todo
    ]
    ids = {r.name: j.job_id for r, j in zip(todo, jobs)}
    atomic_write(os.path.join(sweep_dir, "jobs.json"), lambda f: json.dump(ids, f, indent=1), "w")
    if not wait:
        return {}
    failed = {}
    for r, j in zip(todo, jobs):
        try:
            outcome = j.result()
        except Exception as e:  # submitit re-raises the job's error, with its log's path
            failed[r.name] = str(e).splitlines()[-1] if str(e) else type(e).__name__
            continue
        if isinstance(outcome, RunInProgressElsewhere):
            holder = outcome.holder
            log(f"[in progress elsewhere] {r.name}: held by {holder}; not counted as failed")
    return failed
