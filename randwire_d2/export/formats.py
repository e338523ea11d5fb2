"""The exported files: their names, how each format is written and run, its op count."""

import logging
import os
from typing import Dict, List

import numpy as np
import torch

# Output formats: file name and how it is made.
FORMATS = {
    "torchscript": "model.ts",  # torch.jit.trace (detector: through TracingAdapter)
    "onnx": "model.onnx",  # torch.onnx.export(dynamo=False), run in onnxruntime
    "pt2": "model.pt2",  # torch.export (classifier only)
}
# Every file an export writes (formats, report, dump_torchscript_IR's code and graphs).
EXPORT_FILES = (
    *FORMATS.values(),
    "export_report.json",
    "model_ts_code.txt",
    "model_ts_IR.txt",
    "model_ts_IR_inlined.txt",
    "model.txt",
)
# ONNX opset: 17 exports the detector (RoIAlign, NMS, TopK) and runs in onnxruntime.
ONNX_OPSET = 17
# The axes of the exported input that vary ({axis: name}); the rest is fixed at export.
CLASSIFIER_AXES = {0: "batch"}
DETECTOR_AXES = {1: "height", 2: "width"}
logger = logging.getLogger(__package__)


def prepare_export_folder(output_dir: str, overwrite: bool = False) -> List[str]:
    """Make `output_dir` ready for an export: an earlier export there is refused, or with
    `overwrite` its files (only EXPORT_FILES) are removed; returns the removed names."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(
            f"--output {output_dir!r} is an existing file: expected a folder (created if missing) "
            "for the exported model files and export_report.json"
        )
    earlier = [n for n in EXPORT_FILES if os.path.isfile(os.path.join(output_dir, n))]
    if earlier and not overwrite:
        raise FileExistsError(
            f"--output {output_dir!r} holds an earlier export ({', '.join(earlier)}): pass "
            "--overwrite to replace it (only the files an export writes are removed), or give "
            "another folder"
        )
    for name in earlier:
        os.remove(os.path.join(output_dir, name))
    if earlier:
        logger.info(f"removed the earlier export in {output_dir}: {', '.join(earlier)}")
    os.makedirs(output_dir, exist_ok=True)
    return earlier


def onnx_session(path: str):
    """An onnxruntime CPU session of `path`, with as many intra-op threads as torch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def run_onnx(session, *tensors) -> List[torch.Tensor]:
    """Run an onnxruntime `session` on `tensors`; a shape that differs on an axis fixed at export
    is a ValueError naming both shapes."""
    inputs = session.get_inputs()
    if len(tensors) != len(inputs):
        raise ValueError(f"the ONNX model takes {len(inputs)} inputs, got {len(tensors)}")
    for spec, t in zip(inputs, tensors):
        shape = tuple(t.shape)
        fixed = [d if isinstance(d, int) else None for d in spec.shape]
        if len(shape) != len(fixed):
            why = f"{len(fixed)} axes, not {len(shape)}"
        elif any(f not in (None, n) for f, n in zip(fixed, shape)):
            named = [d for d in spec.shape if not isinstance(d, int)]
            vary = f"only {', '.join(map(str, named))} may vary" if named else "no axis may vary"
            why = f"{vary}; the numbers were fixed when it was exported"
        else:
            continue
        raise ValueError(
            f"input {spec.name!r} of shape {_shape_text(shape)} does not fit the exported model, "
            f"which takes {_shape_text(spec.shape)}: {why}"
        )
    feed = {i.name: t.detach().cpu().numpy() for i, t in zip(inputs, tensors)}
    return [torch.from_numpy(np.asarray(o)) for o in session.run(None, feed)]


def onnx_op_count(path_or_model) -> int:
    """ONNX nodes other than Constant, subgraphs (If/Loop bodies) included."""
    import onnx

    model = onnx.load(path_or_model) if isinstance(path_or_model, str) else path_or_model

    def count(graph):
        n = 0
        for node in graph.node:
            n += node.op_type != "Constant"
            for attr in node.attribute:
                n += sum(
                    count(g) for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
                )
        return n

    return count(model.graph)


def torchscript_op_count(module: torch.jit.ScriptModule) -> int:
    """aten:: nodes of the inlined TorchScript graph (prim:: constants and attributes excluded)."""
    return sum(n.kind().startswith("aten::") for n in module.inlined_graph.nodes())


def exported_program_op_count(program) -> int:
    """call_function nodes of a torch.export ExportedProgram's graph."""
    return sum(n.op == "call_function" for n in program.graph.nodes)


def _shape_spec(shape, dynamic: Dict[int, str]) -> List:
    """[batch, 3, 32, 32]: the axis names where `dynamic` names one, else the traced size."""
    return [dynamic.get(i, int(n)) for i, n in enumerate(shape)]
