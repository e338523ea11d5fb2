"""randwire_d2/utils/owned_folder.py and export/formats.py: the --output folders of the tools."""

import json
import os
import re

import pytest
import torch
from common import (
    CLS_CONFIG,
    DET_CONFIG,
    TINY_EXPORT_CLS,
    call_tool,
    load_tool,
    save_model_final,
    tiny_export_model,
    write_image,
)
from detectron2.data import Metadata
from detectron2.structures import Boxes, Instances

from randwire_d2.predict import MANIFEST_FILE, DetectionPredictor, predict

export_model = load_tool("export_model")
predict_tool = load_tool("predict")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_output_naming_a_file_is_a_one_line_error(tmp_path):
    existing = tmp_path / "results.txt"
    existing.write_text("mine")
    with pytest.raises(SystemExit, match=r"--output '.*results\.txt' is an existing file: expect"):
        predict_tool.main(
            ["--config-file", DET_CONFIG, "--input", str(existing), "--output", str(existing)]
        )
    argv = [
        "--config-file",
        CLS_CONFIG,
        "--output",
        str(existing),
        "--random-weights",
    ] + TINY_EXPORT_CLS
    with pytest.raises(SystemExit, match=r"--output '.*results\.txt' is an existing file: expect"):
        export_model.main(argv)
    assert existing.read_text() == "mine"


def test_an_earlier_export_is_refused_then_replaced_with_overwrite(tmp_path):
    weights = save_model_final(tiny_export_model(), CLS_CONFIG, TINY_EXPORT_CLS, tmp_path)
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.pt2").write_bytes(b"another model")
    (out / "export_report.json").write_text('{"pt2": {}}')
    (out / "notes.txt").write_text("the user's")
    argv = ["--config-file", CLS_CONFIG, "--format", "onnx", "--input-size", "32"]
    argv += ["--output", str(out)] + TINY_EXPORT_CLS + ["MODEL.WEIGHTS", weights]
    with pytest.raises(
        SystemExit,
        match=r"holds an earlier export \(model\.pt2, export_report\.json\).*--overwrite",
    ):
        export_model.main(argv)
    assert (
        not (out / "model.onnx").exists() and (out / "model.pt2").read_bytes() == b"another model"
    )
    export_model.main(argv[:2] + ["--overwrite"] + argv[2:])
    assert sorted(os.listdir(out)) == ["export_report.json", "model.onnx", "notes.txt"]
    assert list(json.loads((out / "export_report.json").read_text())) == ["onnx"]


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
