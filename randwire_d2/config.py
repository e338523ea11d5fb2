"""Every key randwire_d2 reads (`add_randwire_config`), and how configs are loaded: yaml
(`load_config`) and LazyConfig python files (`load_lazy_config`)."""

import ast
import difflib
import os
from typing import List, Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import LazyConfig, get_cfg
from detectron2.config.compat import downgrade_config, upgrade_config
from omegaconf import DictConfig, ListConfig, OmegaConf

from .limits import check_config_sizes
from .trust import read_bounded
from .trust.targets import bind_targets, check_model_size
from .trust.yaml_safe import UnsafeConfigError, load_yaml_with_base

__all__ = ["add_randwire_config", "load_config", "read_yaml", "UnsafeConfigError"]
__all__ += ["load_lazy_config", "LAZY_KEYS", "is_lazy_yaml", "check_lazy_overrides", "flatten_lazy"]
__all__ += ["explicit_keys", "flatten", "GENERATOR_KEYS", "generator_params", "set_generator"]


def add_randwire_config(cfg):
    """Add every key randwire_d2 reads to a Detectron2 config (in place), with its default."""
    _C = cfg
    _C.MODEL.RANDWIRE = CN()
    # Random graph model of the network generator g(theta, s): "ws", "er", "ba" or a name added
    # with randwire_d2.graphs.register_generator.
    _C.MODEL.RANDWIRE.GENERATOR = "ws"
    # Node count N of Table 1 (regular regime: conv2 has N/2 nodes), excluding input/output nodes.
    _C.MODEL.RANDWIRE.NUM_NODES = 32
    # Generator seed s; the paper's instances are seeds 1..5. Each stage derives its own graph.
    _C.MODEL.RANDWIRE.SEED = 1
    # WS(K, P): K/2 ring neighbours per side (K even, 2 <= K < N), rewiring probability P;
    # ER(P): edge probability P; BA(M): edges added with each new node, 1 <= M < N.
    _C.MODEL.RANDWIRE.WS_K = 4
    _C.MODEL.RANDWIRE.WS_P = 0.75
    _C.MODEL.RANDWIRE.ER_P = 0.2
    _C.MODEL.RANDWIRE.BA_M = 5
    # Parameters (theta) of a user-registered generator, as keyword arguments.
    _C.MODEL.RANDWIRE.GENERATOR_PARAMS = CN(new_allowed=True)
    # Channel count C of Table 1 (C=78 small; C=109 or 154 regular).
    _C.MODEL.RANDWIRE.CHANNELS = 78
    # Complexity regime of Table 1: "small" (conv2 is one conv) or "regular" (conv2 is random).
    _C.MODEL.RANDWIRE.REGIME = "small"
    # Node transformation (Fig. 6): "sep_conv3x3" (paper default), "conv3x3",
    # "max_pool3x3_conv1x1", "avg_pool3x3_conv1x1", or a name added with register_node_op.
    _C.MODEL.RANDWIRE.NODE_OP = "sep_conv3x3"
    # Normalization of every conv: "BN", "FrozenBN", "SyncBN", "naiveSyncBN", "GN".
    _C.MODEL.RANDWIRE.NORM = "BN"
    # Stage outputs the trunk returns (conv1..conv5; strides 2, 4, 8, 16, 32).
    _C.MODEL.RANDWIRE.OUT_FEATURES = ["conv5"]
    # A saved wiring (JSON from NetworkWiring.save); when set it overrides the generator keys.
    _C.MODEL.RANDWIRE.WIRING_FILE = ""
    # Edge removal (Sec. 4.2): per training minibatch, the probability of removing one random
    # edge whose target node has input degree > 1 (0.1 in the regular regime). Never in eval.
    _C.MODEL.RANDWIRE.DROP_EDGE_PROB = 0.0
    # How wired stages run: "fast" (fused aggregation + ReLU, norms folded where exact; Triton
    # node kernels only where a GPU run measured them faster, none yet), "triton" (those kernels
    # or an error; on CPU only under TRITON_INTERPRET=1), "eager" ("fast" without Triton) or
    # "reference" (the per-node loop). Same weights and function; chosen once at build, logged.
    _C.MODEL.RANDWIRE.EXECUTION = "fast"
    # Store two activations per node instead of four, recomputing aggregation + ReLU in backward
    # (Pleiss et al. 2017; eager fast path). Trades speed for memory: docs/speed_and_memory.md.
    _C.MODEL.RANDWIRE.MEMORY_EFFICIENT = False
    # With MEMORY_EFFICIENT, also recompute the depthwise conv: one activation per node.
    _C.MODEL.RANDWIRE.RECOMPUTE_CONVS = False
    # Regional torch.compile of the wired stages: "" (eager), "node" (one region per node shape:
    # short warm-up) or "stage" (one graph per stage: more fusion, longer warm-up). Compiled stages
    # run the per-node loop instead of EXECUTION's fast path; state-dict keys are unchanged.
    _C.MODEL.RANDWIRE.COMPILE = ""

    _C.MODEL.CLASSIFIER = CN()
    # Number of classes of the fc layer (1000 for ImageNet).
    _C.MODEL.CLASSIFIER.NUM_CLASSES = 1000
    # Channels of the 1x1 conv before global average pooling (Table 1: 1280).
    _C.MODEL.CLASSIFIER.HEAD_CHANNELS = 1280
    # Dropout rate before the fc layer (0.2 in the regular regime, Sec. 4.2).
    _C.MODEL.CLASSIFIER.DROPOUT = 0.0
    # Label smoothing coefficient of the training loss (0.1 in the paper).
    _C.MODEL.CLASSIFIER.LABEL_SMOOTHING = 0.1

    # Keep OUTPUT_DIR/model_best.pth, the checkpoint of the best evaluation so far by this
    # metric: "" (off), "auto" (the task's main metric: val_<TEST_CROPS[0]>/top1 for the
    # classifier, bbox/AP for detectors) or a name the evaluation reports ("segm/AP", "bbox/AP50").
    _C.TEST.BEST_CHECKPOINT_METRIC = ""
    # "max" (accuracy, AP) or "min" (an error or a loss).
    _C.TEST.BEST_CHECKPOINT_MODE = "max"

    _C.PRETRAIN = CN()
    # ImageFolder root holding train/<class>/* and val/<class>/* (ImageNet's layout).
    _C.PRETRAIN.DATA_ROOT = "datasets/imagenet"
    # Training length in epochs, fractions allowed (Sec. 4: 100; small regime, Table 2: 250).
    _C.PRETRAIN.EPOCHS = 100.0
    # Linear warmup length in epochs, from SOLVER.WARMUP_FACTOR x peak lr (Goyal et al.: 5).
    _C.PRETRAIN.WARMUP_EPOCHS = 5.0
    # Learning rate per 256 images; peak lr = this x SOLVER.IMS_PER_BATCH / 256 (Sec. 4: 0.1).
    _C.PRETRAIN.LR_PER_256 = 0.1
    # Side of the RandomResizedCrop training crop (224 on ImageNet).
    _C.PRETRAIN.TRAIN_CROP = 224
    # Range of the crop's area as a fraction of the image (RandomResizedCrop's scale).
    _C.PRETRAIN.TRAIN_CROP_SCALE = [0.08, 1.0]
    # Evaluation crop sides; Tables 2-3 test at 224, Table 4 at 320.
    _C.PRETRAIN.TEST_CROPS = [224, 320]
    # Center crop / resized shorter side at evaluation (224 / 256 = 0.875).
    _C.PRETRAIN.TEST_CROP_RATIO = 0.875
    # Checkpoint period in epochs (fractions allowed; at least one iteration).
    _C.PRETRAIN.CHECKPOINT_PERIOD_EPOCHS = 1.0
    # Evaluation period in epochs (fractions allowed); 0 evaluates only after training.
    _C.PRETRAIN.EVAL_PERIOD_EPOCHS = 10.0
    # Mixed precision dtype on GPU when SOLVER.AMP.ENABLED: "bfloat16" or "float16".
    _C.PRETRAIN.AMP_DTYPE = "bfloat16"
    # Train and evaluate in channels_last. Off: which layout wins depends on the GPU and dtype
    # (`benchmarks/speed.py layouts` measures it).
    _C.PRETRAIN.CHANNELS_LAST = False
    # Capture the whole training step in a CUDA graph after a few eager steps and replay it (CUDA
    # only; fixed batch shapes; float32 or bfloat16 AMP: float16's GradScaler is refused).
    _C.PRETRAIN.CUDA_GRAPHS = False
    # Where training JPEGs are decoded and augmented: "cpu" (PIL in the workers) or "cuda"
    # (batched nvJPEG on the GPU, same crops and flips; non-JPEG files still decode in workers).
    _C.PRETRAIN.DECODE = "cpu"
    return cfg


def load_config(
    config_file: str, opts: Sequence[str] = (), freeze: bool = True, allow_unsafe: bool = False
) -> CN:
    """Detectron2's defaults + every randwire_d2 key, then `config_file` (with `_BASE_`), then
    the KEY VALUE list `opts`; an integer for a float key is taken as that float (yacs refuses
    it). Python yaml tags are refused unless `allow_unsafe`."""
    cfg = add_randwire_config(get_cfg())
    loaded = read_yaml(config_file, allow_unsafe)
    if is_lazy_yaml(config_file, loaded):
        raise ValueError(
            f"config file {config_file!r} is a lazy run's saved LazyConfig (keys "
            f"{[k for k in loaded if k in LAZY_KEYS]}), not a yaml config: give it to "
            "tools/lazyconfig_train_net.py (or predict/export), with key=value overrides"
        )
    if loaded.get("VERSION", cfg.VERSION) == cfg.VERSION:
        cfg.merge_from_other_cfg(type(cfg)(_ints_as_floats(cfg, loaded)))
    else:  # an older Detectron2 config: upgraded as CfgNode.merge_from_file does
        old = downgrade_config(cfg, to_version=loaded["VERSION"])
        old.merge_from_other_cfg(type(cfg)(loaded))
        upgraded = upgrade_config(old)
        cfg.clear()
        cfg.update(upgraded)
    opts = list(opts)
    for i, item in enumerate(opts):
        if isinstance(item, str) and item.startswith("-" if i % 2 == 0 else "--"):
            raise ValueError(
                f"override {item!r} is invalid: expected KEY VALUE pairs (options such as "
                "--resume go before the overrides)"
            )
    if len(opts) % 2:
        raise ValueError(f"overrides {opts} are invalid: expected KEY VALUE pairs")
    defaults = flatten(cfg)
    for i in range(0, len(opts), 2):
        if isinstance(defaults.get(opts[i]), float) and isinstance(_literal(opts[i + 1]), int):
            opts[i + 1] = str(float(_literal(opts[i + 1])))
    cfg.merge_from_list(opts)
    check_config_sizes(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def read_yaml(config_file: str, allow_unsafe: bool = False) -> dict:
    """The yaml `config_file` merged with its `_BASE_` chain, as a dict, parsed as data; with
    `allow_unsafe` a file with python tags loads through Detectron2's unsafe loader instead."""
    if not config_file:
        raise ValueError("no config given: pass --config-file FILE")
    if not os.path.exists(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    try:
        return load_yaml_with_base(config_file, "config file")
    except UnsafeConfigError:
        if not allow_unsafe:
            raise
    read_bounded(config_file, "config file", "config")  # regular and bounded, unsafe or not
    return CN.load_yaml_with_base(config_file, allow_unsafe=True)


# Top-level keys of a LazyConfig (Detectron2's convention). A yaml holding them and no
# upper-case (yacs) key is a lazy run's saved config.
LAZY_KEYS = ("model", "dataloader", "train", "optimizer", "lr_multiplier")


def is_lazy_yaml(config_file: str, loaded: dict) -> bool:
    """Whether the yaml `loaded` from `config_file` is a lazy run's saved config."""
    keys = [str(k) for k in loaded]
    lazy = [k for k in keys if k in LAZY_KEYS]
    yacs = [k for k in keys if k.upper() == k]
    if lazy and yacs:
        raise ValueError(
            f"config {config_file!r} mixes yaml config keys {yacs} and LazyConfig keys {lazy}: "
            "a yaml config has upper-case keys (MODEL, DATASETS, ...), a lazy run's saved "
            f"config.yaml lower-case ones {list(LAZY_KEYS)}"
        )
    return bool(lazy)


def load_lazy_config(config_file: str, overrides: Sequence[str] = (), allow_unsafe: bool = False):
    """A LazyConfig from a python file (code: trust it) or a lazy run's config.yaml (data: each
    `_target_` must be one trust.targets allows, unless `allow_unsafe`), then `KEY=VALUE`
    overrides; an unknown KEY is an error (Detectron2 would add it silently), `+KEY=VALUE` adds."""
    if not config_file:
        raise ValueError("no config given: pass --config-file FILE.py")
    if not os.path.exists(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    if config_file.endswith(".py"):
        cfg = LazyConfig.load(config_file)
        return LazyConfig.apply_overrides(cfg, check_lazy_overrides(cfg, config_file, overrides))
    loaded = read_yaml(config_file, allow_unsafe)
    if not is_lazy_yaml(config_file, loaded):
        raise ValueError(
            f"config file {config_file!r} is a yaml config, not a LazyConfig (a .py file or the "
            "config.yaml a lazy run saves): yaml configs go to tools/train_net.py or "
            "tools/train_cls.py"
        )
    cfg = OmegaConf.create(loaded, flags={"allow_objects": True})
    cfg = LazyConfig.apply_overrides(cfg, check_lazy_overrides(cfg, config_file, overrides))
    if allow_unsafe:
        return cfg
    bind_targets(cfg, config_file)
    if "model" in cfg:
        check_model_size(cfg, config_file)
    return cfg


def check_lazy_overrides(cfg, config_file: str, overrides: Sequence[str]) -> List[str]:
    """`overrides` for LazyConfig.apply_overrides, each KEY one `cfg` has (`+KEY=` adds one)."""
    checked = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep:
            where = " (options such as --resume go before the overrides)" * item.startswith("-")
            raise ValueError(f"override {item!r} is invalid: expected KEY=VALUE{where}")
        if key.startswith("+"):
            checked.append(item[1:])
            continue
        if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            keys = list(flatten_lazy(cfg, leaves_only=False))
            close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise KeyError(
                f"override {item!r}: the config {config_file} has no key {key!r}.{hint} "
                f"(+{key}=... adds it on purpose)"
            )
        checked.append(item)
    return checked


_MISSING = object()


def flatten_lazy(cfg, prefix: str = "", leaves_only: bool = True) -> dict:
    """{"optimizer.lr": 0.02, ...}: the plain values (numbers, strings, bools, lists of them) of
    a LazyConfig by dotted key; with `leaves_only=False`, every node's key too."""
    flat = {}
    for k, v in cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, (DictConfig, dict)):
            if not leaves_only:
                flat[key] = None
            flat.update(flatten_lazy(v, key + ".", leaves_only))
            continue
        if isinstance(v, ListConfig):
            v = OmegaConf.to_container(v, resolve=False)
        if _plain(v):
            flat[key] = v
    return flat


def _plain(v) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    return v is None or isinstance(v, (bool, int, float, str))


def flatten(cfg: dict, prefix: str = "") -> dict:
    """{"SOLVER.BASE_LR": 0.1, ...}: the leaves of a (nested) config, by dotted key."""
    flat = {}
    for k, v in cfg.items():
        flat.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return flat


def explicit_keys(config_file: str, opts: Sequence[str] = (), allow_unsafe: bool = False) -> set:
    """The dotted keys that `config_file` (with its `_BASE_` chain) or `opts` set explicitly."""
    return set(flatten(read_yaml(config_file, allow_unsafe))) | set(list(opts)[::2])


def _literal(text):
    try:
        return ast.literal_eval(text) if isinstance(text, str) else text
    except (ValueError, SyntaxError):
        return text


def _ints_as_floats(defaults, loaded: dict) -> dict:
    out = {}
    for key, value in loaded.items():
        ours = defaults.get(key) if isinstance(defaults, dict) else None
        if isinstance(value, dict):
            value = _ints_as_floats(ours, value)
        elif isinstance(ours, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[key] = value
    return out


# MODEL.RANDWIRE keys of the paper's generators' theta; others read GENERATOR_PARAMS.
GENERATOR_KEYS = {"ws": {"K": "WS_K", "P": "WS_P"}, "er": {"P": "ER_P"}, "ba": {"M": "BA_M"}}


def generator_params(cfg) -> dict:
    """theta of the configured generator, from MODEL.RANDWIRE."""
    rw = cfg.MODEL.RANDWIRE
    if rw.GENERATOR in GENERATOR_KEYS:
        return {p: rw[key] for p, key in GENERATOR_KEYS[rw.GENERATOR].items()}
    return dict(rw.GENERATOR_PARAMS)


def set_generator(cfg, generator: str, params: dict) -> None:
    """Set MODEL.RANDWIRE.GENERATOR and its parameter keys (the inverse of generator_params)."""
    rw = cfg.MODEL.RANDWIRE
    rw.GENERATOR = generator
    keys = GENERATOR_KEYS.get(generator)
    for p, v in params.items():
        if keys is None:
            rw.GENERATOR_PARAMS[p] = v
        elif p in keys:
            rw[keys[p]] = v
        else:
            raise ValueError(
                f"parameter {p!r} is invalid for generator {generator!r}: expected {sorted(keys)}"
            )
