"""An export checked against the eager model: comparisons of logits and detections, the bounds of
the inputs checked, and the report of what matched."""

import copy
import json
import logging
import os
import tempfile
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from detectron2.structures import Instances
from torch import nn

from ..checkpoint import find_trunk
from ..modeling.frozen import freeze_for_export
from ..utils.quiet_warnings import quiet_export_warnings
from ..utils.tables import markdown_table
from .formats import (
    FORMATS,
    _shape_text,
    exported_program_op_count,
    onnx_op_count,
    torchscript_op_count,
)
from .onnx import export_onnx

# Bounds of the extra inputs an export is checked on (export_classifier's check_batches,
# export_detector's check_sizes): each is run by the eager model and by every written file.
MAX_CHECK_BATCH = 64
MAX_CHECK_SIDE = 4096
# The differences a check reports: a classifier's logits, a detector's boxes and scores.
_DIFF_KEYS = ("max_abs_diff", "max_box_diff", "max_score_diff")
logger = logging.getLogger(__package__)


class ExportMismatchError(RuntimeError):
    """An exported model computes something else than the eager model."""


def compare_logits(eager: torch.Tensor, exported: torch.Tensor, atol: float, rtol: float) -> Dict:
    """Max |eager - exported| of logits, allowed atol + rtol * max |eager|."""
    eager, exported = eager.detach().cpu().float(), exported.detach().cpu().float()
    if eager.shape != exported.shape:
        return {"ok": False, "why": f"shape {tuple(exported.shape)} != {tuple(eager.shape)}"}
    diff = float((eager - exported).abs().max())
    allowed = atol + rtol * float(eager.abs().max())
    return {"ok": diff <= allowed, "max_abs_diff": diff, "allowed": allowed}


def compare_instances(
    eager: Instances, exported: Instances, box_atol: float, score_atol: float
) -> Dict:
    """Detections of the export matched one to one with the eager ones: same class, score
    within `score_atol`, box corners within `box_atol` pixels (greedy, closest box first)."""
    a = [eager.pred_boxes.tensor, eager.scores, eager.pred_classes]
    b = [exported.pred_boxes.tensor, exported.scores, exported.pred_classes]
    a, b = [t.detach().cpu() for t in a], [t.detach().cpu() for t in b]
    out = {"detections": len(a[1]), "exported_detections": len(b[1])}
    used, box_d, score_d = set(), [], []
    if len(a[1]) and len(b[1]):
        box = (a[0][:, None, :].float() - b[0][None, :, :].float()).abs().amax(-1)
        score = (a[1][:, None].float() - b[1][None, :].float()).abs()
        ok = (a[2][:, None] == b[2][None, :]) & (score <= score_atol) & (box <= box_atol)
        cost = torch.where(ok, box, torch.full_like(box, float("inf")))
        for i in range(cost.shape[0]):
            for j in cost[i].argsort().tolist():
                if not torch.isfinite(cost[i, j]):
                    break
                if j not in used:
                    used.add(j)
                    box_d.append(float(box[i, j]))
                    score_d.append(float(score[i, j]))
                    break
    out.update(
        matched=len(used),
        max_box_diff=max(box_d, default=0.0),
        max_score_diff=max(score_d, default=0.0),
        ok=len(used) == len(a[1]) == len(b[1]),
    )
    return out


def _check_counts(values, name: str, limit: int, what: str) -> Tuple[int, ...]:
    values = tuple(values)
    if any(type(v) is not int or not 1 <= v <= limit for v in values):
        raise ValueError(f"{name} {list(values)} is invalid: expected {what} from 1 to {limit}")
    return values


def write_and_check(
    output_dir: str, formats, write, compare, inputs: Dict, input_shape, what: str
) -> Dict:
    """Per format: `write(fmt, path)` -> (runner, op count), then `compare(name, runner(x))` on
    each of `inputs`. Returns {format: {"file", "ops", "export_seconds", "input_shape",
    "checks"}}; raises `ExportMismatchError` beyond tolerance."""
    report = {}
    for fmt in formats:
        path = os.path.join(output_dir, FORMATS[fmt])
        start = time.perf_counter()
        with torch.no_grad():
            run, ops = write(fmt, path)
            seconds = time.perf_counter() - start
            checks = {
                f"{fmt}[{k}]": dict(compare(k, run(x)), input_shape=list(x.shape))
                for k, x in inputs.items()
            }
        logger.info(f"wrote {path} ({ops} ops, {seconds:.1f} s)")
        bad = {k: v for k, v in checks.items() if not v["ok"]}
        if bad:
            lines = [f"{k}: {json.dumps(v)}" for k, v in bad.items()]
            raise ExportMismatchError(
                f"the exported {what} ({path}) differs from the eager model beyond tolerance:\n  "
                + "\n  ".join(lines)
            )
        # fmt: off
        report[fmt] = {"file": path, "ops": ops, "export_seconds": seconds,
                       "input_shape": input_shape, "checks": checks}
        # fmt: on
    return report


def checks_summary(entry: Dict) -> str:
    """What one format of an export report matched: inputs, shapes and largest differences."""
    checks = list(entry["checks"].values())
    shapes: Dict[str, int] = {}
    for c in checks:
        shape = "x".join(map(str, c.get("input_shape", [])))
        shapes[shape] = shapes.get(shape, 0) + 1
    ran = ", ".join(s + (f" ({n})" if n > 1 else "") for s, n in shapes.items())
    diffs = ", ".join(
        f"{k} {max(c[k] for c in checks):.3g}" for k in _DIFF_KEYS if all(k in c for c in checks)
    )
    return f"{len(checks)} inputs ({ran}): {diffs}"


def report_table(report: Dict) -> str:
    """The markdown table of an export report: per format its file, ops, input and matches."""
    rows = [
        [fmt, r["file"], r["ops"], _shape_text(r["input_shape"]), checks_summary(r)]
        for fmt, r in report.items()
        if fmt in FORMATS
    ]
    return markdown_table(["format", "file", "ops", "input", "matches eager"], rows)


# The executions whose graphs and latency are compared (tools/export_model.py
# --compare-executions, `benchmarks/speed.py export`): "export" is what an export writes.
EXECUTIONS_COMPARED = ("reference", "fast", "export")


def _variant(model: nn.Module, execution: str) -> nn.Module:
    """The model with `execution` ("reference", "fast") or frozen for "export"."""
    if execution == "export":
        return freeze_for_export(model)
    variant = copy.deepcopy(model).eval()
    _, trunk = find_trunk(variant)
    trunk.set_execution(execution)
    return variant


@quiet_export_warnings()
def op_counts(
    model: nn.Module,
    wrap: Callable[[nn.Module], nn.Module],
    args: tuple,
    formats: Sequence[str] = ("pt2", "torchscript", "onnx"),
    executions: Sequence[str] = EXECUTIONS_COMPARED,
    dynamic_axes: Optional[Dict[int, Dict[int, str]]] = None,
) -> Dict[str, Dict[str, int]]:
    """{execution: {format: op count}} of `wrap(model as run by execution)` traced on `args`;
    `dynamic_axes` ({input index: {axis: name}}) makes the ONNX graphs dynamic like the written
    file, so their shape arithmetic is counted."""
    counts = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for execution in executions:
            net = wrap(_variant(model, execution)).eval()
            row = {}
            if "pt2" in formats:
                row["pt2"] = exported_program_op_count(torch.export.export(net, args))
            if "torchscript" in formats:
                # No second trace to compare: the fast execution caches its folded weights
                # at the first call, so a second one records another graph.
                traced = torch.jit.trace(net, args, check_trace=False)
                row["torchscript"] = torchscript_op_count(traced)
            if "onnx" in formats:
                path = os.path.join(tmp, f"{execution}.onnx")
                names = [f"input{i}" for i in range(len(args))]
                axes = {names[i]: a for i, a in (dynamic_axes or {}).items()}
                export_onnx(net, args, path, names, dynamic_axes=axes or None)
                row["onnx"] = onnx_op_count(path)
            counts[execution] = row
    return counts
