"""What a sweep runs: generator settings x node ops x seeds over base configs, each run a Run
(a base config and its overrides; plain data). A sweep has at most MAX_RUNS runs, counted before
any is expanded; keys the sweep sets per run cannot be overridden.
"""

import dataclasses
import math
from typing import Dict, List, Sequence, Tuple

from ..analysis import FIG3_GENERATORS, label
from ..config import GENERATOR_KEYS, load_config, set_generator

__all__ = ["Run", "PRESETS", "NODE_OPS", "MAX_RUNS", "parse_generators", "expand"]
__all__ += ["matching_channels", "run_complexity"]

NODE_OPS = ("sep_conv3x3", "conv3x3", "max_pool3x3_conv1x1", "avg_pool3x3_conv1x1")
# Runs per sweep: Fig. 6 (44 generator settings x 4 node ops x 5 seeds) is 880. A larger plan is
# refused before it is expanded (a typo like --seeds 1-1000000000 must not fill the memory).
MAX_RUNS = 2000
# A setting of each of the paper's generators, shown when one lacks its parameters.
EXAMPLES = {"er": "er:P=0.2", "ba": "ba:M=5", "ws": "ws:K=4,P=0.75"}
_C78 = "configs/imagenet/randwire_ws_c78_small.yaml"
_REGULAR = [
    "configs/imagenet/randwire_ws_c109_regular.yaml",
    "configs/imagenet/randwire_ws_c154_regular.yaml",
]
# Preset -> (base configs, generator settings, node ops, extra overrides). Fig. 3/6 train the
# small regime for 100 epochs (Sec. 4 "100 epochs, unless noted"); Table 2 for 250 (its config).
PRESETS = {
    "fig3": ([_C78], FIG3_GENERATORS, NODE_OPS[:1], ["PRETRAIN.EPOCHS", "100"]),
    "fig6": ([_C78], FIG3_GENERATORS, NODE_OPS, ["PRETRAIN.EPOCHS", "100"]),
    "table2": ([_C78], [("ws", {"K": 4, "P": 0.75})], NODE_OPS[:1], []),
    "table3": (_REGULAR, [("ws", {"K": 4, "P": 0.75})], NODE_OPS[:1], []),
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
    """er needs P, ba M, ws K and P, and nothing else; other generators check their own."""
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
    """{config key: the sweep option that sets it per run}: overrides of these are refused."""
    theta = [k for t in GENERATOR_KEYS.values() for k in t.values()]
    keys = {f"MODEL.RANDWIRE.{k}": "--generators" for k in ["GENERATOR", *theta]}
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
    """Every (config, generator setting, node op, seed) as a Run; C per op from `channels_for`."""
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
                    fields = (generator, dict(params), op, channels, regime, seed)
                    runs.append(Run(_name(*fields), config, *fields, run_opts))
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


def run_complexity(runs: Sequence[Run]) -> Dict[str, Tuple[int, int]]:
    """{run name: (FLOPs, params)} at 224x224 (Tables 2-3), in closed form."""
    from ..complexity import analytic_complexity

    return {r.name: analytic_complexity(load_config(r.config_file, r.opts)) for r in runs}
