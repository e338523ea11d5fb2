"""What a user sees when a command line is slightly wrong or the machine is offline: options given
after the KEY VALUE overrides, weights at a URL that cannot be downloaded; and the names an
exported file shows (issue 25, item 12)."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from common import (
    CLS_CONFIG,
    DET_CONFIG,
    LAZY_DET_CONFIG,
    TINY_EXPORT_DET,
    TINY_LAZY,
    TINY_PREDICT_CLS,
    call_tool,
    load_tool,
    tiny_cls_cfg,
    tiny_export_model,
    write_image,
)
from detectron2.config import instantiate
from detectron2.data import Metadata
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from randwire_d2.checkpoint import build_checkpointer, load_for_eval
from randwire_d2.config import load_lazy_config
from randwire_d2.engine.resume import resume_or_load
from randwire_d2.predict import MANIFEST_FILE, DetectionPredictor, predict

# Nothing listens on port 9 (discard) of this machine: the connection is refused at once, as
# any download is on a machine without network.
OFFLINE_URL = "http://127.0.0.1:9/model_final.pth"
HINT = "expected KEY VALUE pairs (options such as --resume go before the overrides)"


@pytest.mark.parametrize(
    "tool, config, late",
    [
        ("train_net", DET_CONFIG, ["--resume"]),
        ("train_net", DET_CONFIG, ["--resume", "--overwrite"]),
        ("train_cls", CLS_CONFIG, ["--eval-only"]),
    ],
)
def test_options_after_the_overrides_are_an_error_that_says_where_they_go(tool, config, late):
    module = load_tool(tool)
    args = module.build_parser().parse_args(
        ["--config-file", config, "MODEL.WEIGHTS", "w.pth", *late]
    )
    with pytest.raises(ValueError) as e:
        module.setup(args)
    assert str(e.value) == f"override {late[0]!r} is invalid: {HINT}"


def test_weights_at_a_url_without_network_name_the_key_and_the_url(tmp_path):
    reason = "[Errno 111] Connection refused"
    cfg = tiny_cls_cfg()
    cfg.MODEL.WEIGHTS = OFFLINE_URL
    with pytest.raises(OSError) as e:
        load_for_eval(cfg, build_model(cfg))
    assert str(e.value) == (
        f"MODEL.WEIGHTS='{OFFLINE_URL}' cannot be downloaded ({reason}): without network "
        "access, download it elsewhere and set MODEL.WEIGHTS to the local file"
    )
    lazy = load_lazy_config(LAZY_DET_CONFIG, TINY_LAZY + [f"train.init_checkpoint={OFFLINE_URL}"])
    checkpointer = build_checkpointer(instantiate(lazy.model), str(tmp_path))
    with pytest.raises(OSError, match=rf"^train.init_checkpoint='{OFFLINE_URL}' cannot be down"):
        resume_or_load(lazy, checkpointer, None, None, False, None, None, False)
    image = write_image(tmp_path / "a.jpg")
    proc = call_tool(
        "predict",
        "--config-file",
        CLS_CONFIG,
        "--input",
        image,
        *TINY_PREDICT_CLS,
        "MODEL.WEIGHTS",
        OFFLINE_URL,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: MODEL.WEIGHTS='{OFFLINE_URL}' cannot be downloaded ({reason}): without network "
        "access, download it elsewhere and set MODEL.WEIGHTS to the local file"
    )


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


class _NoDetections(DetectionPredictor):
    """A detector that finds nothing, without a model: what predict writes is under test."""

    def __init__(self):
        self.dataset, self.category_ids, self.metadata = None, None, Metadata(thing_classes=[])

    def __call__(self, bgr):
        empty = Instances(bgr.shape[:2], pred_boxes=Boxes(torch.zeros(0, 4)))
        empty.scores, empty.pred_classes = torch.zeros(0), torch.zeros(0, dtype=torch.long)
        return {"instances": empty}


def test_predict_into_the_same_output_replaces_its_earlier_pictures_and_keeps_the_users(tmp_path):
    images = [write_image(tmp_path / "in" / n, seed=i) for i, n in enumerate(["a.jpg", "b.jpg"])]
    out = tmp_path / "out"
    predict(_NoDetections(), images, output=str(out))
    assert sorted(os.listdir(out)) == sorted(["a.jpg", "a.json", "b.jpg", "b.json", MANIFEST_FILE])
    (out / "notes.txt").write_text("mine")
    predict(_NoDetections(), images[:1], output=str(out))  # b.jpg's picture is the old run's
    assert sorted(os.listdir(out)) == sorted(["a.jpg", "a.json", "notes.txt", MANIFEST_FILE])
    assert (out / "notes.txt").read_text() == "mine"


def test_predict_refuses_an_output_folder_it_did_not_write(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_final.pth").write_bytes(b"weights")
    image = write_image(tmp_path / "a.jpg")
    proc = call_tool("predict", "--config-file", DET_CONFIG, "--input", image, "--output", out)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: --output '{out}' holds files that tools/predict.py did not write "
        "(model_final.pth): give an empty or new folder (predict replaces only its own earlier "
        f"outputs, which its {MANIFEST_FILE} lists)"
    )
    assert os.listdir(out) == ["model_final.pth"]


@pytest.mark.parametrize("listed", ["../victim.txt", ".", "", 7])
def test_a_manifest_cannot_make_predict_remove_another_file(tmp_path, listed):
    (tmp_path / "victim.txt").write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_FILE).write_text(json.dumps({"files": [listed]}))
    with pytest.raises(ValueError, match=rf"lists {re.escape(repr(listed))}, not a file name"):
        predict(_NoDetections(), [write_image(tmp_path / "a.jpg")], output=str(out))
    assert (tmp_path / "victim.txt").read_text() == "keep"
