"""randwire_d2/data/imagefolder.py: reading images, bad ones, transforms, epoch/shard samplers."""

import logging
import os

import cv2
import numpy as np
import pytest
import torch
from common import DET_CONFIG, TINY_PREDICT_DET, load_tool, save_random_model, write_image
from PIL import Image

import randwire_d2.data.imagefolder as imagefolder
from randwire_d2.data.cls_demo import generate_classification_demo
from randwire_d2.data.imagefolder import (
    EpochBatchSampler,
    ImageFolderDataset,
    RandomResizedCropFlip,
    ResizeCenterCrop,
    ShardBatchSampler,
    scan_image_folder,
)
from randwire_d2.data.shapes import CLASSES
from randwire_d2.predict import read_image_file

predict_tool = load_tool("predict")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def detector_weights(tmp_path_factory):
    return save_random_model(DET_CONFIG, TINY_PREDICT_DET, tmp_path_factory.mktemp("detector"))


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


@pytest.fixture
def bad_samples(tmp_path):
    """[good, zero-byte .jpg, text .png, truncated .jpg, truncated .png, good] with labels 0..5."""
    paths = [write_image(tmp_path / "good0.png", seed=0)]
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    paths += [str(tmp_path / "empty.jpg"), str(tmp_path / "text.png")]
    for ext in ("jpg", "png"):
        data = open(write_image(tmp_path / f"full.{ext}", seed=1), "rb").read()
        (tmp_path / f"cut.{ext}").write_bytes(data[: len(data) // 2])
        paths.append(str(tmp_path / f"cut.{ext}"))
    paths.append(write_image(tmp_path / "good1.png", seed=2))
    return [(p, label) for label, p in enumerate(paths)]


def test_bad_images_are_replaced_by_the_next_good_one_with_a_warning(bad_samples, caplog):
    dataset = ImageFolderDataset(bad_samples, ResizeCenterCrop(16), max_bad_images=4)
    with caplog.at_level(logging.WARNING):
        item = dataset[(1, 123)]
    expected = ImageFolderDataset(bad_samples[5:], ResizeCenterCrop(16))[(0, 123)]
    assert item["label"] == 5 and item["image"].shape == (3, 16, 16)
    assert np.array_equal(item["image"].numpy(), expected["image"].numpy())
    for path, _ in bad_samples[1:5]:
        assert any(path in r.getMessage() for r in caplog.records), path
    # The last index wraps around to the first.
    assert dataset[(4, 0)]["label"] == 5 and dataset[(0, 0)]["label"] == 0


def test_too_many_bad_images_stop_the_run(bad_samples):
    dataset = ImageFolderDataset(bad_samples, ResizeCenterCrop(16), max_bad_images=3)
    with pytest.raises(
        RuntimeError, match=r"4 of 6 images are unreadable.*max_bad_images=3.*cut\.png"
    ):
        dataset[(1, 0)]
    only_bad = ImageFolderDataset(bad_samples[1:5], ResizeCenterCrop(16), max_bad_images=100)
    with pytest.raises(RuntimeError, match="4 of 4 images are unreadable"):
        only_bad[(0, 0)]


# Data ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("cls_demo") / "data")
    return generate_classification_demo(folder, {"train": 3, "val": 2}, image_size=40)


def test_demo_data_is_deterministic_imagefolder_of_the_detection_classes(demo_folder, tmp_path):
    classes, samples = scan_image_folder(os.path.join(demo_folder, "train"))
    assert classes == sorted(CLASSES) and len(samples) == 15
    assert len(scan_image_folder(os.path.join(demo_folder, "val"))[1]) == 10
    again = generate_classification_demo(
        str(tmp_path / "again"), {"train": 3, "val": 2}, image_size=40
    )
    for path, _ in samples:
        other = os.path.join(again, os.path.relpath(path, demo_folder))
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(other)))
    image = np.asarray(Image.open(samples[0][0]))
    assert image.shape == (40, 40, 3) and image.dtype == np.uint8
    with pytest.raises(ValueError, match="image_size=8 is invalid"):
        generate_classification_demo(str(tmp_path / "bad"), {"train": 1}, image_size=8)


def test_epoch_order_is_a_permutation_shared_by_any_process_count():
    one = EpochBatchSampler(103, 8, seed=3, max_iter=30)
    assert one.iters_per_epoch == 12
    epoch0 = [i for it in range(12) for i, _ in one.batch_at(it)]
    assert len(set(epoch0)) == 96  # no image twice in an epoch
    assert epoch0 != [i for it in range(12, 24) for i, _ in one.batch_at(it)]  # reshuffled
    # Four processes split every global batch; together they see exactly one process's batch.
    parts = [
        list(EpochBatchSampler(103, 8, seed=3, rank=r, world_size=4, max_iter=30)) for r in range(4)
    ]
    for it, batch in enumerate(one):
        assert sum((p[it] for p in parts), []) == batch
    # Resuming at iteration 17 continues the same order; another seed gives another order.
    assert list(EpochBatchSampler(103, 8, seed=3, start_iter=17, max_iter=30)) == list(one)[17:]
    assert list(EpochBatchSampler(103, 8, seed=4, max_iter=30)) != list(one)
    with pytest.raises(ValueError, match="IMS_PER_BATCH=8 is invalid for 3 processes"):
        EpochBatchSampler(103, 8, seed=3, world_size=3, max_iter=30)


def test_shards_cover_the_val_set_once():
    shards = [sum(ShardBatchSampler(10, 3, r, 4), []) for r in range(4)]
    assert sorted(sum(shards, [])) == list(range(10))


def test_augmentation_is_keyed_on_the_draw_seed(demo_folder):
    _, samples = scan_image_folder(os.path.join(demo_folder, "train"))
    train = ImageFolderDataset(samples, RandomResizedCropFlip(32, (0.3, 1.0)))
    a, b, c = train[(0, 11)], train[(0, 11)], train[(0, 12)]
    assert a["image"].shape == (3, 32, 32) and a["image"].dtype == torch.uint8
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert a["label"] == samples[0][1]
    # Eval: the central 0.8 of the image, resized; BGR reverses the channels.
    val = ImageFolderDataset(samples, ResizeCenterCrop(32, 0.8))
    image = np.asarray(Image.open(samples[0][0]))
    assert torch.equal(val[0]["image"].permute(1, 2, 0), torch.from_numpy(image[4:36, 4:36].copy()))
    bgr = ImageFolderDataset(samples, ResizeCenterCrop(32, 0.8), image_format="BGR")
    assert torch.equal(bgr[0]["image"], val[0]["image"].flip(0))
