"""Bad data is named before training, or skipped with a warning during it."""

import json
import logging
import os
import uuid

import numpy as np
import pytest
from common import coco_dict, write_image
from detectron2.data import DatasetCatalog, MetadataCatalog

from randwire_d2.data import cls_demo, dataset_checks
from randwire_d2.data.imagefolder import ImageFolderDataset, ResizeCenterCrop
from randwire_d2.data.shapes import CLASSES
from randwire_d2.engine.hooks import TrainCategories

# ImageFolder layout ---------------------------------------------------------------------------


def test_image_folder_layout_is_checked_for_every_split(tmp_path):
    root = str(tmp_path / "data")
    for c in ("cat", "dog"):
        write_image(os.path.join(root, "train", c, "0.jpg"))
    with pytest.raises(FileNotFoundError, match=r"PRETRAIN.DATA_ROOT.*val.*<split>/<class>/\*.jpg"):
        dataset_checks.check_image_folder(root)
    for c in ("cat", "emu"):
        write_image(os.path.join(root, "val", c, "0.jpg"))
    with pytest.raises(ValueError, match=r"only in train: \['dog'\].*only in val: \['emu'\]"):
        dataset_checks.check_image_folder(root)
    os.rename(os.path.join(root, "val", "emu"), os.path.join(root, "val", "dog"))
    dataset_checks.scan_split.cache_clear()  # a run scans each split once; this test changed one
    found = dataset_checks.check_image_folder(str(tmp_path / "data"))
    assert sorted(found) == ["train", "val"]
    classes, samples = found["val"]
    assert classes == ["cat", "dog"] and [label for _, label in samples] == [0, 1]


# Unreadable images ----------------------------------------------------------------------------


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


# Classification demo data ---------------------------------------------------------------------

TINY = dict(images_per_class={"train": 2, "val": 1}, image_size=16, object_scale=(0.4, 0.8), seed=0)


def test_deleted_demo_images_are_regenerated_identically(tmp_path, caplog):
    folder = cls_demo.generate_classification_demo(str(tmp_path / "cls"), **TINY)
    lost = [os.path.join(folder, "train", CLASSES[1], "00001.png")]
    lost.append(os.path.join(folder, "val", CLASSES[3], "00000.png"))
    before = [open(p, "rb").read() for p in lost]
    for p in lost:
        os.remove(p)
    os.rmdir(os.path.dirname(lost[1]))
    with caplog.at_level(logging.INFO):
        cls_demo.generate_classification_demo(folder, **TINY)
    assert [open(p, "rb").read() for p in lost] == before
    assert any("2" in r.getMessage() and "repaired" in r.getMessage() for r in caplog.records)


def test_demo_data_root_is_generated_on_demand(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cls_demo, "DEMO_CLS_PARAMS", TINY)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert not cls_demo.ensure_classification_demo("elsewhere/randwire_demo_cls")
    assert not os.path.exists("elsewhere")
    assert cls_demo.ensure_classification_demo("./datasets/randwire_demo_cls/")
    found = dataset_checks.check_image_folder("datasets/randwire_demo_cls")
    assert len(found["train"][1]) == 2 * len(CLASSES) and len(found["val"][1]) == len(CLASSES)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    assert cls_demo.ensure_classification_demo(str(tmp_path / "d2" / "randwire_demo_cls"))
    assert os.path.isfile(tmp_path / "d2" / "randwire_demo_cls" / "params.json")


# COCO-format datasets -------------------------------------------------------------------------


@pytest.fixture
def coco(tmp_path):
    """(write(content) -> registered dataset name, json path); 2 images, 3 categories."""
    images = tmp_path / "images"
    for i in range(2):
        write_image(images / f"{i}.jpg", seed=i)
    names = []

    def write(content):
        path = tmp_path / f"{uuid.uuid4().hex}.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        name = f"test_checks_{uuid.uuid4().hex}"
        names.extend(dataset_checks.register_user_datasets([(name, str(path), str(images))]))
        return name, str(path)

    yield write
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.mark.parametrize("drop", [None, "images", "annotations", "categories"])
def test_invalid_coco_json_names_the_dataset_and_the_file(coco, drop):
    if drop is None:
        content = '{"images": [1, '  # malformed JSON
    else:
        content = {k: v for k, v in coco_dict().items() if k != drop}
    with pytest.raises(ValueError, match=r"--dataset test_checks_.*\.json is not a COCO") as error:
        coco(content)  # refused before it is registered
    assert drop is None or drop in str(error.value)


def test_more_categories_than_classes_names_the_key(coco):
    name, _ = coco(coco_dict(num_categories=3))
    dataset_checks.prepare_datasets([name])
    dataset_checks.check_num_classes([name], 3)
    with pytest.raises(ValueError, match=rf"MODEL.ROI_HEADS.NUM_CLASSES=2.*{name}.*3 categories"):
        dataset_checks.check_num_classes([name], 2)
    other, _ = coco(coco_dict(num_categories=3))  # not loaded yet: the check loads it
    with pytest.raises(ValueError, match=rf"MODEL.RETINANET.NUM_CLASSES=1.*{other}"):
        dataset_checks.check_num_classes([other], 1, key="MODEL.RETINANET.NUM_CLASSES")


@pytest.mark.parametrize(
    "content, field",
    [
        ([1, 2], "a JSON list"),
        (dict(coco_dict(), annotations="x"), "'annotations' is a JSON string"),
        ('{"images": [1, ', "not valid JSON"),
        (dict(coco_dict(), images=[{"id": 1, "height": 24, "width": 32}]), "images[0]"),
        (dict(coco_dict(), categories=[3]), "categories[0] is 3"),
    ],
)
def test_a_json_that_is_not_coco_is_refused_before_registering(tmp_path, content, field):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    name = f"test_checks_{uuid.uuid4().hex}"
    with pytest.raises(ValueError, match=rf"--dataset {name}.*{path}.*is not a COCO") as error:
        dataset_checks.register_user_datasets([(name, str(path), str(tmp_path))])
    assert field in str(error.value)
    assert name not in DatasetCatalog.list()


def test_missing_images_an_empty_dataset_and_bad_boxes_are_named_at_setup(coco, caplog):
    missing = coco_dict()
    missing["images"][1]["file_name"] = "gone.jpg"
    name, path = coco(missing)
    with pytest.raises(
        dataset_checks.DatasetNotFoundError,
        match=rf"{name}.*1 of 2 image files do not exist.*gone\.jpg",
    ):
        dataset_checks.prepare_datasets([name])
    name, _ = coco(dict(coco_dict(), images=[], annotations=[]))
    with pytest.raises(ValueError, match=rf"dataset {name!r} holds no images"):
        dataset_checks.prepare_datasets([name])
    text_box = coco_dict()
    text_box["annotations"][2]["bbox"] = "2 2 10 10"
    name, _ = coco(text_box)
    with pytest.raises(ValueError, match=rf"{name}.*1 annotations have a bbox that is not 4 num"):
        dataset_checks.prepare_datasets([name])
    outside = coco_dict()
    for a in outside["annotations"]:
        a["bbox"] = [40, 2, 10, 10]  # the images are 32 pixels wide
    name, _ = coco(outside)
    with pytest.raises(ValueError, match=rf"{name}.*all 3 boxes lie entirely outside"):
        dataset_checks.prepare_datasets([name])
    outside["annotations"][0]["bbox"] = [2, 2, 10, 10]
    name, _ = coco(outside)
    with caplog.at_level(logging.WARNING):
        dataset_checks.prepare_datasets([name])
    assert f"dataset {name!r}: 2 of 3 boxes lie entirely outside their images" in caplog.text


def test_categories_are_compared_by_id_and_name(coco, caplog):
    name, _ = coco(coco_dict(num_categories=2))
    record = dataset_checks.dataset_categories(name)
    assert record == {
        "dataset": name,
        "thing_classes": ["c0", "c1"],
        "thing_dataset_id_to_contiguous_id": {1: 0, 2: 1},
    }
    dataset_checks.check_categories(record, [name, "not_registered"], "w.pth")
    renamed = dict(record, thing_classes=["c0", "tree"])
    with pytest.raises(ValueError, match=r"w.pth was trained on .*\{1: 'c0', 2: 'tree'\}, but "):
        dataset_checks.check_categories(renamed, [name], "w.pth")
    with pytest.raises(ValueError, match=r"--resume: the checkpoint was trained on"):
        TrainCategories(record).load_state_dict(renamed)  # resuming with other categories
    TrainCategories(record).load_state_dict({})  # a checkpoint that recorded none
    with caplog.at_level(logging.WARNING):
        dataset_checks.check_categories(None, [name], "w.pth")
    assert "w.pth records no categories" in caplog.text


def test_declared_image_and_mask_sizes_are_bounded_at_setup(coco):
    """Evaluation and mask decoding allocate the sizes a dataset json declares: a 60000 x 60000
    image or an RLE of another size is refused before anything is allocated."""
    huge = coco_dict()
    huge["images"][0].update(height=60000, width=60000)
    name, _ = coco(huge)
    with pytest.raises(ValueError, match=rf"{name}.*declares height 60000 x width 60000"):
        dataset_checks.prepare_datasets([name])
    rle = coco_dict()
    rle["annotations"][0]["segmentation"] = {"size": [60000, 60000], "counts": "0"}
    name, _ = coco(rle)
    with pytest.raises(ValueError, match=rf"{name}.*RLE mask .* declares size \[60000, 60000\]"):
        dataset_checks.prepare_datasets([name])
