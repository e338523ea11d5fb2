"""Sweeps: generator settings x node ops x seeds, each an ordinary tools/train_cls.py run.

A sweep folder holds one run folder per (generator setting, node op, C, regime, seed), named so a
person can read it (`ws_K4_P0.75-sep_conv3x3-C78-small-s1`), and `sweep.json`, the plan. A run is
finished when its folder holds `results.json` (its final evaluation, written by the sweep after
the run); a folder with checkpoints and no results is resumed (`--resume`); others start afresh.
Running the same sweep again therefore continues it and trains each run once.
"""

import dataclasses
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

from ..analysis import FIG3_GENERATORS, label
from ..checkpoint import atomic_write
from ..config import GENERATOR_KEYS, load_config, set_generator

__all__ = [
    "Run",
    "PRESETS",
    "NODE_OPS",
    "parse_generators",
    "expand",
    "matching_channels",
    "run_state",
    "final_results",
    "train_run",
    "run_sweep",
    "submit_sweep",
    "save_plan",
    "load_records",
]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_CLS = os.path.join(ROOT, "tools", "train_cls.py")
NODE_OPS = ("sep_conv3x3", "conv3x3", "max_pool3x3_conv1x1", "avg_pool3x3_conv1x1")
_C78 = "configs/imagenet/randwire_ws_c78_small.yaml"
# Preset -> (base configs, generator settings, node ops, extra overrides). Fig. 3/6 train the
# small regime for 100 epochs (Sec. 4 "100 epochs, unless noted"); Table 2 for 250 (its config).
PRESETS = {
    "fig3": ([_C78], FIG3_GENERATORS, NODE_OPS[:1], ["PRETRAIN.EPOCHS", "100"]),
    "fig6": ([_C78], FIG3_GENERATORS, NODE_OPS, ["PRETRAIN.EPOCHS", "100"]),
    "table2": ([_C78], [("ws", {"K": 4, "P": 0.75})], NODE_OPS[:1], []),
    "table3": (
        [
            "configs/imagenet/randwire_ws_c109_regular.yaml",
            "configs/imagenet/randwire_ws_c154_regular.yaml",
        ],
        [("ws", {"K": 4, "P": 0.75})],
        NODE_OPS[:1],
        [],
    ),
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One training of a sweep: a base config and the overrides that make it this network."""

    name: str
    config_file: str
    generator: str
    params: Dict
    node_op: str
    channels: int
    regime: str
    seed: int
    opts: Tuple[str, ...]

    @property
    def group(self) -> str:
        return label(self.generator, self.params)


def parse_generators(texts: Sequence[str]) -> List[Tuple[str, Dict]]:
    """["er:P=0.1,0.2", "ws:K=4,P=0,0.5"] -> ER(0.1), ER(0.2), WS(4, 0), WS(4, 0.5): a value
    without `NAME=` continues the previous parameter's list; lists are crossed."""
    settings = []
    for text in texts:
        generator, _, rest = text.partition(":")
        values: Dict[str, List] = {}
        key = None
        for item in filter(None, rest.split(",")):
            if "=" in item:
                key, _, item = item.partition("=")
                values[key] = []
            if key is None:
                raise ValueError(f"--generators {text!r} is invalid: expected GEN:NAME=V[,V...]")
            values[key].append(int(item) if item.lstrip("-").isdigit() else float(item))
        combos = [{}]
        for k, vs in values.items():
            combos = [dict(c, **{k: v}) for c in combos for v in vs]
        settings += [(generator, c) for c in combos]
    return settings


def _name(generator, params, node_op, channels, regime, seed) -> str:
    theta = "_".join(f"{k}{v:g}" for k, v in params.items())
    return f"{generator}_{theta}-{node_op}-C{channels}-{regime}-s{seed}"


def expand(
    configs: Sequence[str],
    generators: Sequence[Tuple[str, Dict]],
    node_ops: Sequence[str] = NODE_OPS[:1],
    seeds: Sequence[int] = range(1, 6),
    opts: Sequence[str] = (),
    channels_for=None,
) -> List[Run]:
    """Every (config, generator setting, node op, seed) as a Run. `channels_for(cfg, op)` gives C
    per node op (Fig. 6 keeps the FLOPs); by default the config's C."""
    runs = []
    for config in configs:
        base = load_config(config, opts, freeze=False)
        for op in node_ops:
            base.MODEL.RANDWIRE.NODE_OP = op
            channels = channels_for(base, op) if channels_for else base.MODEL.RANDWIRE.CHANNELS
            regime = base.MODEL.RANDWIRE.REGIME
            for generator, params in generators:
                if generator not in GENERATOR_KEYS:
                    raise ValueError(
                        f"generator {generator!r} is invalid in a sweep: expected one of "
                        f"{sorted(GENERATOR_KEYS)} (their parameters are config keys)"
                    )
                set_generator(base.clone(), generator, params)  # checks the parameter names
                keys = GENERATOR_KEYS[generator]
                theta = [(f"MODEL.RANDWIRE.{keys[k]}", v) for k, v in params.items()]
                for seed in seeds:
                    pairs = [
                        ("MODEL.RANDWIRE.GENERATOR", generator),
                        *theta,
                        ("MODEL.RANDWIRE.NODE_OP", op),
                        ("MODEL.RANDWIRE.CHANNELS", channels),
                        ("MODEL.RANDWIRE.SEED", seed),
                        # Each instance also gets its own initialization and data order.
                        ("SEED", seed),
                    ]
                    run_opts = tuple(opts) + tuple(str(x) for kv in pairs for x in kv)
                    name = _name(generator, params, op, channels, regime, seed)
                    runs.append(
                        Run(
                            name,
                            config,
                            generator,
                            dict(params),
                            op,
                            channels,
                            regime,
                            seed,
                            run_opts,
                        )
                    )
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"the sweep has runs {dup[:3]} twice: give each setting once")
    return runs


def matching_channels(reference_op: str = "sep_conv3x3", seed: int = 1):
    """channels_for(cfg, op): C for which `op` has the FLOPs of `reference_op` at the config's C
    (Sec. 4.1, Fig. 6: "we adjust the factor C to keep the complexity")."""
    from ..complexity import find_channels, model_complexity

    cache = {}

    def channels_for(cfg, op):
        if op == reference_op:
            return cfg.MODEL.RANDWIRE.CHANNELS
        ref = cfg.clone()
        ref.MODEL.RANDWIRE.NODE_OP, ref.MODEL.RANDWIRE.SEED = reference_op, seed
        key = (op, ref.dump())
        if key not in cache:
            target, _ = model_complexity(ref)
            cfg = cfg.clone()
            cfg.MODEL.RANDWIRE.NODE_OP = op
            cache[key] = find_channels(cfg, target, seeds=[seed])[0]
        return cache[key]

    return channels_for


def run_state(folder: str) -> str:
    """ "finished" (results.json), "interrupted" (checkpoints, no results) or "new"."""
    if os.path.isfile(os.path.join(folder, "results.json")):
        return "finished"
    if os.path.isfile(os.path.join(folder, "last_checkpoint")):
        return "interrupted"
    return "new"


def final_results(folder: str) -> Optional[Dict]:
    """{"val_224": {"top1", "top5"}, ...} of the last evaluation in metrics.json, if it is the
    final one (at the last iteration written)."""
    path = os.path.join(folder, "metrics.json")
    if not os.path.isfile(path):
        return None
    last, found = -1, {}
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            it = row.get("iteration", -1)
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


def train_command(run: Run, folder: str, num_gpus: int = 1, extra: Sequence[str] = ()) -> List[str]:
    """The tools/train_cls.py command line of `run` in `folder` (resuming what is there)."""
    resume = ["--resume"] if run_state(folder) == "interrupted" else []
    return [
        sys.executable,
        TRAIN_CLS,
        "--config-file",
        run.config_file,
        "--num-gpus",
        str(num_gpus),
        *extra,
        *resume,
        *run.opts,
        "OUTPUT_DIR",
        folder,
    ]


def train_run(run: Run, folder: str, num_gpus: int = 1, extra: Sequence[str] = (), main=True):
    """Train (or resume) one run to the end, then (`main`) write its results.json and return
    the results."""
    if run_state(folder) != "finished":
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "sweep_log.txt"), "a") as out:
            cmd = train_command(run, folder, num_gpus, extra)
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        results = final_results(folder)
        if not main:
            return results
        if proc.returncode != 0 or results is None:
            raise RuntimeError(
                f"run {run.name} failed (exit {proc.returncode}): see {folder}/sweep_log.txt"
            )
        atomic_write(os.path.join(folder, "results.json"), lambda f: json.dump(results, f), "w")
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)


def run_sweep(runs: Sequence[Run], sweep_dir: str, jobs: int = 1, num_gpus: int = 1, log=print):
    """Train every run not finished yet, `jobs` at a time; {name: error} of the runs that failed."""
    todo = [r for r in runs if run_state(os.path.join(sweep_dir, r.name)) != "finished"]
    log(f"{len(runs) - len(todo)} of {len(runs)} runs finished; training {len(todo)}")

    def one(run):
        folder = os.path.join(sweep_dir, run.name)
        log(f"[{run_state(folder)}] {run.name}")
        try:
            train_run(run, folder, num_gpus)
        except RuntimeError as e:
            return run.name, str(e)
        log(f"[finished] {run.name}")
        return run.name, None

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return {name: err for name, err in pool.map(one, todo) if err}


def cluster_job(run: Run, folder: str, num_gpus: int, nodes: int, port: int = 29500):
    """What a submitit job runs on each of its `nodes` (one task per node): this node's part of
    a multi-machine train_cls run."""
    import submitit

    env = submitit.JobEnvironment()
    extra = []
    if nodes > 1:
        extra = ["--num-machines", str(nodes), "--machine-rank", str(env.node)]
        extra += ["--dist-url", f"tcp://{env.hostnames[0]}:{port}"]
    return train_run(run, folder, num_gpus, extra, main=env.node == 0)


def submit_sweep(runs, sweep_dir: str, *, cluster=None, num_gpus=1, nodes=1, wait=False, **params):
    """Submit every unfinished run as a submitit job (Slurm; `cluster="local"` runs them here, as
    the tests do); `params` go to `AutoExecutor.update_parameters` (slurm_partition,
    timeout_min, ...). With `wait`, block until all end; {name: error} of the failed ones."""
    import submitit

    executor = submitit.AutoExecutor(folder=os.path.join(sweep_dir, "jobs", "%j"), cluster=cluster)
    executor.update_parameters(
        nodes=nodes, tasks_per_node=1, gpus_per_node=num_gpus, name="randwire_sweep", **params
    )
    todo = [r for r in runs if run_state(os.path.join(sweep_dir, r.name)) != "finished"]
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
            j.result()
        except Exception as e:  # submitit re-raises the job's error, with its log's path
            failed[r.name] = str(e).splitlines()[-1] if str(e) else type(e).__name__
    return failed


def save_plan(runs: Sequence[Run], sweep_dir: str, complexity: Dict[str, Tuple[int, int]]):
    """Write sweep.json. A run folder of an earlier plan with other overrides is refused: its
    results would be skipped as finished, though they answer another question."""
    path = os.path.join(sweep_dir, "sweep.json")
    if os.path.isfile(path):
        with open(path) as f:
            before = {r["name"]: r for r in json.load(f)}
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


def load_records(sweep_dir: str) -> List[Dict]:
    """The run records of a sweep folder (plan + results so far), for `report.report`."""
    path = os.path.join(sweep_dir, "sweep.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{sweep_dir} holds no sweep.json: not a sweep folder")
    with open(path) as f:
        plan = json.load(f)
    records = []
    for r in plan:
        folder = os.path.join(sweep_dir, r["name"])
        results = None
        if run_state(folder) == "finished":
            with open(os.path.join(folder, "results.json")) as f:
                results = json.load(f)
        records.append(dict(r, group=label(r["generator"], r["params"]), results=results))
    return records
