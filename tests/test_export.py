"""Export (randwire_d2/export/, tools/export_model.py): exported graphs compute what the eager
model computes, onnxruntime runs the ONNX files, weights load strictly, the graph is small."""

import json
import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from common import CLS_CONFIG, DET_CONFIG, RETINA_CONFIG
from common import TINY_EXPORT_CLS as TINY_CLS
from common import TINY_EXPORT_DET
from common import TINY_EXPORT_DET as TINY_DET
from common import load_tool
from common import save_model_final as save_checkpoint
from common import tiny_export_model
from common import tiny_export_model as tiny_model
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from torch.fx._symbolic_trace import is_fx_tracing_warning

import randwire_d2.export as export
from randwire_d2.config import load_config
from randwire_d2.data import generate_detection_demo
from randwire_d2.data.dataset_checks import register_user_datasets
from randwire_d2.export import op_counts
from randwire_d2.inference_setup import load_model

export_model = load_tool("export_model")


@pytest.fixture(scope="module")
def cls_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cls_ckpt")
    return save_checkpoint(tiny_model(), CLS_CONFIG, TINY_CLS, folder)


@pytest.mark.parametrize(
    "extra",
    [
        [],
        [
            "MODEL.RANDWIRE.NODE_OP",
            "conv3x3",
            "MODEL.RANDWIRE.REGIME",
            "regular",
            "MODEL.RANDWIRE.WS_K",
            "2",
        ],
        ["MODEL.RANDWIRE.NODE_OP", "avg_pool3x3_conv1x1", "MODEL.RANDWIRE.NORM", "FrozenBN"],
        ["MODEL.RANDWIRE.NODE_OP", "max_pool3x3_conv1x1", "MODEL.RANDWIRE.NORM", "GN"],
    ],
)
def test_frozen_model_computes_the_eager_function(extra, one_thread):
    model = tiny_model(CLS_CONFIG, TINY_CLS, *extra)
    x = export.classifier_samples(40, batch=2, count=1)[0]
    frozen = export.freeze_for_export(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    with torch.no_grad():
        got = export.ClassifierExport(frozen)(x)
        for execution in ("reference", "fast"):
            model.backbone.set_execution(execution)
            want = export.ClassifierExport(model)(x)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_classifier_export_takes_any_batch_at_the_traced_size(tmp_path, one_thread):
    """pt2 and ONNX traced at batch 1 run other batches (a dynamic batch axis): checked by the
    export at batches 2 and 3, and here, loaded on their own. Another image size is an error
    of our runner that names the shapes."""
    model = tiny_model()
    samples = export.classifier_samples(32, batch=1, count=1)
    report = export.export_classifier(model, str(tmp_path), samples, ("pt2", "onnx"))
    for fmt, name in (("pt2", "model.pt2"), ("onnx", "model.onnx")):
        r = report[fmt]
        assert r["file"] == str(tmp_path / name) and os.path.isfile(r["file"])
        assert r["input_shape"] == ["batch", 3, 32, 32]
        shapes = [c["input_shape"] for c in r["checks"].values()]
        assert shapes == [[1, 3, 32, 32], [2, 3, 32, 32], [3, 3, 32, 32]]
        assert all(c["ok"] and c["max_abs_diff"] < 1e-4 for c in r["checks"].values())
    table = export.report_table(report)
    assert "| [batch, 3, 32, 32] | 3 inputs (1x3x32x32, 2x3x32x32, 3x3x32x32)" in table
    # The files, loaded on their own, give the eager logits at batches other than the traced.
    pt2 = torch.export.load(str(tmp_path / "model.pt2")).module()
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (2, 5):
        x = export.classifier_samples(32, batch=batch, count=1, seed=batch)[0]
        with torch.no_grad():
            want = export.ClassifierExport(model)(x)
            got_pt2 = pt2(x)
        (onnx_out,) = session.run(None, {"images": x.numpy()})
        for got in (got_pt2, torch.from_numpy(onnx_out)):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    with pytest.raises(
        ValueError,
        match=r"'images' of shape \[2, 3, 40, 40\] does not fit the exported model, which takes "
        r"\[batch, 3, 32, 32\]: only batch may vary",
    ):
        export.run_onnx(session, export.classifier_samples(40, batch=2, count=1)[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"check_batches": [2, 0]}, r"check_batches \[2, 0\] is invalid: .* from 1 to 64"),
        ({"check_batches": [65]}, r"check_batches \[65\] is invalid"),
        ({"check_sizes": [(48, 4097)]}, r"check_sizes \[48, 4097\] is invalid: .* 1 to 4096"),
        ({"check_sizes": [(48,)]}, r"check_sizes: \(48,\) is invalid: expected \(height, width\)"),
    ],
)
def test_checked_shapes_are_bounded(kwargs, message, tmp_path):
    if "check_sizes" in kwargs:
        model, samples = tiny_model(DET_CONFIG, TINY_DET), [{"image": torch.zeros(3, 64, 64)}]
        run = export.export_detector
    else:
        model, samples = tiny_model(), export.classifier_samples(32, count=1)
        run = export.export_classifier
    with pytest.raises(ValueError, match=message):
        run(model, str(tmp_path), samples, ("onnx",), **kwargs)
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.slow
def test_exported_graph_is_smaller_than_the_reference_one(one_thread):
    model = tiny_model()
    x = export.classifier_samples(32, count=1)[0]
    formats, executions = ("torchscript", "onnx"), ("reference", "export")
    counts = op_counts(model, export.ClassifierExport, (x,), formats, executions)
    for fmt in ("torchscript", "onnx"):
        assert 0 < counts["export"][fmt] < counts["reference"][fmt], counts


def test_a_mismatching_export_fails_loudly(tmp_path, monkeypatch, one_thread):
    model = tiny_model()
    freeze = export.freeze_for_export

    def broken_freeze(m):
        frozen = freeze(m)
        with torch.no_grad():
            frozen.head.fc.bias.add_(0.5)
        return frozen

    monkeypatch.setattr(export.classifier, "freeze_for_export", broken_freeze)
    samples = export.classifier_samples(32, count=1)
    with pytest.raises(export.ExportMismatchError, match=r"onnx\[sample 0\].*max_abs_diff.*0\.5"):
        export.export_classifier(model, str(tmp_path), samples, ("onnx",))


def test_detections_are_compared_by_class_score_and_box():
    def instances(boxes, scores, classes):
        i = Instances((64, 64))
        i.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        i.scores = torch.tensor(scores)
        i.pred_classes = torch.tensor(classes)
        return i

    eager = instances([[0, 0, 10, 10], [5, 5, 20, 20]], [0.9, 0.9], [1, 2])
    swapped = instances([[5, 5, 20, 20], [0, 0, 10, 10]], [0.9, 0.9], [2, 1])  # a tie reordered
    assert export.compare_instances(eager, swapped, 1e-2, 1e-4)["ok"]
    moved = instances([[0, 0, 10, 10], [5, 5, 20, 21]], [0.9, 0.9], [1, 2])
    result = export.compare_instances(eager, moved, 1e-2, 1e-4)
    assert not result["ok"] and result["matched"] == 1
    fewer = instances([[0, 0, 10, 10]], [0.9], [1])
    assert not export.compare_instances(eager, fewer, 1e-2, 1e-4)["ok"]


@pytest.fixture(scope="module")
def det_test_data(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("export_det_data"))
    paths = generate_detection_demo(
        folder, {"val": 2}, image_size=(64, 64), objects_per_image=(1, 2), object_size=(14, 30)
    )
    if "export_test_val" in DatasetCatalog.list():
        DatasetCatalog.remove("export_test_val")
        MetadataCatalog.remove("export_test_val")
    register_user_datasets([("export_test_val", paths["val"], os.path.join(folder, "val"))])
    return "export_test_val"


def detections(boxes, classes, scores, size):
    """Instances from the ONNX detector's outputs."""
    result = Instances(tuple(int(v) for v in size))
    result.pred_boxes = Boxes(torch.as_tensor(boxes))
    result.pred_classes, result.scores = torch.as_tensor(classes), torch.as_tensor(scores)
    return result


@pytest.mark.slow
def test_cli_exports_a_detector_checkpoint(
    tmp_path, det_test_data, caplog, monkeypatch, capsys, one_thread
):
    """ONNX and TorchScript through TracingAdapter, traced on DATASETS.TEST and checked on its
    images and at two other sizes; the ONNX file takes any height and width. The run shows no
    third-party notes (the tracer's, torch.jit's deprecations, meshgrid, is_fx_tracing)."""
    model = tiny_model(DET_CONFIG, TINY_DET)
    weights = save_checkpoint(model, DET_CONFIG, TINY_DET, tmp_path)
    out = tmp_path / "export"
    # As in a fresh process: torch logs is_fx_tracing once; another test may have quieted it.
    is_fx_tracing_warning.cache_clear()
    monkeypatch.setattr(logging.getLogger("torch.fx._symbolic_trace"), "filters", [])
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        export_model.main(
            ["--config-file", DET_CONFIG, "--export-method", "tracing"]
            + ["--format", "onnx", "torchscript", "--output", str(out)]
            + TINY_DET
            + ["MODEL.WEIGHTS", weights, "DATASETS.TEST", f"('{det_test_data}',)"]
        )
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("torch")] == []
    report = json.loads((out / "export_report.json").read_text())
    for fmt in ("torchscript", "onnx"):
        assert os.path.isfile(report[fmt]["file"])
        assert report[fmt]["input_shape"] == [3, "height", "width"]
        checks = report[fmt]["checks"].values()
        shapes = [c["input_shape"] for c in checks]
        assert shapes == [[3, 64, 64], [3, 64, 64], [3, 48, 80], [3, 80, 48]]
        assert all(c["ok"] and c["matched"] > 0 for c in checks)
    assert (out / "model_ts_IR.txt").is_file()
    assert f"{out / 'model.ts'} loads after `import torchvision`" in capsys.readouterr().out
    # The ONNX file on its own, at sizes other than the traced 64x64, detects as eager.
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for height, width in ((56, 72), (96, 40)):
        image = rng.uniform(0, 255, (3, height, width)).astype(np.float32)
        got = detections(*session.run(None, {"image": image}))
        with torch.no_grad():
            want = model.inference([{"image": torch.from_numpy(image)}], do_postprocess=False)[0]
        assert got.image_size == (height, width)
        result = export.compare_instances(want, got, 1e-2, 1e-4)
        assert result["ok"] and result["matched"] > 0, result


@pytest.mark.slow
def test_retinanet_exports_and_takes_other_image_sizes(tmp_path, one_thread):
    """A detector without R-CNN's `inference` (RetinaNet) is exported as it is called."""
    model = tiny_model(RETINA_CONFIG, TINY_DET)
    with torch.no_grad():  # scores spread apart (random weights give every anchor the prior's)
        cls_score = model.head.cls_score
        cls_score.weight.copy_(
            torch.randn(cls_score.weight.shape, generator=torch.Generator().manual_seed(0))
        )
        cls_score.bias.fill_(-2.0)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    report = export.export_detector(model, str(tmp_path), [{"image": image}], ("onnx",))
    checks = report["onnx"]["checks"].values()
    assert [c["input_shape"] for c in checks] == [[3, 64, 64], [3, 48, 80], [3, 80, 48]]
    assert all(c["ok"] and c["matched"] > 0 for c in checks)


def test_cli_exports_a_classifier_checkpoint(tmp_path, cls_checkpoint, capsys, one_thread):
    out = tmp_path / "export"
    export_model.main(
        ["--config-file", CLS_CONFIG, "--format", "onnx", "--input-size", "32", "--output"]
        + [str(out)]
        + TINY_CLS
        + ["MODEL.WEIGHTS", cls_checkpoint]
    )
    report = json.loads((out / "export_report.json").read_text())
    assert list(report) == ["onnx"] and (out / "model.onnx").is_file()
    assert "| onnx |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "opts, args, message",
    [
        ([], [], r"MODEL\.WEIGHTS is empty.*--random-weights"),
        (["MODEL.WEIGHTS", "missing.pth"], [], r"MODEL\.WEIGHTS='missing\.pth' does not exist"),
        (["MODEL.RANDWIRE.SEED", "2", "MODEL.WEIGHTS", "CKPT"], [], r"wiring .* but the model"),
        (["MODEL.CLASSIFIER.NUM_CLASSES", "7", "MODEL.WEIGHTS", "CKPT"], [], r"other shapes"),
        (["MODEL.WEIGHTS", "CKPT"], ["--random-weights"], r"--random-weights were both given"),
    ],
)
def test_missing_or_mismatched_weights_are_errors(opts, args, message, cls_checkpoint, tmp_path):
    opts = [cls_checkpoint if o == "CKPT" else o for o in opts]
    argv = ["--config-file", CLS_CONFIG, "--output", str(tmp_path)] + args + TINY_CLS + opts
    with pytest.raises(SystemExit, match=message):
        export_model.main(argv)
    assert not (tmp_path / "model.pt2").exists()


def test_random_weights_flag_exports_without_weights(tmp_path):
    cfg = load_config(CLS_CONFIG, TINY_CLS)
    model, _ = load_model(cfg, random_weights=True)
    assert not model.training


@pytest.mark.slow
def test_op_counts_of_the_fast_execution_trace_torch_export(one_thread):
    """torch.export traces the fast execution's eval path: its cached constants (coefficients,
    folded norms) are computed in the graph, not read from a cache keyed on real storage."""
    from randwire_d2.export import ClassifierExport

    model = tiny_model().eval()
    counts = op_counts(model, ClassifierExport, (torch.rand(2, 3, 32, 32) * 255,), ["pt2"])
    assert counts["fast"]["pt2"] > 0 and counts["export"]["pt2"] > 0


@pytest.mark.slow
def test_exported_detector_files_have_the_documented_names_and_load_as_documented(
    tmp_path, one_thread
):
    """docs/predict_and_export.md: the ONNX outputs are named pred_boxes, pred_classes, scores,
    image_size; model.ts loads after `import torchvision`, and not without it."""
    import onnx

    from randwire_d2 import export

    model = tiny_export_model(DET_CONFIG, TINY_EXPORT_DET)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    formats = ("onnx", "torchscript")
    export.export_detector(model, str(tmp_path), [{"image": image}], formats, check_sizes=[])
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["pred_boxes", "pred_classes", "scores", "image_size"]
    load = f"import torch; torch.jit.load({str(tmp_path / 'model.ts')!r})"
    plain = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True)
    assert plain.returncode != 0 and "Unknown builtin op: torchvision::nms" in plain.stderr
    documented = subprocess.run([sys.executable, "-c", "import torchvision; " + load])
    assert documented.returncode == 0
