"""Deployment export of RandWire models, each export checked against the eager model.

Detector (any Detectron2 meta-architecture on the RandWire trunk, `detector.py`): TorchScript
(`torch.jit.trace`) and ONNX through Detectron2's `TracingAdapter` (image tensor in, flattened
`Instances` out), as Detectron2's tools/deploy/export_model.py does with `--export-method tracing`.
Classifier (RandWireClassifier, `classifier.py`): torch.export (`.pt2`), TorchScript and ONNX of
images -> logits, i.e. the model's pixel normalization, trunk and head.

Shapes: a detector file takes one CHW image of any height and width (ONNX: dynamic axes; the
number of images and the 3 channels are fixed, as tracing Detectron2's models allows). A
classifier file takes a batch of any size (ONNX: dynamic axis, torch.export: Dim "batch") at the
traced height and width. Each report names the input shape (`input_shape`, named axes vary), and
`run_onnx` refuses a tensor that differs where the shape is a number, naming both shapes.

What is exported is `freeze_for_export(model)` (modeling/frozen.py): the eval-mode fast execution
with its per-call work done once, norms folded into the convs. ONNX files are written by
PyTorch's TorchScript-based exporter (`dynamo=False`, opset `ONNX_OPSET`, `formats.py`): the
torch.export-based one needs onnxscript, and Detectron2's detectors do not torch.export.

After writing a file, the export is run on sample inputs, and on inputs of other shapes (two other
batch sizes of a classifier, two other image sizes of a detector), and compared with the eager
(unfrozen) model (`compare.py`): logits for a classifier; boxes, scores and classes for a detector
(detections matched by class, score and box, since outputs tied in score may come in another
order). ONNX files are run in onnxruntime. A difference beyond tolerance raises
`ExportMismatchError`, naming numbers. The notes torch prints while tracing Detectron2's code are
ignored during an export (`utils/quiet_warnings.py: quiet_export_warnings`); these checks are what they
ask for. Graph sizes per execution: `op_counts` (compare.py; export_model.py
--compare-executions); latency: `benchmarks/speed.py export`.
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
