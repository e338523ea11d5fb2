"""Deployment export of RandWire models, each export checked against the eager model.

Detector (`detector.py`): TorchScript and ONNX through Detectron2's `TracingAdapter` (one CHW
image of any size in, flattened `Instances` out), as Detectron2's export_model.py tracing does.
Classifier (`classifier.py`): torch.export (`.pt2`), TorchScript and ONNX of images -> logits,
a batch of any size at the traced height and width.

What is exported is `freeze_for_export(model)` (norms folded, per-call work done once). ONNX uses
the TorchScript-based exporter (`dynamo=False`): the other needs onnxscript, and Detectron2's
detectors do not torch.export. Each file is then run on the samples and on inputs of other
shapes and compared with the eager model (`compare.py`); a difference beyond tolerance raises
`ExportMismatchError`. Torch's tracing notes are quieted (`quiet_export_warnings`): these checks
are what they ask for.
"""

from ..inference_setup import detector_samples
from ..modeling.frozen import FrozenStage, fold_conv_norms, freeze_for_export
from .classifier import ClassifierExport, classifier_samples, export_classifier
from .compare import (
    EXECUTIONS_COMPARED,
    MAX_CHECK_BATCH,
    MAX_CHECK_SIDE,
    ExportMismatchError,
    checks_summary,
    compare_instances,
    compare_logits,
    markdown_table,
    op_counts,
    report_table,
)
from .detector import detector_adapter, export_detector
from .formats import (
    CLASSIFIER_AXES,
    DETECTOR_AXES,
    EXPORT_FILES,
    FORMATS,
    ONNX_OPSET,
    exported_program_op_count,
    onnx_op_count,
    onnx_session,
    prepare_export_folder,
    run_onnx,
    torchscript_op_count,
)
from .onnx import export_onnx

# Every public name above, as detectron2.modeling lists its own.
__all__ = [k for k in globals() if not k.startswith("_")]
