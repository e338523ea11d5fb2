"""Detector export: any Detectron2 meta-architecture on the RandWire trunk as one CHW image ->
flattened Instances through Detectron2's TracingAdapter, in TorchScript and ONNX files."""

import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.export import TracingAdapter, dump_torchscript_IR
from detectron2.export.flatten import DictSchema, InstancesSchema, ListSchema
from detectron2.modeling import GeneralizedRCNN
from torch import nn

from ..modeling.frozen import freeze_for_export
from ..utils.quiet_warnings import quiet_export_warnings
from .compare import MAX_CHECK_SIDE, _check_counts, compare_instances, write_and_check
from .formats import (
    DETECTOR_AXES,
    _shape_spec,
    onnx_op_count,
    onnx_session,
    run_onnx,
    torchscript_op_count,
)
from .onnx import export_onnx

logger = logging.getLogger(__package__)


def _detector_inference(model, inputs):
    # As Detectron2's export_model.py: R-CNN without postprocessing (the resize to the original
    # image size), other meta-architectures (RetinaNet) as they are called.
    if isinstance(model, GeneralizedRCNN):
        return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]
    return model(inputs)


def detector_adapter(model: nn.Module, sample: Dict) -> TracingAdapter:
    """TracingAdapter of a detector (CHW image -> flattened Instances), in eval mode: ONNX export
    restores the mode it finds."""
    return TracingAdapter(model, [{"image": sample["image"]}], _detector_inference).eval()


def flat_output_names(schema, name: str = "output") -> List[str]:
    """Names of a TracingAdapter's flattened outputs: the sorted Instances fields, then
    "image_size"; a name repeated across images gets its index."""
    if isinstance(schema, DictSchema):  # InstancesSchema too: its image size comes last
        names = [
            n for key, sub in zip(schema.keys, schema.schemas) for n in flat_output_names(sub, key)
        ]
        return names + ["image_size"] * isinstance(schema, InstancesSchema)
    if isinstance(schema, ListSchema):
        names = [n for sub in schema.schemas for n in flat_output_names(sub, name)]
        if len(set(names)) < len(names):
            names = [f"{n}_{i}" for i, n in enumerate(names)]
        return names
    return [name]


def _other_sizes(height: int, width: int) -> List[Tuple[int, int]]:
    """Two other (height, width), one wider, one taller, not multiples of 32 (checks padding)."""
    return [
        (max(1, height * 3 // 4), max(1, width * 5 // 4)),
        (max(1, height * 5 // 4), max(1, width * 3 // 4)),
    ]


@quiet_export_warnings()
def export_detector(
    model: nn.Module,
    output_dir: str,
    samples: Sequence[Dict],
    formats: Sequence[str] = ("torchscript",),
    box_atol: float = 1e-2,
    score_atol: float = 1e-4,
    check_sizes: Optional[Sequence[Tuple[int, int]]] = None,
) -> Dict:
    """Trace the detector on samples[0]["image"], write `formats`, run each on every sample and
    on its image resized to each `check_sizes` (default: two others), and raise
    `ExportMismatchError` beyond tolerance of the eager model. One CHW image of dynamic height
    and width. Returns {format: {"file", "ops", "input_shape", "checks"}}."""
    bad = sorted(set(formats) - {"torchscript", "onnx"})
    if bad:
        raise ValueError(
            f"formats {bad} are invalid for a detector: expected torchscript and/or onnx "
            "(detectors export by tracing; pt2 / torch.export is for RandWireClassifier)"
        )
    image = samples[0]["image"]
    if check_sizes is None:
        check_sizes = _other_sizes(*image.shape[-2:])
    for size in check_sizes:
        if len(size) != 2:
            raise ValueError(f"check_sizes: {size!r} is invalid: expected (height, width)")
        _check_counts(size, "check_sizes", MAX_CHECK_SIDE, "sides")
    os.makedirs(output_dir, exist_ok=True)
    model = model.eval()
    inputs = {f"sample {i}": s["image"] for i, s in enumerate(samples)}
    for h, w in check_sizes:
        resized = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)
        inputs[f"{h}x{w}"] = resized[0]
    with torch.no_grad():
        eager = {
            k: _detector_inference(model, [{"image": x}])[0]["instances"] for k, x in inputs.items()
        }
    adapter = detector_adapter(freeze_for_export(model), samples[0])
    with torch.no_grad():  # sets adapter.outputs_schema, which names the ONNX outputs
        adapter(image)
    output_names = flat_output_names(adapter.outputs_schema)
    input_shape = _shape_spec(image.shape, DETECTOR_AXES)

    def write(fmt: str, path: str):
        if fmt == "torchscript":
            traced = torch.jit.trace(adapter, (image,))
            torch.jit.save(traced, path)
            dump_torchscript_IR(traced, output_dir)
            run = torch.jit.load(path)
            return run, torchscript_op_count(run)
        axes = {"image": DETECTOR_AXES}
        export_onnx(adapter, (image,), path, ["image"], output_names, dynamic_axes=axes)
        session = onnx_session(path)
        return (lambda x: run_onnx(session, x)), onnx_op_count(path)

    def compare(k: str, outputs) -> Dict:
        got = adapter.outputs_schema(tuple(outputs))[0]["instances"]
        return compare_instances(eager[k], got, box_atol, score_atol)

    report = write_and_check(output_dir, formats, write, compare, inputs, input_shape, "detector")
    logger.info(f"inputs schema: {adapter.inputs_schema}; outputs schema: {adapter.outputs_schema}")
    return report
