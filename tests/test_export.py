"""Export (randwire_d2/export.py, tools/export_model.py): exported graphs compute what the eager
model computes, onnxruntime runs the ONNX files, weights load strictly, the graph is small."""

import json
import os
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import randwire_d2.export as export
from randwire_d2.config import load_config
from randwire_d2.data import generate_detection_demo
from randwire_d2.data.checks import register_user_datasets
from randwire_d2.engine import build_checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import export_model  # noqa: E402

CLS_CONFIG = os.path.join(REPO, "configs", "demo", "randwire_cls_demo.yaml")
DET_CONFIG = os.path.join(REPO, "configs", "demo", "faster_rcnn_randwire_demo.yaml")
# fmt: off
TINY_CLS = ["MODEL.DEVICE", "cpu", "MODEL.RANDWIRE.NUM_NODES", "6", "MODEL.RANDWIRE.CHANNELS", "8",
            "MODEL.CLASSIFIER.HEAD_CHANNELS", "32"]
TINY_DET = ["MODEL.DEVICE", "cpu", "MODEL.RANDWIRE.NUM_NODES", "6", "MODEL.RANDWIRE.CHANNELS", "8",
            "MODEL.RANDWIRE.WS_K", "2", "MODEL.FPN.OUT_CHANNELS", "16",
            "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64"]
# fmt: on


def randomize_norms(model, seed=0):
    """Non-trivial BN statistics and affine, so that folding them is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
            elif hasattr(m, "weight") and isinstance(m.weight, torch.nn.Parameter):
                if m.weight.dim() == 1 and m.weight.shape[0] > 1 and type(m).__name__ == "Node":
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g))
    return model.eval()


def tiny_model(config=CLS_CONFIG, opts=TINY_CLS, *extra):
    torch.manual_seed(0)
    return randomize_norms(build_model(load_config(config, list(opts) + list(extra))))


def save_checkpoint(model, config, opts, folder):
    cfg = load_config(config, opts)
    build_checkpointer(model, str(folder), cfg=cfg).save("model_final")
    return str(folder / "model_final.pth")


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


def test_classifier_export_matches_eager_and_runs_in_onnxruntime(tmp_path, one_thread):
    model = tiny_model()
    samples = export.classifier_samples(32, batch=2, count=2)
    report = export.export_classifier(model, str(tmp_path), samples, ("pt2", "onnx"))
    for fmt, name in (("pt2", "model.pt2"), ("onnx", "model.onnx")):
        assert report[fmt]["file"] == str(tmp_path / name) and os.path.isfile(report[fmt]["file"])
        assert all(c["ok"] and c["max_abs_diff"] < 1e-4 for c in report[fmt]["checks"].values())
    # The files, loaded on their own, give the eager logits.
    with torch.no_grad():
        want = export.ClassifierExport(model)(samples[1])
        pt2 = torch.export.load(str(tmp_path / "model.pt2")).module()(samples[1])
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"images": samples[1].numpy()})
    for got in (pt2, torch.from_numpy(onnx_out)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_exported_graph_is_smaller_than_the_reference_one(one_thread):
    model = tiny_model()
    x = export.classifier_samples(32, count=1)[0]
    formats, executions = ("torchscript", "onnx"), ("reference", "export")
    counts = export.op_counts(model, export.ClassifierExport, (x,), formats, executions)
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

    monkeypatch.setattr(export, "freeze_for_export", broken_freeze)
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


def test_cli_exports_a_detector_checkpoint(tmp_path, det_test_data, one_thread):
    """TorchScript through TracingAdapter and ONNX, traced on DATASETS.TEST, checked."""
    model = tiny_model(DET_CONFIG, TINY_DET)
    weights = save_checkpoint(model, DET_CONFIG, TINY_DET, tmp_path)
    out = tmp_path / "export"
    export_model.main(
        ["--config-file", DET_CONFIG, "--export-method", "tracing"]
        + ["--format", "torchscript", "onnx", "--output", str(out)]
        + TINY_DET
        + ["MODEL.WEIGHTS", weights, "DATASETS.TEST", f"('{det_test_data}',)"]
    )
    report = json.loads((out / "export_report.json").read_text())
    for fmt in ("torchscript", "onnx"):
        assert os.path.isfile(report[fmt]["file"])
        checks = report[fmt]["checks"]
        assert len(checks) == 2 and all(c["ok"] and c["matched"] > 0 for c in checks.values())
    assert (out / "model_ts_IR.txt").is_file()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).uniform(0, 255, (3, 64, 64)).astype(np.float32)
    boxes, classes, scores, size = session.run(None, {"image": image})
    assert boxes.shape[1] == 4 and len(boxes) == len(scores) == len(classes)


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
    model = export.build_export_model(cfg, random_weights=True)
    assert not model.training
