"""Reading and writing files the user trusts us with: large and 16-bit images (predict, the
ImageFolder loader), an export folder holding an earlier export, --output naming a file, a full
disk and SIGTERM during a checkpoint write.

Models are tiny and untrained; limits are monkeypatched small, so that "large" images are small.
"""

import errno
import json
import os
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from common import (
    CLS_CONFIG,
    DET_CONFIG,
    REPO,
    TINY_EXPORT_CLS,
    TINY_PREDICT_DET,
    load_tool,
    save_model_final,
    save_random_model,
    tiny_export_model,
)
from detectron2.structures import Boxes, Instances
from PIL import Image

import randwire_d2.data.imagefolder as imagefolder
import randwire_d2.predict as predict_lib
from randwire_d2.data.imagefolder import ImageFolderDataset
from randwire_d2.predict import read_image_file
from randwire_d2.utils.atomic import atomic_torch_save, atomic_write

export_model = load_tool("export_model")
predict_tool = load_tool("predict")

pytestmark = pytest.mark.usefixtures("one_thread")


# Large images ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector_weights(tmp_path_factory):
    return save_random_model(DET_CONFIG, TINY_PREDICT_DET, tmp_path_factory.mktemp("detector"))


def test_a_large_image_is_drawn_at_a_bounded_size(detector_weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict_lib, "MAX_DRAWN_SIDE", 256)
    image = tmp_path / "wide.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (320, 640, 3), np.uint8))
    out = tmp_path / "out"
    records = predict_tool.main(
        ["--config-file", DET_CONFIG, "--input", str(image), "--output", str(out)]
        + ["--confidence-threshold", "0.05", "--opts", "MODEL.WEIGHTS", detector_weights]
        + TINY_PREDICT_DET
        + ["DATASETS.TEST", "()"]
    )
    assert cv2.imread(str(out / "wide.png")).shape == (128, 256, 3)
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith(f"{image}: ")]
    assert line.endswith("; drawn at 256x128 (the image is 640x320; MAX_DRAWN_SIDE=256)")
    # Results stay in the image's own coordinates: only the picture is shrunk.
    found = [d for r in records for d in r["detections"]]
    assert found and max(d["bbox"][0] + d["bbox"][2] for d in found) > 256


def test_shrunk_detections_keep_their_place_on_the_picture():
    instances = Instances((400, 800))
    instances.pred_boxes = Boxes(torch.tensor([[100.0, 40.0, 300.0, 200.0]]))
    masks = torch.zeros(1, 400, 800, dtype=torch.bool)
    masks[0, 40:200, 100:300] = True
    instances.pred_masks = masks
    instances.scores, instances.pred_classes = torch.tensor([0.9]), torch.tensor([1])
    small, shrunk = predict_lib._shrink(np.zeros((400, 800, 3), np.uint8), instances, 0.25)
    assert small.shape == (100, 200, 3) and shrunk.image_size == (100, 200)
    assert shrunk.pred_boxes.tensor.tolist() == [[25.0, 10.0, 75.0, 50.0]]
    assert shrunk.pred_masks.shape == (1, 100, 200) and int(shrunk.pred_masks.sum()) == 50 * 40
    assert predict_lib.drawn_scale(100, 4000) == pytest.approx(predict_lib.MAX_DRAWN_SIDE / 4000)
    assert predict_lib.drawn_scale(160, 160) == 3.0  # small images are still enlarged


def test_images_over_the_pixel_limit_are_refused(detector_weights, tmp_path, monkeypatch):
    monkeypatch.setattr(imagefolder, "MAX_IMAGE_PIXELS", 1000)
    image = str(tmp_path / "big.png")
    Image.new("RGB", (50, 40)).save(image)
    message = r"image '.*big\.png' is 50x40 \(2,000 pixels\), more than MAX_IMAGE_PIXELS=1,000"
    with pytest.raises(ValueError, match=message):
        read_image_file(image)
    with pytest.raises(SystemExit, match=message):
        predict_tool.main(
            ["--config-file", DET_CONFIG, "--input", image, "--opts"]
            + ["MODEL.WEIGHTS", detector_weights, "DATASETS.TEST", "()"]
            + TINY_PREDICT_DET
        )
    # The training loader skips it as a bad image, naming it.
    good = str(tmp_path / "good.png")
    Image.new("RGB", (20, 20), (9, 9, 9)).save(good)
    dataset = ImageFolderDataset([(image, 0), (good, 1)], lambda im, seed: im)
    assert dataset[(0, 0)]["label"] == 1
    assert "50x40" in dataset.bad_images[image]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # PIL refuses over twice its limit
    with pytest.raises(ValueError, match=r"image '.*big\.png' is refused by PIL: .*2000 pixels"):
        read_image_file(image)


# 16-bit grayscale -----------------------------------------------------------------------------

GRADIENT = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16)[None, :].repeat(3, 0)


def _write_gray16(path: str, mode: str) -> None:
    if mode == "I;16":  # PNG
        Image.fromarray(GRADIENT).save(path)
    elif mode == "I;16B":  # big-endian TIFF
        Image.frombytes("I;16B", (256, 3), GRADIENT.astype(">u2").tobytes()).save(path)
    else:  # "I": 32-bit integer TIFF
        Image.fromarray(GRADIENT.astype(np.int32)).save(path)


@pytest.mark.parametrize("mode, name", [("I;16", "g.png"), ("I;16B", "g.tif"), ("I", "g.tif")])
def test_16_bit_grayscale_is_scaled_not_clipped(mode, name, tmp_path):
    path = str(tmp_path / name)
    _write_gray16(path, mode)
    assert Image.open(path).mode == mode
    expected = np.arange(256, dtype=np.uint8)  # v * 257 >> 8 == v
    bgr = read_image_file(path)
    assert bgr.dtype == np.uint8 and bgr.shape == (3, 256, 3)
    assert (bgr == expected[None, :, None]).all(), bgr[0, ::32, 0]
    item = ImageFolderDataset([(path, 0)], lambda im, seed: im)[(0, 0)]
    assert (item["image"].numpy() == expected[None, None, :]).all()


def test_8_bit_gray_rgba_and_16_bit_rgb_still_read(tmp_path):
    gray = np.arange(256, dtype=np.uint8)[None, :].repeat(2, 0)
    Image.fromarray(gray).save(tmp_path / "l.png")
    rgba = np.dstack([gray, gray // 2, gray // 4, np.full_like(gray, 7)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    bgr16 = np.dstack([gray, gray // 2, gray // 4]).astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "rgb16.png"), bgr16)
    assert (read_image_file(str(tmp_path / "l.png")) == gray[:, :, None]).all()
    assert (read_image_file(str(tmp_path / "rgba.png")) == rgba[:, :, 2::-1]).all()
    assert (read_image_file(str(tmp_path / "rgb16.png")) == bgr16 >> 8).all()
    item = ImageFolderDataset([(str(tmp_path / "rgb16.png"), 0)], lambda im, seed: im)[(0, 0)]
    assert (item["image"].numpy() == (bgr16 >> 8)[:, :, ::-1].transpose(2, 0, 1)).all()


# Output folders -------------------------------------------------------------------------------


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


# A full disk, SIGTERM -------------------------------------------------------------------------


def _torch_style_full_disk(obj, f):
    """torch.save on a full disk: the write's OSError, then inline_container.cc's RuntimeError."""
    f.write(b"\0" * 64)
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")


def _message_only_full_disk(obj, f):
    raise RuntimeError(
        "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
        "data/0: file write failed (No space left on device)"
    )


@pytest.mark.parametrize("save", [_torch_style_full_disk, _message_only_full_disk])
def test_a_full_disk_is_named_and_the_previous_checkpoint_kept(save, tmp_path, monkeypatch):
    path = str(tmp_path / "model_final.pth")
    atomic_torch_save({"w": torch.ones(2)}, path)
    before = open(path, "rb").read()
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError) as caught:
        atomic_torch_save({"w": torch.zeros(2)}, path)
    assert caught.value.errno == errno.ENOSPC
    message = str(caught.value)
    assert f"cannot write {path}: the disk is full (" in message
    assert " MiB free in " in message and f"the previous {path} is intact" in message
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["model_final.pth"]  # no .tmp_* left


def test_other_write_errors_pass_through_unchanged(tmp_path):
    def broken(f):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="^a bug$"):
        atomic_write(str(tmp_path / "x"), broken)
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was restored


SLOW_WRITER = """
import sys, time
from randwire_d2.utils.atomic import atomic_write

def slow(f):
    f.write(b"partial")
    f.flush()
    print("writing", flush=True)
    for _ in range(1200):
        time.sleep(0.05)

atomic_write(sys.argv[1], slow)
"""


@pytest.mark.slow
def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "model_final.pth"
    target.write_bytes(b"previous")
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(target)],
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "writing\n"
        assert any(n.startswith(".tmp_") for n in os.listdir(tmp_path))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM  # it still ends as SIGTERM ends it
    finally:
        proc.kill()
        proc.stdout.close()
    assert os.listdir(tmp_path) == ["model_final.pth"]
    assert target.read_bytes() == b"previous"
