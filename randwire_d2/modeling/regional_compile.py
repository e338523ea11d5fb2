"""Regional `torch.compile` of a RandWire trunk (MODEL.RANDWIRE.COMPILE): each node or each wired
stage a compiled region, and the checks of the keys it would otherwise silently override."""

import logging
from typing import Optional

__all__ = ["COMPILE_REGIONS", "check_compile", "compile_regions"]

logger = logging.getLogger(__name__)

# What MODEL.RANDWIRE.COMPILE compiles: nothing, each node (regional: nodes of the same shape
# share one compiled graph), or each wired stage as one graph.
COMPILE_REGIONS = ("", "node", "stage")
# The torch.compile backend of those regions (tests trace with "aot_eager": no code generation).
COMPILE_BACKEND = "inductor"


def compile_regions(trunk, regions: str, backend: Optional[str] = None):
    """Regional `torch.compile` (MODEL.RANDWIRE.COMPILE), in place: state-dict keys unchanged.

    "node": each node is its own region, and nodes of the same shapes share one compiled graph
    (a few dozen small graphs to warm up). "stage": each wired stage is one graph (more fusion, a
    longer warm-up). Compiled stages run the per-node loop, edge removal as device masks.
    """
    check_compile(regions)
    if not regions:
        return trunk
    backend = backend or COMPILE_BACKEND
    shapes = set()
    for name, stage in trunk.wired_stages().items():
        stage.compiled = regions
        inputs = set(stage.wiring.input_nodes)
        for v, node in enumerate(stage.nodes):
            shapes.add((name, 1 if node.weight is None else len(node.weight), v in inputs))
            if regions == "node":
                node.compile(fullgraph=True, backend=backend)
        if regions == "stage":
            stage.compile(fullgraph=True, backend=backend)
    # Each shape compiles once for training and once for eval, static; Dynamo's automatic
    # dynamic shapes (dynamic=None) then recompile once with symbolic sizes when another
    # input size comes (a last, partial batch; a second test crop; a detector's image
    # sizes), plus a graph for batch size 1 (Dynamo specializes sizes 0 and 1). Static
    # shapes throughout (dynamic=False) compiled again for every size: test crops times
    # batch sizes exceeded the limit at the first evaluation, and fullgraph makes that an
    # error. Dynamo counts graphs per code object, which all nodes (all stages) share:
    # the limit is raised to what the shapes need (8 per shape), not removed, so that a
    # real recompile loop still stops.
    _raise_recompile_limit(8 * len(shapes) + 8)
    trunk.use_edge_masks()
    logger.info(
        f"MODEL.RANDWIRE.COMPILE={regions!r}: {sum(len(s.nodes) for s in trunk.wired_stages().values())} "
        f"nodes in {len(shapes)} shape groups; the first training and evaluation steps "
        "compile them (warm-up)"
    )
    return trunk


def check_compile(regions: str, execution: str = "fast", memory_efficient: bool = False) -> None:
    """MODEL.RANDWIRE.COMPILE one of COMPILE_REGIONS, and without keys it would silently
    override: compiled stages run the per-node loop under the compiler, not the fast
    execution's Triton kernels or lean memory."""
    if regions not in COMPILE_REGIONS:
        from torch._inductor import list_mode_options

        mode = regions in list_mode_options()
        raise ValueError(
            f"MODEL.RANDWIRE.COMPILE={regions!r} is unknown: expected one of "
            f"{list(COMPILE_REGIONS)} ('' = eager, 'node' = each node a compiled region "
            "shared by nodes of the same shape, 'stage' = each wired stage one graph)"
            + (
                ". The key names what is compiled, not a torch.compile mode; CUDA graphs "
                "(mode 'reduce-overhead') are PRETRAIN.CUDA_GRAPHS"
                if mode
                else ""
            )
        )
    if regions and execution == "triton":
        raise ValueError(
            f"MODEL.RANDWIRE.COMPILE={regions!r} runs the wired stages through torch.compile, so "
            "EXECUTION='triton' (the hand-written kernels) would not run: set COMPILE '' to use "
            "the kernels, or EXECUTION 'fast'"
        )
    if regions and memory_efficient:
        raise ValueError(
            f"MODEL.RANDWIRE.COMPILE={regions!r} runs the wired stages through torch.compile, "
            "which decides what to store for backward, so MEMORY_EFFICIENT=True would not "
            "apply: set COMPILE '' or MEMORY_EFFICIENT False"
        )


def _raise_recompile_limit(limit: int) -> None:
    """Raise Dynamo's per-code-object recompile limit (named cache_size_limit before torch
    2.6) to at least `limit`."""
    from torch._dynamo import config

    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name) < limit:
        setattr(config, name, limit)
    for total in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, total) and getattr(config, total) < 4 * limit:
            setattr(config, total, 4 * limit)
            break
