"""The batched-decode training loader (PRETRAIN.DECODE "cuda", run here on device "cpu") against
the CPU path it must reproduce: same images in the same order, same crops and flips, same
replacement of unreadable files; and benchmarks/loader.py end to end."""

import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from randwire_d2.data import batched_decode
from randwire_d2.data.batched_decode import (
    BatchDecoder,
    ImageBytesDataset,
    resize_uint8,
)
from randwire_d2.data.cls_demo import generate_jpeg_folder
from randwire_d2.data.cls_loaders import build_cls_train_loader
from randwire_d2.data.imagefolder import (
    ImageFolderDataset,
    RandomResizedCropFlip,
    read_rgb_image,
    scan_image_folder,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADER_BENCH = os.path.join(REPO, "benchmarks", "loader.py")
CROP = 32

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("jpegs"))
    return generate_jpeg_folder(root, num_classes=3, images_per_class=4, size=(96, 72))


def loader_kwargs(**overrides):
    kwargs = dict(
        crop=CROP,
        crop_scale=(0.08, 1.0),
        global_batch=4,
        seed=5,
        start_iter=0,
        max_iter=4,
        num_workers=0,
    )
    kwargs.update(overrides)
    return kwargs


def mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.int() - b.int()).abs().float().mean().item()


def assert_same_batches(samples, image_format="RGB", **overrides):
    """The decode loader on "cpu" yields the CPU loader's labels, in order, and its pixels up to
    rounding: each image far closer to the CPU path's image than to its mirror image."""
    kwargs = loader_kwargs(image_format=image_format, **overrides)
    reference = list(build_cls_train_loader(samples, **kwargs))
    decoded = list(build_cls_train_loader(samples, decode_device="cpu", **kwargs))
    assert len(decoded) == len(reference) == kwargs["max_iter"] - kwargs["start_iter"]
    for items, batch in zip(reference, decoded):
        assert batch["images"].dtype == torch.uint8 and batch["images"].is_contiguous()
        assert batch["images"].shape == (len(items), 3, CROP, CROP)
        assert batch["labels"].dtype == torch.int64
        assert batch["labels"].tolist() == [item["label"] for item in items]
        for item, image in zip(items, batch["images"]):
            diff = mean_abs_diff(image, item["image"])
            assert diff < 1.0 and diff < mean_abs_diff(image, item["image"].flip(-1)) / 3
            if mean_abs_diff(item["image"], item["image"].flip(0)) > 2:  # not gray: the order
                assert mean_abs_diff(image, item["image"].flip(0)) > 2 > diff
    return decoded


def test_jpeg_folder_is_photo_like_and_deterministic(jpeg_root, tmp_path):
    classes, samples = scan_image_folder(os.path.join(jpeg_root, "train"))
    assert classes == ["class_0", "class_1", "class_2"] and len(samples) == 12
    image = np.asarray(Image.open(samples[0][0]))
    assert image.shape == (72, 96, 3) and image.std() > 20  # not a flat colour
    again = generate_jpeg_folder(str(tmp_path), 3, 1, size=(96, 72))
    with open(samples[0][0], "rb") as a, open(f"{again}/train/class_0/00000.jpg", "rb") as b:
        assert a.read() == b.read()
    # ImageNet-like file sizes at ImageNet-like sizes.
    big = generate_jpeg_folder(str(tmp_path / "big"), 1, 2)
    sizes = [os.path.getsize(p) for p, _ in scan_image_folder(f"{big}/train")[1]]
    assert all(40_000 < s < 160_000 for s in sizes), sizes
    with pytest.raises(ValueError, match=r"splits \['test'\] are unknown"):
        generate_jpeg_folder(str(tmp_path), 1, 1, splits=("test",))


@pytest.mark.parametrize("image_format", ["RGB", "BGR"])
def test_batches_match_the_cpu_path(jpeg_root, image_format):
    _, samples = scan_image_folder(os.path.join(jpeg_root, "train"))
    dataset = ImageBytesDataset(samples, RandomResizedCropFlip(CROP))
    assert all("data" in dataset[(k, 7)] for k in range(len(samples)))  # all on the device path
    assert_same_batches(samples, image_format)


def test_draw_is_the_cpu_path_crop_and_flip(jpeg_root):
    _, samples = scan_image_folder(os.path.join(jpeg_root, "train"))
    image = read_rgb_image(samples[0][0])
    transform = RandomResizedCropFlip(CROP, (0.2, 0.5))
    flips = set()
    for seed in range(8):
        box, flip = transform.draw(image.width, image.height, seed)
        out = image.resize((CROP, CROP), Image.BILINEAR, box=box)
        out = out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out
        assert np.array_equal(np.asarray(transform(image, seed)), np.asarray(out))
        flips.add(flip)
    assert flips == {False, True}


def test_float_resize_of_the_cuda_path_matches_pil(jpeg_root):
    _, samples = scan_image_folder(os.path.join(jpeg_root, "train"))
    image = read_rgb_image(samples[1][0])
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    for box, size in [((5, 3, 90, 70), 32), ((10, 10, 30, 24), 48)]:  # shrink, enlarge
        pil = np.asarray(image.resize((size, size), Image.BILINEAR, box=box))
        pil = torch.from_numpy(pil.copy()).permute(2, 0, 1)
        crop = tensor[:, box[1] : box[3], box[0] : box[2]]
        for via_float in (False, True):
            out = resize_uint8(crop, size, via_float)
            assert out.dtype == torch.uint8 and out.shape == (3, size, size)
            assert mean_abs_diff(out, pil) < 0.5 < mean_abs_diff(out, pil.flip(-1))


def test_resume_gives_the_uninterrupted_batches(jpeg_root):
    _, samples = scan_image_folder(os.path.join(jpeg_root, "train"))
    kwargs = loader_kwargs(max_iter=7, num_workers=1, image_format="BGR")
    whole = list(build_cls_train_loader(samples, decode_device="cpu", **kwargs))
    kwargs["start_iter"] = 4
    resumed = build_cls_train_loader(samples, decode_device="cpu", **kwargs)
    assert len(resumed) == 3
    for a, b in zip(whole[4:], resumed, strict=True):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(whole[0]["labels"], whole[3]["labels"])  # epoch 2 is reshuffled


def write_special_images(folder):
    """Files the device path must leave to the CPU (and one grayscale JPEG it decodes)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = (rng.random((60, 90, 3)) * 255).astype(np.uint8)
    rgb = (rgb // 2 + np.linspace(0, 120, 90, dtype=np.uint8)[None, :, None]).astype(np.uint8)
    Image.fromarray(rgb).save(f"{folder}/png.png")
    Image.fromarray(rgb[:, :, 1]).save(f"{folder}/gray.jpg", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: 90x60 pixels stored, 60x90 shown
    Image.fromarray(rgb).save(f"{folder}/rotated.jpg", quality=92, exif=exif)
    Image.fromarray(rgb).convert("CMYK").save(f"{folder}/cmyk.jpg", quality=92)
    wide = (rgb[:, :, 0].astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(wide).save(f"{folder}/gray16.png")


def test_other_images_take_the_cpu_fallback_and_match(jpeg_root, tmp_path):
    folder = tmp_path / "special" / "train"
    write_special_images(str(folder / "class_a"))
    generate_jpeg_folder(str(tmp_path / "special"), 2, 2, size=(96, 72))
    _, samples = scan_image_folder(str(folder))
    special = {
        os.path.splitext(os.path.basename(p))[0]: k
        for k, (p, _) in enumerate(samples)
        if "class_a" in p
    }
    dataset = ImageBytesDataset(samples, RandomResizedCropFlip(CROP))
    kinds = {name: "data" if "data" in dataset[(k, 3)] else "image" for name, k in special.items()}
    assert kinds == dict(png="image", gray="data", rotated="image", cmyk="image", gray16="image")
    assert dataset[(special["rotated"], 3)]["image"].shape == (3, CROP, CROP)
    # One global batch of every image; several seeds, so each file is flipped in some.
    for seed in range(3):
        assert_same_batches(samples, global_batch=len(samples), max_iter=1, seed=seed)


def test_workers_read_a_bounded_number_of_bytes(jpeg_root, monkeypatch):
    """A file larger than MAX_JPEG_BYTES is never read whole: it takes the CPU path, which
    opens it lazily (and refuses it by its pixel count)."""
    _, samples = scan_image_folder(os.path.join(jpeg_root, "train"))
    dataset = ImageBytesDataset(samples[:1], RandomResizedCropFlip(CROP))
    assert "data" in dataset[(0, 1)]
    monkeypatch.setattr(batched_decode, "MAX_JPEG_BYTES", os.path.getsize(samples[0][0]) - 1)
    item = dataset[(0, 1)]
    assert "data" not in item and item["image"].shape == (3, CROP, CROP)


def test_unreadable_files_are_replaced_as_in_the_cpu_path(jpeg_root, tmp_path):
    folder = tmp_path / "bad" / "train"
    generate_jpeg_folder(str(tmp_path / "bad"), 2, 3, size=(96, 72))
    os.makedirs(folder / "class_0b")
    good = (folder / "class_0" / "00000.jpg").read_bytes()
    (folder / "class_0b" / "a_text.jpg").write_bytes(b"not an image")
    (folder / "class_0b" / "b_truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "class_0b" / "c_good.jpg").write_bytes(good)
    _, samples = scan_image_folder(str(folder))
    bad = [k for k, (p, _) in enumerate(samples) if "a_text" in p or "b_truncated" in p]
    assert len(bad) == 2
    transform = RandomResizedCropFlip(CROP)
    cpu, device = ImageFolderDataset(samples, transform), ImageBytesDataset(samples, transform)
    for k in bad:
        item = device[(k, 11)]
        assert item["path"] == samples[bad[1] + 1][0] and item["label"] == cpu[(k, 11)]["label"]
    assert device.bad_images.keys() == cpu.bad_images.keys() == {samples[k][0] for k in bad}
    assert "cannot read image" in device.bad_images[samples[bad[0]][0]]
    # The whole loader: the same replacements, batch for batch.
    assert_same_batches(samples, global_batch=len(samples), max_iter=2)
    strict = ImageBytesDataset(samples, transform, max_bad_images=1)
    assert strict[(bad[1], 0)]["path"] == samples[bad[1] + 1][0]  # one bad file: allowed
    with pytest.raises(RuntimeError, match="more than max_bad_images=1 allows"):
        strict[(bad[0], 0)]


def test_device_refusal_falls_back_to_pil_with_one_warning(jpeg_root, monkeypatch, caplog):
    _, samples = scan_image_folder(os.path.join(jpeg_root, "train"))
    refused_path = samples[2][0]
    with open(refused_path, "rb") as f:
        refused = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    real = batched_decode.decode_jpeg
    calls = []

    def picky_decode_jpeg(data, **kwargs):  # as nvjpeg refusing one file PIL reads
        calls.append(len(data) if isinstance(data, list) else 1)
        for tensor in data if isinstance(data, list) else [data]:
            if torch.equal(tensor, refused):
                raise RuntimeError("nvjpegDecode failed: 6\nNVJPEG_STATUS_EXECUTION_FAILED")
        return real(data, **kwargs)

    monkeypatch.setattr(batched_decode, "decode_jpeg", picky_decode_jpeg)
    with caplog.at_level(logging.WARNING, logger=batched_decode.__name__):
        assert_same_batches(samples, global_batch=12, max_iter=2)  # two epochs, the file twice
    warnings = [r.getMessage() for r in caplog.records if "refuses" in r.getMessage()]
    assert len(warnings) == 1 and refused_path in warnings[0]
    assert "NVJPEG_STATUS_EXECUTION_FAILED" in warnings[0]
    assert calls.count(12) == 2  # each batch was tried whole first
    # A file that neither decoder reads is an error naming it, never a silent substitute.
    decoder = BatchDecoder(CROP, device="cpu")
    item = dict(ImageBytesDataset(samples, RandomResizedCropFlip(CROP))[(2, 0)])
    item["path"] = os.path.join(jpeg_root, "missing.jpg")
    with pytest.raises(RuntimeError, match=r"'.*missing\.jpg' passed the worker's header check"):
        decoder([item])


def test_cuda_without_cuda_is_a_clear_error(jpeg_root, monkeypatch):
    _, samples = scan_image_folder(os.path.join(jpeg_root, "train"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"PRETRAIN.DECODE='cuda'.*CUDA is not available"):
        build_cls_train_loader(samples, decode_device="cuda", **loader_kwargs())
    with pytest.raises(ValueError, match=r"device 'meta' is invalid: expected 'cpu' or 'cuda"):
        build_cls_train_loader(samples, decode_device="meta", **loader_kwargs())
    with pytest.raises(ValueError, match=r"INPUT.FORMAT='YUV' is invalid"):
        build_cls_train_loader(samples, decode_device="cpu", **loader_kwargs(image_format="YUV"))


@pytest.mark.slow
def test_loader_benchmark_prints_its_table(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run(
        [sys.executable, LOADER_BENCH, "--data", str(tmp_path), "--generate", "12"]
        + ["--workers", "0", "1", "--decode", "cpu", "cuda", "--batch", "4", "--batches", "1"]
        + ["--crop", "64", "--threads", "1", "--json", str(tmp_path / "rows.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert "decode cuda: skipped, CUDA is not available" in out.stdout
    assert "| decode | workers | img/s | img/s per worker |" in out.stdout
    rows = re.findall(r"^\| cpu \| (\d+) \| (\d+) \| (\d+) \|$", out.stdout, re.M)
    assert [r[0] for r in rows] == ["0", "1"] and all(int(r[1]) > 0 for r in rows), out.stdout
    assert re.search(r"torch .*torchvision .*GPU: none; \d{4}-\d\d-\d\d", out.stdout)
    assert len(scan_image_folder(str(tmp_path / "train"))[1]) == 12
