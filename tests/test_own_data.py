"""A user's own data, end to end, with docs/own_data.md's commands as written: a one-class
COCO dataset (category id 1, non-contiguous image ids, file names in subfolders) and an
ImageFolder, trained, evaluated, predicted on and exported by the tools. The commands are read
from docs/own_data.md and run in-process (as `python tools/...` would run them) in a folder that
holds the generated data at the page's paths; only size and iteration overrides are appended."""

import contextlib
import io
import json
import os
import shlex
import shutil

import pytest
import torch
from common import REPO, TINY_DET, call_tool

from randwire_d2.data.cls_demo import generate_classification_demo
from randwire_d2.data.detection_demo import generate_detection_demo

README = os.path.join(REPO, "docs", "own_data.md")
pytestmark = pytest.mark.usefixtures("one_thread")


def readme_commands(block: str):
    """The commands of the page's `<!-- own-data: block -->` bash block, as argument lists."""
    text = open(README, encoding="utf-8").read()
    marker = f"<!-- own-data: {block} -->"
    assert marker in text, f"docs/own_data.md lost its {marker} block"
    body = text.split(marker, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = body.replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip() and not line.startswith("#")]


def run_tool(command, cwd, extra=()):
    """`python tools/X.py ARGS` run in-process in `cwd`, with `extra` appended; its output."""
    assert command[0] == "python" and command[1].startswith("tools/"), command
    args = [os.path.join(REPO, a) if a.startswith("configs/") else a for a in command[2:]]
    proc = call_tool(os.path.basename(command[1]), *args, *extra, cwd=cwd)
    assert not proc.returncode, (
        f"{' '.join(command)} exited with {proc.returncode}:\n"
        + proc.stdout[-3000:]
        + proc.stderr[-3000:]
    )
    return proc.stdout


def user_coco_dataset(root):
    """datasets/trees as a user's: one category (id 1, "tree"), image ids that are neither
    contiguous nor ordered, file names under images/{train,val}/."""
    raw = generate_detection_demo(
        os.path.join(root, "raw"),
        {"train": 16, "val": 6},
        image_size=(64, 64),
        objects_per_image=(1, 2),
        object_size=(16, 30),
        seed=5,
    )
    trees = os.path.join(root, "datasets", "trees")
    ids = iter((i * 37) % 101 + 1 for i in range(1, 101))  # 38, 75, 11, 48, ...: unique
    for split, path in raw.items():
        coco = json.load(open(path))
        os.makedirs(os.path.join(trees, "images", split))
        new_id = {}
        for image in coco["images"]:
            new_id[image["id"]] = next(ids)
            name = os.path.basename(image["file_name"])
            shutil.copy(
                os.path.join(root, "raw", split, name), os.path.join(trees, "images", split, name)
            )
            image.update(id=new_id[image["id"]], file_name=f"{split}/{name}")
        for a in coco["annotations"]:
            a.update(image_id=new_id[a["image_id"]], category_id=1)
        coco["categories"] = [{"id": 1, "name": "tree", "supercategory": "plant"}]
        json.dump(coco, open(os.path.join(trees, f"{split}.json"), "w"))
    return trees


def coco_ap(gt_json, results):
    """pycocotools' bbox AP (percent) of `results` (a list of COCO result dicts)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        e = COCOeval(gt, gt.loadRes(results), "bbox")
        e.evaluate(), e.accumulate(), e.summarize()
    return 100.0 * e.stats[0]


@pytest.mark.slow
def test_readme_detection_commands_on_a_users_coco_dataset(tmp_path):
    trees = user_coco_dataset(str(tmp_path))
    train, evaluate, predict, export = readme_commands("detection")
    # The documented training, made tiny: a 64-pixel detector trained 60 iterations.
    run_tool(train, tmp_path, TINY_DET + ["SOLVER.MAX_ITER", 60, "SOLVER.BASE_LR", 0.02])
    run_tool(evaluate, tmp_path)
    out = tmp_path / "output" / "trees"
    evaluated = json.load(open(out / "inference" / "trees_val" / "coco_instances_results.json"))
    run_tool(predict, tmp_path)
    predicted = json.load(open(out / "predictions" / "coco_instances_results.json"))

    # predict.py's results carry the dataset's own ids: COCO.loadRes takes them and scores them
    # exactly as the evaluator's own results.
    val = json.load(open(os.path.join(trees, "val.json")))
    assert {r["image_id"] for r in predicted} <= {i["id"] for i in val["images"]}
    assert {r["category_id"] for r in predicted} == {1}
    ap = coco_ap(os.path.join(trees, "val.json"), predicted)
    assert ap > 0 and ap == pytest.approx(coco_ap(os.path.join(trees, "val.json"), evaluated))

    text = run_tool(export, tmp_path)
    report = json.load(open(out / "export" / "export_report.json"))
    assert set(report) >= {"torchscript", "onnx"}, text
    for fmt in ("torchscript", "onnx"):
        assert len(report[fmt]["checks"]) >= 2, report[fmt]


@pytest.mark.slow
def test_readme_classification_commands_on_an_image_folder(tmp_path):
    digits = tmp_path / "datasets" / "digits"
    generate_classification_demo(str(digits), {"train": 8, "val": 4}, image_size=32)
    for split in ("train", "val"):  # 3 classes, as the documented NUM_CLASSES
        for extra in sorted(os.listdir(digits / split))[3:]:
            shutil.rmtree(digits / split / extra)
    train, evaluate, predict, export = readme_commands("classification")
    # fmt: off
    tiny = [
        "MODEL.DEVICE", "cpu", "MODEL.RANDWIRE.NUM_NODES", 6, "MODEL.RANDWIRE.CHANNELS", 8,
        "MODEL.CLASSIFIER.HEAD_CHANNELS", 32, "SOLVER.IMS_PER_BATCH", 8, "PRETRAIN.EPOCHS", 3,
        "PRETRAIN.WARMUP_EPOCHS", 1.0, "PRETRAIN.TRAIN_CROP", 32, "PRETRAIN.TEST_CROPS", "[32]",
        "PRETRAIN.EVAL_PERIOD_EPOCHS", 1.0, "DATALOADER.NUM_WORKERS", 0,
    ]
    # fmt: on
    run_tool(train, tmp_path, tiny)
    out = tmp_path / "output" / "digits"
    best = torch.load(out / "model_best.pth", weights_only=True)
    assert best["classes"] == sorted(os.listdir(digits / "train"))
    run_tool(evaluate, tmp_path)
    run_tool(predict, tmp_path)
    predicted = [
        p for p in (out / "predictions").glob("*.json") if p.name != "predict_manifest.json"
    ]
    assert len(predicted) == 3 * 4  # one json per image
    run_tool(export, tmp_path)
    report = json.load(open(out / "export" / "export_report.json"))
    assert set(report) >= {"pt2", "onnx"}


def test_readme_lazy_command_parses_and_loads():
    """The LazyConfig command: options before overrides, every override a key the config has."""
    from randwire_d2.config import load_lazy_config
    from randwire_d2.engine import argument_parser

    (command,) = readme_commands("lazy")
    args = argument_parser(user_datasets=True).parse_args(command[2:])
    assert [d[0] for d in args.dataset] == ["trees_train", "trees_val"]
    cfg = load_lazy_config(os.path.join(REPO, args.config_file), args.opts)
    assert cfg.dataloader.test.dataset.names == "trees_val"
    assert cfg.model.roi_heads.num_classes == 1 and cfg.train.max_iter == 5000
    assert list(cfg.dataloader.train.mapper.augmentations[0].short_edge_length) == [352]


def test_the_demo_classifier_folder_is_spelled_one_way():
    """The demo classifier's checkpoint folder: the yaml's OUTPUT_DIR, make demo's, and every
    mention in README, the docs, the configs and the tools' usage lines."""
    import glob
    import re

    from randwire_d2.config import load_config

    folder = load_config(os.path.join(REPO, "configs", "demo", "randwire_cls_demo.yaml")).OUTPUT_DIR
    files = [os.path.join(REPO, "README.md")] + glob.glob(os.path.join(REPO, "docs", "*.md"))
    files += glob.glob(os.path.join(REPO, "configs", "**", "*.*"), recursive=True)
    files += glob.glob(os.path.join(REPO, "tools", "*.py"))
    spelled = {
        (os.path.relpath(f, REPO), m)
        for f in files
        for m in re.findall(r"output/demo[_/]classif\w*", open(f, encoding="utf-8").read())
    }
    assert spelled and {m for _, m in spelled} == {folder}, sorted(spelled)
