"""Sweeps: generator settings x node ops x seeds, each an ordinary tools/train_cls.py run.

A sweep folder holds one run folder per (generator setting, node op, C, regime, seed), named so a
person can read it (`ws_K4_P0.75-sep_conv3x3-C78-small-s1`), and `sweep.json`, the plan. A run is
finished when its folder holds a valid `results.json` (its final evaluation, written by the sweep
after the run: every metric a number in [0, 100]); a folder with checkpoints and no valid results
is resumed (`--resume`); others start afresh. Running the same sweep again therefore continues it
and trains each run once. A run whose folder another process holds (train_cls's OUTPUT_DIR lock:
a second sweep on the same folder) is in progress elsewhere, left to it, and not a failure.

A sweep has at most MAX_RUNS runs, counted before any is expanded.
"""

import dataclasses
import fcntl
import json
import math
import os
import re
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
    "read_results",
    "check_results",
    "final_results",
    "held_by",
    "refused_by",
    "RunInProgressElsewhere",
    "MAX_RUNS",
    "train_run",
    "run_sweep",
    "submit_sweep",
    "save_plan",
    "load_records",
]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_CLS = os.path.join(ROOT, "tools", "train_cls.py")
NODE_OPS = ("sep_conv3x3", "conv3x3", "max_pool3x3_conv1x1", "avg_pool3x3_conv1x1")
# Runs per sweep: Fig. 6 (44 generator settings x 4 node ops x 5 seeds) is 880. A larger plan is
# refused before it is expanded (a typo like --seeds 1-1000000000 must not fill the memory).
MAX_RUNS = 2000
# A run's results.json holds a few numbers per test crop; a larger file is not one.
MAX_RESULTS_BYTES = 2**20
MAX_PLAN_BYTES = 64 * 2**20
# A setting of each of the paper's generators, shown when one lacks its parameters.
EXAMPLES = {"er": "er:P=0.2", "ba": "ba:M=5", "ws": "ws:K=4,P=0.75"}
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


def _short(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _number(value: str, text: str, key: str):
    try:
        x = int(value) if value.lstrip("-").isdigit() else float(value)
    except ValueError:
        x = math.nan
    if not math.isfinite(x):
        raise ValueError(
            f"--generators {_short(text)} is invalid: {value!r} is not a number (a value of {key})"
        )
    return x


def check_theta(generator: str, names, where: str) -> None:
    """The paper's generators need all their parameters and no others (er: P, ba: M, ws: K and
    P); a registered generator's own function checks its parameters."""
    keys = GENERATOR_KEYS.get(generator)
    if keys is None:
        return
    needs = f"{generator} needs {' and '.join(keys)} (e.g. {EXAMPLES[generator]})"
    unknown = [k for k in names if k not in keys]
    missing = [k for k in keys if k not in names]
    for what, found in (("has unknown parameter", unknown), ("lacks parameter", missing)):
        if found:
            plural = "s" if len(found) > 1 else ""
            raise ValueError(f"{where} {what}{plural} {' and '.join(found)}: {needs}")


def parse_generators(texts: Sequence[str]) -> List[Tuple[str, Dict]]:
    """["er:P=0.1,0.2", "ws:K=4,P=0,0.5"] -> ER(0.1), ER(0.2), WS(4, 0), WS(4, 0.5): a value
    without `NAME=` continues the previous parameter's list; lists are crossed. The paper's
    generators need all their parameters; at most MAX_RUNS settings in all."""
    settings = []
    for text in texts:
        where = f"--generators {_short(text)}"
        generator, _, rest = text.partition(":")
        if not generator.isidentifier():
            raise ValueError(
                f"{where} is invalid: {generator!r} is not a generator name: expected "
                "GEN:NAME=V[,V...], e.g. er:P=0.2"
            )
        values: Dict[str, List] = {}
        key = None
        for item in rest.split(",") if rest else []:
            if "=" in item:
                key, _, item = item.partition("=")
                if not key.isidentifier():
                    raise ValueError(
                        f"{where} is invalid: {key!r} is not a parameter name: expected "
                        "GEN:NAME=V[,V...]"
                    )
                if key in values:
                    raise ValueError(f"{where} gives parameter {key} twice: give {key}=V1,V2")
                values[key] = []
            if key is None:
                raise ValueError(f"{where} is invalid: expected GEN:NAME=V[,V...]")
            values[key].append(_number(item, text, key))
        check_theta(generator, values, where)
        count = math.prod(len(v) for v in values.values())
        if len(settings) + count > MAX_RUNS:
            raise ValueError(
                f"{where} gives {count} settings ({len(settings)} before it): at most {MAX_RUNS} "
                "runs per sweep (sweep.MAX_RUNS); split the sweep"
            )
        combos = [{}]
        for k, vs in values.items():
            combos = [dict(c, **{k: v}) for c in combos for v in vs]
        settings += [(generator, c) for c in combos]
    return settings


def per_run_keys(match_flops: bool = False) -> Dict[str, str]:
    """{config key: the sweep option that sets it per run}: an override of one is refused, as
    the sweep would replace it (or, for WIRING_FILE, it would replace the sweep's wiring)."""
    keys = {"MODEL.RANDWIRE.GENERATOR": "--generators"}
    keys.update(
        {f"MODEL.RANDWIRE.{k}": "--generators" for t in GENERATOR_KEYS.values() for k in t.values()}
    )
    keys["MODEL.RANDWIRE.GENERATOR_PARAMS"] = "--generators"
    keys["MODEL.RANDWIRE.WIRING_FILE"] = "--generators and --seeds"
    keys["MODEL.RANDWIRE.NODE_OP"] = "--node-ops"
    keys["MODEL.RANDWIRE.SEED"] = keys["SEED"] = "--seeds"
    keys["OUTPUT_DIR"] = "--output"
    if match_flops:
        keys["MODEL.RANDWIRE.CHANNELS"] = "--match-flops"
    return keys


def check_overrides(opts: Sequence[str], match_flops: bool = False) -> None:
    """Refuse a KEY VALUE override the sweep sets per run, naming the option that sets it."""
    keys = per_run_keys(match_flops)
    for key, value in zip(opts[::2], opts[1::2]):
        flag = next((f for k, f in keys.items() if key == k or key.startswith(k + ".")), None)
        if flag is None:
            continue
        if key == "MODEL.RANDWIRE.WIRING_FILE":
            why = f"it would replace the wiring the sweep sets per run by {flag}"
        elif flag == "--match-flops":
            why = (
                f"{key} is set per run by --match-flops (C per node op keeps the FLOPs of the first "
                "op at the config file's C; --preset fig6 implies it): set C in the config file"
            )
        elif flag == "--output":
            why = f"{key} is set per run by --output (each run writes <output>/<run name>)"
        else:
            why = f"{key} is set per run by {flag}: give the values with {flag}"
        raise ValueError(f"override {key} {value} is refused: {why}")


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
    per node op (Fig. 6 keeps the FLOPs); by default the config's C. At most MAX_RUNS runs,
    counted first; overrides of keys the sweep sets per run are refused."""
    count = len(configs) * len(node_ops) * len(generators) * len(seeds)
    if count > MAX_RUNS:
        raise ValueError(
            f"the sweep has {count} runs ({len(configs)} configs x {len(node_ops)} node ops x "
            f"{len(generators)} generator settings x {len(seeds)} seeds): at most {MAX_RUNS} per "
            "sweep (sweep.MAX_RUNS); split it into sweeps with fewer --seeds or --generators, "
            "each with its own --output"
        )
    check_overrides(opts, match_flops=channels_for is not None)
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
                        f"generator {generator!r} (--generators) is invalid in a sweep: expected "
                        f"one of {sorted(GENERATOR_KEYS)} (their parameters are config keys)"
                    )
                set_generator(base.clone(), generator, params)  # checks the parameter names
                check_theta(generator, params, f"generator setting {generator} {params}")
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
    (Sec. 4.1, Fig. 6: "we adjust the factor C to keep the complexity"), FLOPs in closed form."""
    from ..complexity import analytic_complexity, find_channels

    cache = {}

    def channels_for(cfg, op):
        if op == reference_op:
            return cfg.MODEL.RANDWIRE.CHANNELS
        ref = cfg.clone()
        ref.MODEL.RANDWIRE.NODE_OP, ref.MODEL.RANDWIRE.SEED = reference_op, seed
        key = (op, ref.dump())
        if key not in cache:
            target, _ = analytic_complexity(ref)
            cfg = cfg.clone()
            cfg.MODEL.RANDWIRE.NODE_OP = op
            cache[key] = find_channels(cfg, target, seeds=[seed])[0]
        return cache[key]

    return channels_for


def check_results(results) -> Optional[str]:
    """What is wrong with a run's results, or None: {"val_<crop>": {"top1": %, ...}}, every
    metric a number in [0, 100]."""
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
    """(results, None) of a finished run; (None, what is wrong) when its results.json is corrupt
    (truncated, another structure, a metric outside [0, 100]): the run must be run again;
    (None, None) when there is none."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        return None, None
    if os.path.getsize(path) > MAX_RESULTS_BYTES:
        return None, f"{path} is larger than {MAX_RESULTS_BYTES} bytes: not a run's results"
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
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


class RunInProgressElsewhere(RuntimeError):
    """A run whose folder another process holds (another sweep's train_cls): not a failure."""

    def __init__(self, name: str, holder: str):
        super().__init__(f"run {name} is in progress elsewhere: held by {holder}")
        self.name, self.holder = name, holder

    def __reduce__(self):  # submitit pickles a job's exception
        return type(self), (self.name, self.holder)


def _holder(text: str) -> str:
    """ "pid 12 on host since <time>" of claim_output_dir's "<that>: <command line>"."""
    return text.strip().split(": ", 1)[0] or "another process"


def held_by(folder: str) -> Optional[str]:
    """Who holds `folder` as a live train_cls's OUTPUT_DIR (claim_output_dir keeps its `.lock`
    locked), or None. The probe takes the lock for an instant; a train_cls starting in that
    instant is refused, and refused_by recognizes that."""
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


def refused_by(log: str) -> Optional[str]:
    """The holder named by train_cls's refusal of an OUTPUT_DIR in use ("is in use by"), if `log`
    holds one."""
    found = re.search(r"OUTPUT_DIR=.* is in use by (.+?)\. Two runs in one OUTPUT_DIR", log)
    return _holder(found.group(1)) if found else None


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
    the results. A run another process holds raises RunInProgressElsewhere."""
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
        start = out.tell()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log_path, "rb") as f:
            f.seek(max(start, os.path.getsize(log_path) - 2**16))
            holder = refused_by(f.read().decode(errors="replace"))
        if holder:  # another sweep took the folder after our look at its lock
            raise RunInProgressElsewhere(run.name, holder)
    results = final_results(folder)
    if not main:
        return results
    problem = "no final evaluation in metrics.json" if results is None else check_results(results)
    if proc.returncode != 0 or problem:
        why = f"exit {proc.returncode}" + (f", {problem}" if problem else "")
        raise RuntimeError(f"run {run.name} failed ({why}): see {log_path}")
    atomic_write(os.path.join(folder, "results.json"), lambda f: json.dump(results, f), "w")
    return results


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def run_sweep(
    runs: Sequence[Run], sweep_dir: str, jobs: int = 1, num_gpus: int = 1, log=print, warn=_warn
):
    """Train every run not finished yet, `jobs` at a time; {name: error} of the runs that failed.
    A run with corrupt results is trained again (warned); a run another process holds is logged
    as in progress elsewhere, left to it and not counted as failed; a run another sweep finished
    meanwhile is not trained again."""
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
    a multi-machine train_cls run."""
    import submitit

    env = submitit.JobEnvironment()
    extra = []
    if nodes > 1:
        extra = ["--num-machines", str(nodes), "--machine-rank", str(env.node)]
        extra += ["--dist-url", f"tcp://{env.hostnames[0]}:{port}"]
    return train_run(run, folder, num_gpus, extra, main=env.node == 0)


def submit_sweep(
    runs, sweep_dir: str, *, cluster=None, num_gpus=1, nodes=1, wait=False, log=print, **params
):
    """Submit every unfinished run as a submitit job (Slurm; `cluster="local"` runs them here, as
    the tests do); `params` go to `AutoExecutor.update_parameters` (slurm_partition,
    timeout_min, ...). With `wait`, block until all end; {name: error} of the failed ones. A run
    another process holds is logged as in progress elsewhere, not submitted nor failed."""
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
            j.result()
        except Exception as e:  # submitit re-raises the job's error, with its log's path
            if "is in progress elsewhere: held by" in str(e):
                log(f"[in progress elsewhere] {r.name}: not counted as failed")
                continue
            failed[r.name] = str(e).splitlines()[-1] if str(e) else type(e).__name__
    return failed


def save_plan(runs: Sequence[Run], sweep_dir: str, complexity: Dict[str, Tuple[int, int]]):
    """Write sweep.json. A run folder of an earlier plan with other overrides is refused: its
    results would be skipped as finished, though they answer another question."""
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
    if os.path.getsize(path) > MAX_PLAN_BYTES:
        raise ValueError(f"{path} is larger than {MAX_PLAN_BYTES} bytes: not a sweep plan")
    try:
        with open(path, encoding="utf-8") as f:
            plan = json.load(f)
    except ValueError as e:
        raise ValueError(
            f"{path} is unreadable JSON ({e}): not a plan tools/sweep.py wrote"
        ) from None
    keys = {"name", "generator", "params"}
    if not isinstance(plan, list) or not all(isinstance(r, dict) and keys <= set(r) for r in plan):
        raise ValueError(f"{path} is not a list of runs: not a plan tools/sweep.py wrote")
    return plan


def load_records(sweep_dir: str, warn=_warn) -> List[Dict]:
    """The run records of a sweep folder (plan + results so far), for `report.report`. A run
    with corrupt results is warned about and left out (results None): it needs to run again."""
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
