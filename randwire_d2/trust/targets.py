"""What a LazyConfig read from yaml (a lazy run's `config.yaml`) may build. Each `_target_` is
resolved without importing anything, checked against an explicit list of callables and replaced
by that object, so what is built is what was checked; the text decides nothing
(`detectron2.config.lazy.os.system` resolves to `os.system`)."""

import dataclasses
import functools
import importlib
import inspect
import re
import sys
import types
from typing import Dict, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from .yaml_safe import UnsafeConfigError

__all__ = ["ALLOWED_TARGETS", "allow_target", "resolve_imported"]
__all__ += ["bind_targets", "check_model_size"]

# The callables the shipped and Detectron2 model-zoo LazyConfigs name, as LazyConfig.save spells
# them (tests/test_trust_targets.py keeps ours complete); one's own code is added with allow_target.
ALLOWED_TARGETS = (
    # the RandWire trunk (configs/lazy/common/randwire_rcnn.py)
    "randwire_d2.RandWire",
    "randwire_d2.modeling.network_wiring",
    # detectron2 models
    "detectron2.layers.ShapeSpec",
    "detectron2.modeling.FPN",
    "detectron2.modeling.FastRCNNOutputLayers",
    "detectron2.modeling.GeneralizedRCNN",
    "detectron2.modeling.ResNet",
    "detectron2.modeling.ResNet.make_default_stages",
    "detectron2.modeling.RetinaNet",
    "detectron2.modeling.StandardROIHeads",
    "detectron2.modeling.anchor_generator.DefaultAnchorGenerator",
    "detectron2.modeling.backbone.BasicStem",
    "detectron2.modeling.backbone.fpn.LastLevelMaxPool",
    "detectron2.modeling.backbone.fpn.LastLevelP6P7",
    "detectron2.modeling.box_regression.Box2BoxTransform",
    "detectron2.modeling.matcher.Matcher",
    "detectron2.modeling.meta_arch.retinanet.RetinaNetHead",
    "detectron2.modeling.poolers.ROIPooler",
    "detectron2.modeling.proposal_generator.RPN",
    "detectron2.modeling.proposal_generator.StandardRPNHead",
    "detectron2.modeling.roi_heads.FastRCNNConvFCHead",
    "detectron2.modeling.roi_heads.MaskRCNNConvUpsampleHead",
    "detectron2.modeling.FCOS",
    "detectron2.modeling.PanopticFPN",
    "detectron2.modeling.ResNet.make_stage",
    "detectron2.modeling.SimpleFeaturePyramid",
    "detectron2.modeling.ViT",
    "detectron2.modeling.backbone.RegNet",
    "detectron2.modeling.meta_arch.fcos.FCOSHead",
    "detectron2.modeling.meta_arch.semantic_seg.SemSegFPNHead",
    "detectron2.modeling.roi_heads.CascadeROIHeads",
    "detectron2.modeling.roi_heads.KRCNNConvDeconvUpsampleHead",
    "detectron2.modeling.roi_heads.Res5ROIHeads",
    # data
    "detectron2.data.DatasetMapper",
    "detectron2.data.build_detection_test_loader",
    "detectron2.data.build_detection_train_loader",
    "detectron2.data.get_detection_dataset_dicts",
    "detectron2.data.transforms.RandomFlip",
    "detectron2.data.transforms.ResizeShortestEdge",
    "detectron2.evaluation.COCOEvaluator",
    "detectron2.evaluation.COCOPanopticEvaluator",
    "detectron2.evaluation.SemSegEvaluator",
    # solver
    "detectron2.solver.WarmupParamScheduler",
    "detectron2.solver.get_default_optimizer_params",
    "fvcore.common.param_scheduler.MultiStepParamScheduler",
    "fvcore.common.param_scheduler.CosineParamScheduler",
    "torch.optim.SGD",
    "torch.optim.AdamW",
)
_ADDED: Dict[int, object] = {}
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def allow_target(obj) -> None:
    """Let saved LazyConfigs build `obj` (call from trusted code, like registering a backbone)."""
    if not callable(obj):
        raise TypeError(f"allow_target({obj!r}): a config target is a class or a function")
    _ADDED[id(obj)] = obj


def resolve_imported(name: str) -> Optional[object]:
    """The object the dotted `name` names among modules already imported, or None; nothing is
    imported and no property or __getattr__ runs (static/class methods unwrapped)."""
    if not isinstance(name, str) or not _DOTTED.fullmatch(name):
        return None
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        obj = sys.modules.get(".".join(parts[:i]))
        if obj is not None:
            break
    else:
        return None
    for part in parts[i:]:
        if isinstance(obj, types.ModuleType):
            found = obj.__dict__.get(part, sys.modules.get(f"{obj.__name__}.{part}"))
        elif isinstance(obj, type):
            found = inspect.getattr_static(obj, part, None)
            if isinstance(found, (staticmethod, classmethod)):
                found = found.__func__
        else:
            return None
        if found is None:
            return None
        obj = found
    return obj


@functools.lru_cache(maxsize=None)
def _listed() -> Dict[int, str]:
    """id -> name of every object in ALLOWED_TARGETS (their modules imported: trusted code)."""
    out = {}
    for name in ALLOWED_TARGETS:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            try:
                importlib.import_module(".".join(parts[:i]))
                break
            except ImportError:
                continue
        obj = resolve_imported(name)
        if obj is None:
            raise ImportError(f"ALLOWED_TARGETS names {name!r}, which does not exist")
        out[id(obj)] = name
    return out


def _allowed(obj) -> bool:
    if id(obj) in _listed() or id(obj) in _ADDED:
        return True
    # classmethods resolve to the function; the bound method of a listed class counts as listed
    func = getattr(obj, "__func__", None)
    return func is not None and (id(func) in _listed() or id(func) in _ADDED)


def bind_targets(cfg, config_file: str, where: str = ""):
    """Replace every `_target_` of `cfg` by the allowed object it resolves to, else raise
    UnsafeConfigError; interpolations that call a resolver (`${oc.create:...}`) are refused."""
    if isinstance(cfg, DictConfig):
        items = [(k, f"{where}.{k}" if where else str(k)) for k in cfg.keys()]
    elif isinstance(cfg, ListConfig):
        items = [(i, f"{where}[{i}]") for i in range(len(cfg))]
    else:
        return cfg
    for key, place in items:
        node = cfg._get_node(key)
        if isinstance(node, (DictConfig, ListConfig)):
            bind_targets(node, config_file, place)
            continue
        value = node._value()
        if isinstance(value, str) and _RESOLVER.search(value):
            raise UnsafeConfigError(
                f"config {config_file!r} holds {value!r} at {place}: an interpolation that calls "
                "a resolver, which a saved config never needs; if you trust this file, pass "
                "--allow-unsafe-config"
            )
        if key == "_target_":
            obj = value if not isinstance(value, str) else resolve_imported(value)
            if isinstance(value, str) and "${" in value or obj is None or not _allowed(obj):
                raise UnsafeConfigError(_refusal(config_file, where, value, obj))
            # OmegaConf cannot hold a dataclass type (it would become a config of its fields):
            # those keep a name, the allowed list's own spelling of the object checked.
            cfg[key] = _listed().get(id(obj), obj) if dataclasses.is_dataclass(obj) else obj
    return cfg


_RESOLVER = re.compile(r"\$\{\s*[A-Za-z_][\w.]*\s*:")


def _refusal(config_file: str, where: str, target, obj) -> str:
    if isinstance(target, str) and "${" in target:
        what = "an interpolation"
    elif obj is None:
        what = "nothing this process has loaded (a module it would have to import)"
    else:
        name = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
        what = f"{name}, which is not a callable configs may build"
    return (
        f"config {config_file!r} names _target_ {target!r} at {where or 'its top'}: it resolves "
        f"to {what}. A saved LazyConfig may build only the callables of "
        "randwire_d2.trust.targets.ALLOWED_TARGETS (and those added with "
        "randwire_d2.trust.allow_target); if you trust this file, pass --allow-unsafe-config"
    )


# Most parameters and buffer elements a saved config's model may declare (8 GiB as float32; the
# paper's largest detector, C=154 RetinaNet, has 71M).
MAX_MODEL_ELEMENTS = 2**31


def check_model_size(cfg, config_file: str) -> None:
    """Refuse `cfg.model` when, built on the meta device, it exceeds MAX_MODEL_ELEMENTS."""
    import torch
    from detectron2.config import instantiate

    try:
        with torch.device("meta"):
            model = instantiate(cfg.model)
    except Exception as e:
        raise UnsafeConfigError(
            f"config {config_file!r}: its model cannot be sized before it is built "
            f"({type(e).__name__}: {str(e)[:200]}); if you trust this file, pass "
            "--allow-unsafe-config"
        ) from e
    tensors = list(model.parameters()) + list(model.buffers())
    count = sum(t.numel() for t in tensors)
    if count > MAX_MODEL_ELEMENTS:
        raise UnsafeConfigError(
            f"config {config_file!r}: its model declares {count:,} parameter and buffer elements, "
            f"more than MAX_MODEL_ELEMENTS={MAX_MODEL_ELEMENTS:,}: refusing to build it"
        )
