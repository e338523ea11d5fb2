"""Classifier export: RandWireClassifier as images -> logits in torch.export, TorchScript and ONNX
files, a dynamic batch at the traced image size."""

import os
from typing import Dict, List, Optional, Sequence

import torch

from ..modeling.classifier import ClassifierLogits as ClassifierExport  # images -> logits
from ..modeling.classifier import RandWireClassifier
from ..modeling.frozen import freeze_for_export
from ..utils.quiet_warnings import quiet_export_warnings
from .compare import MAX_CHECK_BATCH, _check_counts, compare_logits, write_and_check
from .formats import (
    CLASSIFIER_AXES,
    FORMATS,
    _shape_spec,
    exported_program_op_count,
    onnx_op_count,
    onnx_session,
    run_onnx,
    torchscript_op_count,
)
from .onnx import export_onnx


def classifier_samples(
    size: int, batch: int = 1, count: int = 3, seed: int = 0, device="cpu"
) -> List[torch.Tensor]:
    """`count` reproducible random NCHW batches of 0-255 images (the first one is traced)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, 3, size, size, generator=g) * 255).to(device) for _ in range(count)]


@quiet_export_warnings()
def export_classifier(
    model: RandWireClassifier,
    output_dir: str,
    samples: Sequence[torch.Tensor],
    formats: Sequence[str] = ("pt2", "onnx"),
    atol: float = 1e-4,
    rtol: float = 1e-4,
    check_batches: Optional[Sequence[int]] = None,
) -> Dict:
    """Write `formats` of images -> logits (dynamic batch, samples[0]'s height and width), run
    each on every sample and a batch of each `check_batches` size (default: two others), and
    raise `ExportMismatchError` beyond tolerance of the eager model. Returns {format: {"file",
    "ops", "input_shape", "checks"}}."""
    bad = sorted(set(formats) - set(FORMATS))
    if bad:
        raise ValueError(f"formats {bad} are unknown: expected a subset of {list(FORMATS)}")
    x0 = samples[0]
    batch = x0.shape[0]
    if check_batches is None:
        check_batches = [n for n in (1, 2, 3) if n != batch][:2]
    check_batches = _check_counts(check_batches, "check_batches", MAX_CHECK_BATCH, "batch sizes")
    os.makedirs(output_dir, exist_ok=True)
    model = model.eval()
    inputs = {f"sample {i}": x for i, x in enumerate(samples)}
    for n in check_batches:
        g = torch.Generator().manual_seed(1000 + n)
        inputs[f"batch {n}"] = (torch.rand(n, *x0.shape[1:], generator=g) * 255).to(x0.device)
    with torch.no_grad():
        eager = {k: ClassifierExport(model)(x) for k, x in inputs.items()}
    net = ClassifierExport(freeze_for_export(model)).eval()
    input_shape = _shape_spec(x0.shape, CLASSIFIER_AXES)

    def write(fmt: str, path: str):
        if fmt == "pt2":
            # torch.export specializes a size-1 axis to 1: trace on a batch of two or more.
            example = x0 if batch > 1 else torch.cat([x0, x0])
            dims = {"images": {0: torch.export.Dim(CLASSIFIER_AXES[0], min=1)}}
            program = torch.export.export(net, (example,), dynamic_shapes=dims)
            torch.export.save(program, path)
            return torch.export.load(path).module(), exported_program_op_count(program)
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(net, (x0,)), path)
            run = torch.jit.load(path)
            return run, torchscript_op_count(run)
        axes = {"images": CLASSIFIER_AXES, "logits": CLASSIFIER_AXES}
        export_onnx(net, (x0,), path, ["images"], ["logits"], axes)
        session = onnx_session(path)
        return (lambda x: run_onnx(session, x)[0]), onnx_op_count(path)

    def compare(k: str, logits: torch.Tensor) -> Dict:
        return compare_logits(eager[k], logits, atol, rtol)

    return write_and_check(output_dir, formats, write, compare, inputs, input_shape, "classifier")
