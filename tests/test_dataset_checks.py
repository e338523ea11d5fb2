"""randwire_d2/data/dataset_checks.py: bad data (ImageFolder, COCO json) named at setup."""

import json
import logging
import os
import shutil
import uuid

import pytest
from common import (
    DET_CONFIG,
    LAZY_DET_CONFIG,
    TINY_DET,
    TINY_LAZY,
    as_args,
    call_tool,
    coco_dict,
    load_tool,
    make_cfg,
    tiny_opts,
    write_image,
)
from detectron2.data import DatasetCatalog, MetadataCatalog

from randwire_d2.config import load_lazy_config
from randwire_d2.data import dataset_checks
from randwire_d2.data.detection_demo import generate_detection_demo
from randwire_d2.engine import ClassificationTrainer
from randwire_d2.engine.hooks import TrainCategories
from randwire_d2.engine.launch import argument_parser
from randwire_d2.engine.lazy import setup_lazy

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_missing_val_folder_fails_before_training(cls_data_root, tmp_path):
    only_train = tmp_path / "data"
    shutil.copytree(os.path.join(cls_data_root, "train"), only_train / "train")
    cfg = make_cfg(tiny_opts(str(only_train), tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="val"):
        ClassificationTrainer(cfg)


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


@pytest.fixture
def dense_coco(tmp_path):
    """A COCO dataset whose first image holds MAX_INSTANCES_PER_IMAGE + 1 annotations."""
    images = tmp_path / "images"
    for i in range(2):
        write_image(images / f"{i}.jpg", seed=i)
    content = coco_dict(num_categories=1)
    ann = content["annotations"][0]
    count = dataset_checks.MAX_INSTANCES_PER_IMAGE + 1
    content["annotations"] = [dict(ann, id=k + 1, image_id=1) for k in range(count)]
    path = tmp_path / "dense.json"
    path.write_text(json.dumps(content))
    yield "test_bounds_dense", str(path), str(images), count
    for name in ("test_bounds_dense",):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_an_image_with_too_many_annotations_fails_setup_in_both_tools(dense_coco, tmp_path):
    name, path, images, count = dense_coco
    train_net = load_tool("train_net")
    args = train_net.build_parser().parse_args(
        ["--config-file", DET_CONFIG, "--dataset", name, path, images]
        + ["DATASETS.TRAIN", f"('{name}',)", "MODEL.ROI_HEADS.NUM_CLASSES", "1"]
        + ["OUTPUT_DIR", str(tmp_path / "yaml"), "MODEL.DEVICE", "cpu"]
    )
    limit = dataset_checks.MAX_INSTANCES_PER_IMAGE
    message = rf"{name}.*0\.jpg \(image_id 1\) with {count}; at most {limit} per image"
    with pytest.raises(ValueError, match=message):
        train_net.setup(args)
    assert not os.path.exists(tmp_path / "yaml")  # refused before OUTPUT_DIR was claimed
    lazy = load_lazy_config(
        LAZY_DET_CONFIG,
        TINY_LAZY
        + [f"dataloader.train.dataset.names={name}", f"train.output_dir={tmp_path / 'lazy'}"],
    )
    with pytest.raises(ValueError, match=message):
        setup_lazy(lazy, argument_parser().parse_args([]))


def test_detector_with_fewer_classes_than_the_dataset_fails_before_training(tmp_path):
    paths = generate_detection_demo(
        str(tmp_path), {"train": 2}, image_size=(64, 64), object_size=(14, 30), seed=3
    )
    dataset = ["--dataset", "few_train", paths["train"], str(tmp_path / "train")]
    proc = call_tool(
        "train_net",
        "--config",
        DET_CONFIG,
        *dataset,
        *as_args(TINY_DET),
        *("DATASETS.TRAIN", "('few_train',)", "DATASETS.TEST", "()"),
        *("MODEL.ROI_HEADS.NUM_CLASSES", "3", "OUTPUT_DIR", tmp_path / "out"),
    )
    assert proc.returncode != 0
    assert "MODEL.ROI_HEADS.NUM_CLASSES=3" in proc.stderr and "Starting training" not in proc.stderr
