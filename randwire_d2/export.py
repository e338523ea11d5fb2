"""Deployment export of RandWire models, each export checked against the eager model.

Detector (any Detectron2 meta-architecture on the RandWire trunk): TorchScript (`torch.jit.trace`)
and ONNX through Detectron2's `TracingAdapter` (image tensor in, flattened `Instances` out), as
Detectron2's tools/deploy/export_model.py does with `--export-method tracing`.
Classifier (RandWireClassifier): torch.export (`.pt2`), TorchScript and ONNX of
images -> logits, i.e. the model's pixel normalization, trunk and head.

Shapes: a detector file takes one CHW image of any height and width (ONNX: dynamic axes; the
number of images and the 3 channels are fixed, as tracing Detectron2's models allows). A
classifier file takes a batch of any size (ONNX: dynamic axis, torch.export: Dim "batch") at the
traced height and width. Each report names the input shape (`input_shape`, named axes vary), and
`run_onnx` refuses a tensor that differs where the shape is a number, naming both shapes.

What is exported is `freeze_for_export(model)`: the eval-mode fast execution with its per-call
work done once. The fast path folds each node's norm into its last conv on every call and reads
its aggregation weights through sigmoid/select ops, so traced as it is, its graph is larger than
the reference loop's. Frozen, every wired stage runs its `StagePlan` with the norms folded into
the conv weights and the coefficients sigmoid(w_i) as constants, and the other conv -> BN pairs
(conv1, the small regime's conv2, the classifier head) are folded as well. ONNX files are
written by PyTorch's TorchScript-based exporter (`dynamo=False`, opset `ONNX_OPSET`): the
torch.export-based one needs onnxscript, and Detectron2's detectors do not torch.export.

After writing a file, the export is run on sample inputs, and on inputs of other shapes (two other
batch sizes of a classifier, two other image sizes of a detector), and compared with the eager
(unfrozen) model: logits for a classifier; boxes, scores and classes for a detector (detections
matched by class, score and box, since outputs tied in score may come in another order). ONNX
files are run in onnxruntime. A difference beyond tolerance raises `ExportMismatchError`, naming
numbers. The notes torch prints while tracing Detectron2's code are ignored during an export
(`utils/warnings.py: quiet_export_warnings`); these checks are what they ask for.
"""

import copy
import json
import logging
import os
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.export import TracingAdapter, dump_torchscript_IR
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Instances
from torch import nn

from .checkpoint import check_input_normalization, check_weights_on_disk, find_trunk
from .modeling.classifier import ClassifierHead, RandWireClassifier
from .modeling.execution import STAGE_INPUT, _affine_of_norm, execution_mode
from .modeling.randwire import WiredStage
from .utils.warnings import quiet_export_warnings

__all__ = [
    "build_export_model",
    "detector_samples",
    "classifier_samples",
    "FORMATS",
    "EXPORT_FILES",
    "ONNX_OPSET",
    "ExportMismatchError",
    "prepare_export_folder",
    "EXECUTIONS_COMPARED",
    "FrozenStage",
    "freeze_for_export",
    "ClassifierExport",
    "detector_adapter",
    "onnx_session",
    "run_onnx",
    "export_classifier",
    "export_detector",
    "op_counts",
    "classifier_latency",
    "markdown_table",
    "checks_summary",
    "report_table",
    "MAX_CHECK_BATCH",
    "MAX_CHECK_SIDE",
    "CLASSIFIER_AXES",
    "DETECTOR_AXES",
]

# Output formats: file name and how it is made.
FORMATS = {
    "torchscript": "model.ts",  # torch.jit.trace (detector: through TracingAdapter)
    "onnx": "model.onnx",  # torch.onnx.export(dynamo=False), run in onnxruntime
    "pt2": "model.pt2",  # torch.export (classifier only)
}
# Every file an export writes: the formats, tools/export_model.py's report, and the TorchScript
# code and graphs of Detectron2's dump_torchscript_IR. An earlier export is these files.
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
# Bounds of the extra inputs an export is checked on (export_classifier's check_batches,
# export_detector's check_sizes): each is run by the eager model and by every written file.
MAX_CHECK_BATCH = 64
MAX_CHECK_SIDE = 4096
# The axes of the exported input that vary ({axis: name}): a classifier's NCHW batch, a
# detector's CHW image. The rest is fixed at the traced shape.
CLASSIFIER_AXES = {0: "batch"}
DETECTOR_AXES = {1: "height", 2: "width"}
logger = logging.getLogger(__name__)


class ExportMismatchError(RuntimeError):
    """An exported model computes something else than the eager model."""


def prepare_export_folder(output_dir: str, overwrite: bool = False) -> List[str]:
    """Make `output_dir` ready for an export: a folder holding an earlier export (any of
    EXPORT_FILES) is refused, or with `overwrite` those files (only them) are removed, so that
    the models of two exports never lie side by side. Returns the removed names."""
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


# ---------------------------------------------------------------------------------------------
# The model and its sample inputs


def build_export_model(cfg, random_weights: bool = False) -> nn.Module:
    """build_model(cfg) in eval mode with MODEL.WEIGHTS loaded strictly (every tensor of the
    model from the file, the wiring fingerprint equal). An empty MODEL.WEIGHTS is an error
    unless `random_weights` (an untrained model, for trying the export itself)."""
    from detectron2.modeling import build_model

    from .engine import build_checkpointer

    weights = cfg.MODEL.WEIGHTS
    if not weights and not random_weights:
        raise ValueError(
            "MODEL.WEIGHTS is empty: give the checkpoint to export (MODEL.WEIGHTS "
            "path/to/model_final.pth), or --random-weights to export an untrained model"
        )
    if weights and random_weights:
        raise ValueError(
            f"MODEL.WEIGHTS={weights!r} and --random-weights were both given: pass one of them"
        )
    model = build_model(cfg)
    if weights:
        check_weights_on_disk(weights)
        loaded = build_checkpointer(model, "", cfg=cfg, strict=True).load(weights)
        check_input_normalization(cfg, loaded)
    return model.eval()


def detector_samples(cfg, sample_image: Optional[str] = None, count: int = 2) -> List[Dict]:
    """Detector inputs ("image": float32 CHW, 0-255, INPUT.FORMAT, resized as for testing):
    `sample_image` resized as DefaultPredictor does, else the first `count` images of
    DATASETS.TEST[0] (the demo data is generated on demand)."""
    if sample_image:
        import detectron2.data.transforms as T

        from .data.imagefolder import read_rgb_image

        if not os.path.isfile(sample_image):
            raise FileNotFoundError(f"--sample-image {sample_image!r} does not exist")
        image = np.asarray(read_rgb_image(sample_image))
        image = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
        size = cfg.INPUT.MIN_SIZE_TEST
        resized = T.ResizeShortestEdge([size, size], cfg.INPUT.MAX_SIZE_TEST).get_transform(image)
        tensor = torch.as_tensor(resized.apply_image(image).astype("float32").transpose(2, 0, 1))
        return [{"image": tensor, "height": image.shape[0], "width": image.shape[1]}]
    from detectron2.data import build_detection_test_loader

    from .data.checks import prepare_datasets

    if not cfg.DATASETS.TEST:
        raise ValueError("DATASETS.TEST is empty: give --sample-image IMAGE or a test dataset")
    name = cfg.DATASETS.TEST[0]
    prepare_datasets([name])
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATALOADER.NUM_WORKERS = 0
    samples = []
    for batch in build_detection_test_loader(cfg, name):
        # float32, as DefaultPredictor's input: the exported model takes float images.
        samples.extend(dict(s, image=s["image"].float()) for s in batch)
        if len(samples) >= count:
            break
    return samples[:count]


# ---------------------------------------------------------------------------------------------
# Freezing: the eval-mode fast execution with its per-call work done once


def _is_affine_norm(norm) -> bool:
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return type(norm) is nn.BatchNorm2d and norm.running_mean is not None


def _fold_into_conv(conv: nn.Conv2d, norm: nn.Module) -> None:
    """conv <- norm(conv) in place: W' = a W, b' = a b + c for norm(z) = a z + c."""
    a, c = (t.detach() for t in _affine_of_norm(norm))
    with torch.no_grad():
        bias = c if conv.bias is None else a * conv.bias + c
        conv.weight.copy_(conv.weight * a.view(-1, 1, 1, 1).to(conv.weight.dtype))
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def fold_conv_norms(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm / FrozenBN that directly follows a conv
    (Detectron2 `Conv2d(norm=...)`, `Sequential(..., conv, norm, ...)`, the classifier head)
    into that conv, in place. Returns the number folded."""
    folded = 0
    for m in list(module.modules()):
        pairs = []
        if isinstance(m, nn.Conv2d) and _is_affine_norm(getattr(m, "norm", None)):
            pairs.append((m, m, "norm"))
        elif isinstance(m, ClassifierHead) and _is_affine_norm(m.norm):
            pairs.append((m.conv, m, "norm"))
        elif isinstance(m, nn.Sequential):
            children = list(m.named_children())
            for (_, conv), (name, norm) in zip(children, children[1:]):
                if isinstance(conv, nn.Conv2d) and _is_affine_norm(norm):
                    pairs.append((conv, m, name))
        for conv, parent, name in pairs:
            _fold_into_conv(conv, getattr(parent, name))
            setattr(parent, name, None if parent is conv else nn.Identity())
            folded += 1
    return folded


class FrozenStage(nn.Module):
    """A wired stage for inference: y_v = f_v(ReLU(sum_i c_i y_u_i)) in the order of its
    `StagePlan`, with c_i = sigmoid(w_i) as constants, the stage input's ReLU computed once, and
    each node's affine norm folded into its last conv (f_v = the node op's layers)."""

    def __init__(self, stage: WiredStage):
        """
        Args:
            stage: the `WiredStage` to freeze (in eval mode; its modules are shared, so freeze
                a copy, as `freeze_for_export` does).
        """
        super().__init__()
        self.sources = stage.plan.sources
        self.outputs = stage.plan.outputs
        self.coefficients: List[Optional[Tuple[float, ...]]] = []
        self.relu_first: List[bool] = []
        self.nodes = nn.ModuleList()
        for node, spec in zip(stage.nodes, stage.specs):
            c = None if node.weight is None else torch.sigmoid(node.weight.detach()).tolist()
            self.coefficients.append(None if c is None else tuple(c))
            self.relu_first.append(spec.relu_first)
            if not spec.relu_first:  # a user op of another form: run its transform as it is
                self.nodes.append(node.transform)
                continue
            layers = list(spec.layers)
            if spec.foldable and _is_affine_norm(spec.norm):
                _fold_into_conv(layers[-1], spec.norm)
            else:
                layers.append(spec.norm)
            self.nodes.append(nn.Sequential(*layers))

    def forward(self, x):
        relu_x: Optional[torch.Tensor] = None
        y: List[torch.Tensor] = []
        for src, c, relu, op in zip(self.sources, self.coefficients, self.relu_first, self.nodes):
            if src[0] == STAGE_INPUT:
                if relu and relu_x is None:
                    relu_x = F.relu(x)
                s = relu_x if relu else x
            else:
                s = y[src[0]] if c is None else y[src[0]] * c[0]
                for u, ci in zip(src[1:], c[1:] if c is not None else ()):
                    s = s + y[u] * ci
                s = F.relu(s) if relu else s
            y.append(op(s))
        out = y[self.outputs[0]]
        for u in self.outputs[1:]:
            out = out + y[u]
        return out / len(self.outputs) if len(self.outputs) > 1 else out


def freeze_for_export(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` whose wired stages are `FrozenStage`s and whose conv -> BN
    pairs are folded: the same function (up to float rounding), a smaller graph."""
    frozen = copy.deepcopy(model).eval()
    _, trunk = find_trunk(frozen)
    for name, stage in trunk.wired_stages().items():
        setattr(trunk, name, FrozenStage(stage))
    fold_conv_norms(frozen)
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


# ---------------------------------------------------------------------------------------------
# Traceable wrappers


class ClassifierExport(nn.Module):
    """RandWireClassifier as images -> logits: (images - pixel_mean) / pixel_std -> trunk -> head.
    `images` is an NCHW float batch in INPUT.FORMAT, 0-255, as the model's "image" inputs."""

    def __init__(self, model: RandWireClassifier):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.logits((images - self.model.pixel_mean) / self.model.pixel_std)


def _detector_inference(model, inputs):
    # As Detectron2's export_model.py: R-CNN without postprocessing (the resize to the original
    # image size), other meta-architectures (RetinaNet) as they are called.
    if isinstance(model, GeneralizedRCNN):
        return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]
    return model(inputs)


def detector_adapter(model: nn.Module, sample: Dict) -> TracingAdapter:
    """Detectron2's TracingAdapter of a detector: CHW image tensor -> flattened Instances.
    In eval mode: torch.onnx.export restores the mode it finds, for the wrapped model too."""
    return TracingAdapter(model, [{"image": sample["image"]}], _detector_inference).eval()


# ---------------------------------------------------------------------------------------------
# Writing and running the formats


def _export_onnx(
    module: nn.Module, args: tuple, path: str, input_names, output_names=None, dynamic_axes=None
):
    torch.onnx.export(
        module,
        args,
        path,
        dynamo=False,
        opset_version=ONNX_OPSET,
        input_names=list(input_names),
        output_names=output_names,
        dynamic_axes=dynamic_axes,
    )


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
    """Run an onnxruntime `session` on `tensors` (its inputs, in order). A tensor whose shape
    differs from the input's declared one where that is a number (an axis fixed at export) is a
    `ValueError` naming both shapes, before onnxruntime runs."""
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


# ---------------------------------------------------------------------------------------------
# Comparisons


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
    if len(a[1]) and len(b[1]):
        box = (a[0][:, None, :].float() - b[0][None, :, :].float()).abs().amax(-1)
        score = (a[1][:, None].float() - b[1][None, :].float()).abs()
        ok = (a[2][:, None] == b[2][None, :]) & (score <= score_atol) & (box <= box_atol)
        cost = torch.where(ok, box, torch.full_like(box, float("inf")))
        used, box_d, score_d = set(), [], []
        for i in range(cost.shape[0]):
            for j in cost[i].argsort().tolist():
                if not torch.isfinite(cost[i, j]):
                    break
                if j not in used:
                    used.add(j)
                    box_d.append(float(box[i, j]))
                    score_d.append(float(score[i, j]))
                    break
        matched = len(used)
    else:
        matched, box_d, score_d = 0, [], []
    out.update(
        matched=matched,
        max_box_diff=max(box_d, default=0.0),
        max_score_diff=max(score_d, default=0.0),
        ok=matched == len(a[1]) == len(b[1]),
    )
    return out


def _check(results: Dict, what: str) -> None:
    bad = {k: v for k, v in results.items() if not v["ok"]}
    if bad:
        lines = [f"{k}: {json.dumps(v)}" for k, v in bad.items()]
        raise ExportMismatchError(
            f"the exported {what} differs from the eager model beyond tolerance:\n  "
            + "\n  ".join(lines)
        )


# ---------------------------------------------------------------------------------------------
# Classifier


def classifier_samples(
    size: int, batch: int = 1, count: int = 3, seed: int = 0, device="cpu"
) -> List[torch.Tensor]:
    """`count` reproducible random NCHW batches of 0-255 images (the first one is traced)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, 3, size, size, generator=g) * 255).to(device) for _ in range(count)]


def _check_counts(values, name: str, limit: int, what: str) -> Tuple[int, ...]:
    values = tuple(values)
    if any(type(v) is not int or not 1 <= v <= limit for v in values):
        raise ValueError(f"{name} {list(values)} is invalid: expected {what} from 1 to {limit}")
    return values


def _shape_spec(shape, dynamic: Dict[int, str]) -> List:
    """[batch, 3, 32, 32]: the axis names where `dynamic` names one, else the traced size."""
    return [dynamic.get(i, int(n)) for i, n in enumerate(shape)]


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
    """Write `formats` of images -> logits to `output_dir`, with a dynamic batch axis (ONNX
    dynamic_axes, torch.export Dim "batch"; TorchScript traces batch-generic) and height and
    width fixed at samples[0]'s. Run each file on every sample and on a batch of every size in
    `check_batches` (default: two of 1, 2, 3 other than samples[0]'s), compare with the eager
    model and raise `ExportMismatchError` beyond tolerance. Returns {format: {"file", "ops",
    "input_shape" (named axes vary), per-input comparisons "checks"}}."""
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
    report = {}
    for fmt in formats:
        path = os.path.join(output_dir, FORMATS[fmt])
        start = time.perf_counter()
        with torch.no_grad():
            if fmt == "pt2":
                # torch.export specializes a size-1 axis to 1: trace on a batch of two or more.
                example = x0 if batch > 1 else torch.cat([x0, x0])
                dims = {"images": {0: torch.export.Dim(CLASSIFIER_AXES[0], min=1)}}
                program = torch.export.export(net, (example,), dynamic_shapes=dims)
                torch.export.save(program, path)
                run, ops = torch.export.load(path).module(), exported_program_op_count(program)
            elif fmt == "torchscript":
                torch.jit.save(torch.jit.trace(net, (x0,)), path)
                run = torch.jit.load(path)
                ops = torchscript_op_count(run)
            else:
                axes = {"images": CLASSIFIER_AXES, "logits": CLASSIFIER_AXES}
                _export_onnx(net, (x0,), path, ["images"], ["logits"], axes)
                session = onnx_session(path)
                run, ops = (lambda x, s=session: run_onnx(s, x)[0]), onnx_op_count(path)
            seconds = time.perf_counter() - start
            checks = {
                f"{fmt}[{k}]": dict(
                    compare_logits(eager[k], run(x), atol, rtol), input_shape=list(x.shape)
                )
                for k, x in inputs.items()
            }
        logger.info(f"wrote {path} ({ops} ops, {seconds:.1f} s)")
        _check(checks, f"classifier ({path})")
        report[fmt] = _entry(path, ops, seconds, input_shape, checks)
    return report


# ---------------------------------------------------------------------------------------------
# Detector


def _other_sizes(height: int, width: int) -> List[Tuple[int, int]]:
    """Two (height, width) other than the traced one, one wider and one taller, neither a
    multiple of 32 for a multiple of 64 (so the padding to the backbone's stride is checked)."""
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
    """Trace the detector on samples[0]["image"] through TracingAdapter, write `formats`
    ("torchscript", "onnx") to `output_dir`, run each on every sample and on samples[0]'s image
    resized to every (height, width) of `check_sizes` (default: two others than its own), and
    compare its detections with the eager model's; `ExportMismatchError` beyond tolerance.

    Height and width are dynamic (ONNX dynamic_axes; the traced TorchScript graph computes its
    shapes from the input's, Detectron2's code being written for that). The input is one CHW
    image: the number of images and the 3 channels are fixed. Returns {format: {"file", "ops",
    "input_shape" (named axes vary), per-input comparisons "checks"}}."""
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
    input_shape = _shape_spec(image.shape, DETECTOR_AXES)
    report = {}
    for fmt in formats:
        path = os.path.join(output_dir, FORMATS[fmt])
        start = time.perf_counter()
        with torch.no_grad():
            if fmt == "torchscript":
                traced = torch.jit.trace(adapter, (image,))
                torch.jit.save(traced, path)
                dump_torchscript_IR(traced, output_dir)
                run = torch.jit.load(path)
                ops = torchscript_op_count(run)
            else:
                axes = {"image": DETECTOR_AXES}
                _export_onnx(adapter, (image,), path, ["image"], dynamic_axes=axes)
                session = onnx_session(path)
                run, ops = (lambda x, s=session: run_onnx(s, x)), onnx_op_count(path)
            seconds = time.perf_counter() - start
            checks = {}
            for k, x in inputs.items():
                got = adapter.outputs_schema(tuple(run(x)))[0]["instances"]
                checks[f"{fmt}[{k}]"] = dict(
                    compare_instances(eager[k], got, box_atol, score_atol),
                    input_shape=list(x.shape),
                )
        logger.info(f"wrote {path} ({ops} ops, {seconds:.1f} s)")
        _check(checks, f"detector ({path})")
        report[fmt] = _entry(path, ops, seconds, input_shape, checks)
    logger.info(f"inputs schema: {adapter.inputs_schema}; outputs schema: {adapter.outputs_schema}")
    return report


# ---------------------------------------------------------------------------------------------
# Graph sizes and latency


EXECUTIONS_COMPARED = ("reference", "fast", "export")


def _variant(model: nn.Module, execution: str) -> nn.Module:
    """The model as traced with `execution`: "reference" / "fast" (MODEL.RANDWIRE.EXECUTION,
    unfrozen) or "export" (`freeze_for_export`)."""
    if execution == "export":
        return freeze_for_export(model)
    variant = copy.deepcopy(model).eval()
    _, trunk = find_trunk(variant)
    trunk.set_execution(execution)
    return variant


@quiet_export_warnings()
def _entry(path: str, ops: int, seconds: float, input_shape, checks: Dict) -> Dict:
    """A written file's line of export_report.json."""
    # fmt: off
    return {"file": path, "ops": ops, "export_seconds": seconds, "input_shape": input_shape,
            "checks": checks}
    # fmt: on


def op_counts(
    model: nn.Module,
    wrap: Callable[[nn.Module], nn.Module],
    args: tuple,
    formats: Sequence[str] = ("pt2", "torchscript", "onnx"),
    executions: Sequence[str] = EXECUTIONS_COMPARED,
    dynamic_axes: Optional[Dict[int, Dict[int, str]]] = None,
) -> Dict[str, Dict[str, int]]:
    """{execution: {format: op count}} of `wrap(model as run by execution)` traced on `args`
    (formats: "pt2" torch.export call_function nodes, "torchscript" aten:: nodes of the inlined
    trace, "onnx" non-Constant ONNX nodes). `dynamic_axes` ({input index: {axis: name}}, e.g.
    {0: DETECTOR_AXES}) exports the ONNX graphs with those axes dynamic, as the written file:
    shape arithmetic that a static export folds into constants stays in the graph."""
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
                _export_onnx(net, args, path, names, dynamic_axes=axes or None)
                row["onnx"] = onnx_op_count(path)
            counts[execution] = row
    return counts


@quiet_export_warnings()
def classifier_latency(
    model: RandWireClassifier, images: torch.Tensor, runs: int = 20, warmup: int = 3
) -> Dict[str, float]:
    """Median milliseconds per call on `images`, the runs of every variant interleaved in one
    process: eager "reference" and "fast" executions, eager "export" (frozen), and
    "onnxruntime" (the frozen model's ONNX file, as many threads as torch)."""
    fns = {}
    for execution in EXECUTIONS_COMPARED:
        fns[f"eager {execution}"] = ClassifierExport(_variant(model, execution)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with torch.no_grad():
            _export_onnx(fns["eager export"], (images,), path, ["images"])
        session = onnx_session(path)
        feed = {session.get_inputs()[0].name: images.cpu().numpy()}
        fns["onnxruntime"] = lambda _x: session.run(None, feed)
        times = {k: [] for k in fns}
        with torch.no_grad():
            for i in range(warmup + runs):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn(images)
                    if i >= warmup:
                        times[name].append(time.perf_counter() - start)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# The differences a check reports: a classifier's logits, a detector's boxes and scores.
_DIFF_KEYS = ("max_abs_diff", "max_box_diff", "max_score_diff")


def checks_summary(entry: Dict) -> str:
    """What one format of an export report matched: how many inputs, their shapes (a shape
    run n > 1 times as "shape (n)"), and the largest differences to the eager model."""
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
    """The markdown table of an export report (export_classifier / export_detector): per
    format its file, ops, input shape (names: the axes that vary) and what it matched."""
    rows = [
        [fmt, r["file"], r["ops"], _shape_text(r["input_shape"]), checks_summary(r)]
        for fmt, r in report.items()
        if fmt in FORMATS
    ]
    return markdown_table(["format", "file", "ops", "input", "matches eager"], rows)
