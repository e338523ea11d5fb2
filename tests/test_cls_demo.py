"""randwire_d2/data/cls_demo.py: the classification demo data, generated on demand."""

import logging
import os

import pytest
from common import CLS_CONFIG, load_tool

from randwire_d2.data import cls_demo, dataset_checks
from randwire_d2.data.shapes import CLASSES

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_train_cls_generates_the_demo_data_on_a_fresh_clone(tmp_path, monkeypatch):
    import randwire_d2.data.cls_demo as cls_demo

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    tiny = dict(cls_demo.DEMO_CLS_PARAMS, images_per_class={"train": 2, "val": 1}, image_size=32)
    monkeypatch.setattr(cls_demo, "DEMO_CLS_PARAMS", tiny)
    train_cls = load_tool("train_cls")
    argv = ["--config-file", CLS_CONFIG, "--dry-run", "SOLVER.IMS_PER_BATCH", "4"]
    cfg = train_cls.setup(train_cls.build_parser().parse_args(argv), world_size=1).cfg
    assert cfg.PRETRAIN.DATA_ROOT == "datasets/randwire_demo_cls"
    assert len(os.listdir(tmp_path / "datasets/randwire_demo_cls/train")) == 5
