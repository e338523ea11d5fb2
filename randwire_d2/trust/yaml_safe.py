"""Yaml configs parsed as data: no object-building tags, aliases only while the expansion stays
config-sized, a byte bound per file and a bounded `_BASE_` chain; the result is what fvcore's
`CfgNode.load_yaml_with_base` returns for a plain config."""

import os
from typing import Any, Dict, List

import yaml

from .files import LIMITS, read_bounded

__all__ = ["UnsafeConfigError", "load_yaml", "loads_yaml"]
__all__ += ["load_yaml_with_base", "MAX_BASE_DEPTH", "MAX_EXPANDED_NODES"]

# Most values a config may expand to through its aliases (a Detectron2 config holds ~600; nested
# aliases in a 1 KB file can expand to billions).
MAX_EXPANDED_NODES = 100_000
# Longest `_BASE_` chain (Detectron2's model zoo: 2; a cycle would never end).
MAX_BASE_DEPTH = 16
# Explicit tags a config may carry: the plain scalar types (`!!float 1e-3`). Every other tag
# (`!!python/...`, `!!binary`, `!!set`, ...) builds something a config never needs.
_PLAIN_TAGS = {
    "tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "seq", "map")
}


# Python objects LazyConfig.save writes as tags (Detectron2's model-zoo configs pass ShapeSpec
# objects, not lazy calls) and that are plain numbers: each read back as the lazy call that builds
# it, so the config stays data and the call is checked like every other target.
_OBJECT_TAGS = {
    "tag:yaml.org,2002:python/object:detectron2.layers.shape_spec.ShapeSpec": (
        "detectron2.layers.ShapeSpec"
    ),
}


class UnsafeConfigError(ValueError):
    """A config that would make the process do more than read values: a python tag, an alias,
    a LazyConfig target outside the allowed callables. Refused without --allow-unsafe-config."""


class _DataLoader(yaml.SafeLoader):
    """SafeLoader refusing non-plain tags before any node is built, and documents whose aliases
    expand past MAX_EXPANDED_NODES (aliases stay: yacs writes them in every config.yaml)."""

    def __init__(self, stream, name: str):
        super().__init__(stream)
        self.config_name = name
        self.expanded = {}  # id(node) -> values it expands to

    def compose_node(self, parent, index):
        event = self.peek_event()
        where = f"{self.config_name}, line {event.start_mark.line + 1}"
        tag = getattr(event, "tag", None)
        if tag is not None and tag != "!" and tag not in _PLAIN_TAGS and tag not in _OBJECT_TAGS:
            raise UnsafeConfigError(
                f"config {where} holds the tag {tag}: configs are parsed as data, and a tag "
                "that constructs python objects can run code; if you trust this file, pass "
                "--allow-unsafe-config"
            )
        node = super().compose_node(parent, index)
        if id(node) not in self.expanded:
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = node.value if isinstance(node, yaml.SequenceNode) else []
            if any(id(c) not in self.expanded for c in children):
                raise UnsafeConfigError(f"config {where} holds an alias inside its own anchor")
            self.expanded[id(node)] = 1 + sum(self.expanded[id(c)] for c in children)
        if self.expanded[id(node)] > MAX_EXPANDED_NODES:
            raise UnsafeConfigError(
                f"config {where}: its aliases expand it to more than {MAX_EXPANDED_NODES} values "
                "(a config holds a few hundred): refusing to read it"
            )
        return node


def _construct_lazy_call(loader: _DataLoader, node):
    fields = loader.construct_mapping(node, deep=True)
    for k, v in fields.items():
        if not isinstance(k, str) or not (v is None or type(v) is int):
            raise UnsafeConfigError(
                f"config {loader.config_name}, line {node.start_mark.line + 1}: {node.tag} with "
                f"{k}={v!r}: expected whole numbers"
            )
    return {"_target_": _OBJECT_TAGS[node.tag], **fields}


for _tag in _OBJECT_TAGS:
    _DataLoader.add_constructor(_tag, _construct_lazy_call)


def load_yaml(path: str, what: str = "config") -> Any:
    """One yaml file as plain data (dicts, lists, strings, numbers), safely."""
    return loads_yaml(read_bounded(path, what, "config", text=True), path, what)


def loads_yaml(text: str, where: str, what: str = "config") -> Any:
    """Yaml text (e.g. the config a checkpoint carries, `where`) as plain data, safely."""
    if not isinstance(text, str) or len(text) > LIMITS["config"]:
        size = len(text) if isinstance(text, str) else type(text).__name__
        raise UnsafeConfigError(
            f"{what} of {where} is not yaml text of at most "
            f"{LIMITS['config']} characters ({size})"
        )
    loader = _DataLoader(text, where)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        if isinstance(e, UnsafeConfigError):
            raise
        raise ValueError(f"{what} {where!r} is not valid yaml: {e}") from None
    finally:
        loader.dispose()


def load_yaml_with_base(path: str, what: str = "config", _chain: List[str] = None) -> Dict:
    """`path` merged over its `_BASE_` chain (a path or a list of paths, relative to the file),
    as fvcore's CfgNode.load_yaml_with_base merges it, parsed by `load_yaml`."""
    chain = (_chain or []) + [os.path.abspath(path)]
    if len(chain) > MAX_BASE_DEPTH or chain[-1] in chain[:-1]:
        raise ValueError(
            f"config {path!r}: its _BASE_ chain {' -> '.join(chain)} "
            + ("is a cycle" if chain[-1] in chain[:-1] else f"is longer than {MAX_BASE_DEPTH}")
        )
    cfg = load_yaml(path, what if not _chain else f"_BASE_ of {_chain[-1]}")
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ValueError(f"config {path!r} holds a {type(cfg).__name__}, not a mapping of keys")
    bases = cfg.pop("_BASE_", None)
    if bases is None:
        return cfg
    merged: Dict = {}
    for base in bases if isinstance(bases, list) else [bases]:
        if not isinstance(base, str):
            raise ValueError(f"config {path!r}: _BASE_ {base!r} is not a file path")
        base = os.path.expanduser(base)
        if "://" in base:
            raise ValueError(f"config {path!r}: _BASE_ {base!r} is a URL; give a local file")
        if not os.path.isabs(base):
            base = os.path.join(os.path.dirname(path), base)
        _merge_into(load_yaml_with_base(base, what, chain), merged, path)
    _merge_into(cfg, merged, path)
    return merged


def _merge_into(a: Dict, b: Dict, path: str) -> None:
    for k, v in a.items():
        if isinstance(v, dict) and k in b:
            if not isinstance(b[k], dict):
                raise ValueError(f"config {path!r}: key {k!r} is a mapping, its _BASE_'s is not")
            _merge_into(v, b[k], path)
        else:
            b[k] = v
