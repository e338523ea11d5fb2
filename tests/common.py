"""What the test modules share: the tiny configs, the repository's config paths, config builders,
metrics.json reading, and the ways to run a tool (in-process, as `python tools/X.py` would run
it, or in a fresh process). Test modules import these from here, never from each other; pytest
fixtures shared by several modules are in conftest.py.

The tiny configs differ on purpose (each is what its tests were written against): their shared
parts are named once (TINY_TRUNK, TINY_FPN, ...) and each variant says what it adds."""

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import os
import runpy
import shutil
import subprocess
import sys
import traceback
import warnings

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from randwire_d2.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")
CONFIGS = os.path.join(REPO, "configs")
DEMO = os.path.join(CONFIGS, "demo")
DET_CONFIG = os.path.join(DEMO, "faster_rcnn_randwire_demo.yaml")
MASK_CONFIG = os.path.join(DEMO, "mask_rcnn_randwire_demo.yaml")
RETINA_CONFIG = os.path.join(DEMO, "retinanet_randwire_demo.yaml")
CLS_CONFIG = os.path.join(DEMO, "randwire_cls_demo.yaml")
LAZY = os.path.join(CONFIGS, "lazy")
LAZY_DET_CONFIG = os.path.join(LAZY, "demo", "faster_rcnn_randwire_demo.py")
LAZY_MASK_CONFIG = os.path.join(LAZY, "demo", "mask_rcnn_randwire_demo.py")
CLS_SMALL_CONFIG = os.path.join(CONFIGS, "imagenet", "randwire_ws_c78_small.yaml")

# The environment of every tool run in a fresh process: the repository importable, one OpenMP
# thread (tiny models gain nothing from more; on a busy 2-core machine more spin and slow down).
TOOL_ENV = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}

# ---------------------------------------------------------------------------------------------
# Tiny yaml configs (KEY VALUE override lists)

# fmt: off
# A RandWire trunk small enough for a CPU test: C=8, N=6, WS(2, 0.75).
TINY_TRUNK = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RANDWIRE.CHANNELS", 8,
    "MODEL.RANDWIRE.NUM_NODES", 6,
    "MODEL.RANDWIRE.WS_K", 2,
]
TINY_FPN = ["MODEL.FPN.OUT_CHANNELS", 16]
# 64-pixel images, 2 per batch.
TINY_INPUT = [
    "INPUT.MIN_SIZE_TRAIN", (64,),
    "INPUT.MAX_SIZE_TRAIN", 64,
    "INPUT.MIN_SIZE_TEST", 64,
    "INPUT.MAX_SIZE_TEST", 64,
    "SOLVER.IMS_PER_BATCH", 2,
]
# Faster R-CNN's RPN and box head, shrunk.
TINY_RCNN = [
    "MODEL.ROI_BOX_HEAD.FC_DIM", 32,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 64,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
]
# The tiny detector of DET_CONFIG (and of MASK/RETINA_CONFIG with their heads shrunk too):
# C=8, N=6, WS(2, 0.75), 16-channel FPN, 64-pixel images. Values as Python values: give them to
# a command line through `as_args`.
TINY_DET = TINY_TRUNK + TINY_FPN + TINY_RCNN + TINY_INPUT
TINY_MASK_HEAD = ["MODEL.ROI_MASK_HEAD.CONV_DIM", 16]

# A detector for prediction (test images only; 96 pixels, 20 proposals), as strings.
TINY_PREDICT_DET = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RANDWIRE.CHANNELS", "8",
    "MODEL.RANDWIRE.NUM_NODES", "6",
    "MODEL.RANDWIRE.WS_K", "2",
    "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
    "INPUT.MIN_SIZE_TEST", "96",
    "INPUT.MAX_SIZE_TEST", "96",
]
# A classifier of CLS_CONFIG for prediction and evaluation, as strings.
TINY_PREDICT_CLS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RANDWIRE.CHANNELS", "8",
    "MODEL.RANDWIRE.NUM_NODES", "6",
    "MODEL.RANDWIRE.WS_K", "2",
    "MODEL.CLASSIFIER.HEAD_CHANNELS", "32",
    "PRETRAIN.TEST_CROPS", "[28, 32]",
    "SOLVER.IMS_PER_BATCH", "4",
    "DATALOADER.NUM_WORKERS", "0",
]
# The classifier and detector that export tests convert (strings; WS_K as the config's).
TINY_EXPORT_CLS = ["MODEL.DEVICE", "cpu", "MODEL.RANDWIRE.NUM_NODES", "6",
                   "MODEL.RANDWIRE.CHANNELS", "8", "MODEL.CLASSIFIER.HEAD_CHANNELS", "32"]
TINY_EXPORT_DET = ["MODEL.DEVICE", "cpu", "MODEL.RANDWIRE.NUM_NODES", "6",
                   "MODEL.RANDWIRE.CHANNELS", "8", "MODEL.RANDWIRE.WS_K", "2",
                   "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
                   "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "INPUT.MIN_SIZE_TEST", "64",
                   "INPUT.MAX_SIZE_TEST", "64"]
# fmt: on

# The lazy twin of TINY_DET (C=8, N=6, WS(2, 0.75), 16-channel FPN, 64-pixel images).
TINY_LAZY = [
    "model.backbone.bottom_up.channels=8",
    "model.backbone.bottom_up.wiring.num_nodes=6",
    "model.backbone.bottom_up.wiring.K=2",
    "model.backbone.out_channels=16",
    "model.proposal_generator.head.in_channels=16",
    "model.proposal_generator.batch_size_per_image=64",
    "model.proposal_generator.post_nms_topk=[50,50]",
    "model.roi_heads.batch_size_per_image=32",
    "model.roi_heads.box_head.input_shape.channels=16",
    "model.roi_heads.box_head.fc_dims=[32,32]",
    "model.roi_heads.box_predictor.input_shape.channels=32",
    "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
    "dataloader.train.mapper.augmentations.0.max_size=64",
    "dataloader.test.mapper.augmentations.0.short_edge_length=64",
    "dataloader.test.mapper.augmentations.0.max_size=64",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
]
TINY_LAZY_MASK = TINY_LAZY + [
    "model.roi_heads.mask_head.input_shape.channels=16",
    "model.roi_heads.mask_head.conv_dims=[16,16,16]",
]


def as_args(opts):
    """Overrides as a command line gives them: strings."""
    return [str(v) for v in opts]


def tiny_cfg(*overrides, config=DET_CONFIG):
    """The tiny detector (TINY_DET) of `config`, + `overrides`; not frozen."""
    return load_config(config, TINY_DET + list(overrides), freeze=False)


def tiny_cls_cfg(regime="small", node_op="sep_conv3x3", generator="ws", seed=1):
    """A tiny classifier of CLS_SMALL_CONFIG (C=8, N=6, 5 classes); not frozen."""
    keys = {"DEVICE": "cpu", "RANDWIRE.REGIME": regime, "RANDWIRE.NODE_OP": node_op}
    keys |= {"RANDWIRE.GENERATOR": generator, "RANDWIRE.SEED": seed, "RANDWIRE.NUM_NODES": 6}
    keys |= {"RANDWIRE.WS_K": 2, "RANDWIRE.BA_M": 2, "RANDWIRE.CHANNELS": 8}
    keys |= {"CLASSIFIER.NUM_CLASSES": 5, "CLASSIFIER.HEAD_CHANNELS": 16}
    opts = [x for k, v in keys.items() for x in ("MODEL." + k, v)]
    return load_config(CLS_SMALL_CONFIG, opts, freeze=False)


def image_batch(n=2, size=32, labels=True):
    """n random classifier inputs (labels i % 5)."""
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(3, size, size, generator=g) * 255} for _ in range(n)]
    if labels:
        for i, x in enumerate(items):
            x["label"] = i % 5
    return items


def tiny_opts(data_root, output_dir, epochs=2, **extra):
    """KEY VALUE overrides of CLS_CONFIG (as strings, as on the command line) of a tiny, fast
    pretraining run: 20 images of 32x32, a global batch of 16 (one iteration per epoch)."""
    opts = {
        "MODEL.DEVICE": "cpu",
        "MODEL.RANDWIRE.NUM_NODES": 6,
        "MODEL.RANDWIRE.CHANNELS": 8,
        "MODEL.CLASSIFIER.HEAD_CHANNELS": 32,
        "SOLVER.IMS_PER_BATCH": 16,
        "PRETRAIN.DATA_ROOT": data_root,
        "PRETRAIN.EPOCHS": epochs,
        "PRETRAIN.WARMUP_EPOCHS": 1.0,
        "PRETRAIN.TRAIN_CROP": 32,
        "PRETRAIN.TEST_CROPS": [32],
        "PRETRAIN.CHECKPOINT_PERIOD_EPOCHS": 1.0,
        "PRETRAIN.EVAL_PERIOD_EPOCHS": 0.0,
        "DATALOADER.NUM_WORKERS": 0,
        "OUTPUT_DIR": str(output_dir),
    }
    opts.update(extra)
    return [str(x) for kv in opts.items() for x in kv]


def make_cfg(opts, world_size=1):
    """The config tools/train_cls.py trains with: CLS_CONFIG, overrides, schedule resolved."""
    from randwire_d2.data.dataset_checks import check_image_folder
    from randwire_d2.engine import resolve_schedule

    cfg = load_config(CLS_CONFIG, opts)
    size = len(check_image_folder(cfg.PRETRAIN.DATA_ROOT, ("train",))["train"][1])
    return resolve_schedule(cfg, size, world_size)


def read_metrics(output_dir):
    """[(iteration, record)] of metrics.json, in file order."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [(r["iteration"], r) for r in records]


def randomize_norms(model, seed=0):
    """Non-trivial BN statistics and affine (and node weights), so that folding them is tested."""
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


def tiny_export_model(config=CLS_CONFIG, opts=TINY_EXPORT_CLS, *extra):
    """An eval-mode tiny model with random norms (seeded)."""
    torch.manual_seed(0)
    return randomize_norms(build_model(load_config(config, list(opts) + list(extra))))


def save_model_final(model, config, opts, folder):
    """`model` saved as folder/model_final.pth with the config of `config` + `opts`; its path."""
    from randwire_d2.engine import build_checkpointer

    cfg = load_config(config, opts)
    build_checkpointer(model, str(folder), cfg=cfg).save("model_final")
    return str(folder / "model_final.pth")


def classifier_cfg(cfg):
    """The RandWireClassifier that pretrains `cfg`'s trunk (same wiring and channels)."""
    cls = cfg.clone()
    cls.MODEL.META_ARCHITECTURE = "RandWireClassifier"
    cls.MODEL.BACKBONE.NAME = "build_randwire_backbone"
    cls.MODEL.BACKBONE.FREEZE_AT = 0
    cls.MODEL.RANDWIRE.NORM = "BN"
    cls.MODEL.RANDWIRE.OUT_FEATURES = ["conv5"]
    cls.MODEL.CLASSIFIER.NUM_CLASSES = 5
    cls.MODEL.CLASSIFIER.HEAD_CHANNELS = 32
    return cls


def images_with_boxes(n=2, size=64, masks=False):
    """n random images with the same two boxes (classes 0, 3); with `masks`, each box's mask
    fills it (gt_masks as BitMasks)."""
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(1)
    batch = []
    for _ in range(n):
        boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 20.0, 60.0, 50.0]])
        inst = Instances((size, size), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([0, 3]))
        if masks:
            fill = torch.zeros(len(boxes), size, size, dtype=torch.bool)
            for m, (x0, y0, x1, y1) in zip(fill, boxes.int().tolist()):
                m[y0:y1, x0:x1] = True
            inst.gt_masks = BitMasks(fill)
        image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
        batch.append({"image": image.float(), "instances": inst, "height": size, "width": size})
    return batch


def tiny_trunk(regime, node_op, norm, drop_edge_prob=0.0, out=("conv5",), nodes=6, seed=1):
    """A float64 reference-execution RandWire trunk (C=8) with non-trivial node weights and
    norm statistics."""
    from randwire_d2.modeling import RandWire, network_wiring

    torch.manual_seed(0)
    wiring = network_wiring("ws", nodes, seed, regime, K=2, P=0.5)
    trunk = RandWire(
        wiring=wiring,
        channels=8,
        regime=regime,
        node_op=node_op,
        norm=norm,
        out_features=list(out),
        drop_edge_prob=drop_edge_prob,
        execution="reference",
    )
    # Non-trivial aggregation weights and norm statistics (they start at 0 / 1).
    with torch.no_grad():
        for name, t in list(trunk.named_parameters()) + list(trunk.named_buffers()):
            if (
                name.endswith(".weight")
                and t.dim() == 1
                and "nodes" in name
                and "transform" not in name
            ):
                t.normal_()
            elif "running_var" in name:
                t.uniform_(0.5, 2.0)
            elif "running_mean" in name:
                t.normal_(0, 0.3)
            elif t.dim() == 1 and t.is_floating_point() and "transform" in name:
                t.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
    return trunk.double()  # float64: a real difference is not lost in rounding noise


def save_random_model(config, opts, folder, name="model", **checkpointables):
    """A checkpoint of an untrained model of `config` + `opts`, written by the project's
    checkpointer (wiring, input statistics, cfg); its path."""
    from randwire_d2.checkpoint import RandWireCheckpointer

    cfg = load_config(config, opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    RandWireCheckpointer(model, str(folder), cfg=cfg, **checkpointables).save(name)
    return os.path.join(str(folder), f"{name}.pth")


def train_lazy(folder, resume, *overrides):
    """Train the tiny lazy detector (TINY_LAZY, CPU) on det_test_train, evaluated on det_test_val
    (the `tiny_data` fixture), in `folder` with `overrides` (key=value), as
    tools/lazyconfig_train_net.py does; with `resume`, from the folder's last checkpoint."""
    from randwire_d2.config import load_lazy_config
    from randwire_d2.engine.lazy import do_train
    from randwire_d2.engine.output_dir import release_output_dir

    opts = ["dataloader.train.dataset.names=det_test_train", "train.device=cpu"]
    opts += ["dataloader.test.dataset.names=det_test_val", f"train.output_dir={folder}"]
    cfg = load_lazy_config(LAZY_DET_CONFIG, TINY_LAZY + opts + list(overrides))
    os.makedirs(folder, exist_ok=True)
    do_train(cfg, argparse.Namespace(resume=resume))
    release_output_dir(str(folder))


def stopped_after(full, folder, checkpoint="model_0000002.pth"):
    """`folder` as a run killed right after writing `checkpoint` (a file of run folder `full`)
    leaves it."""
    os.makedirs(folder)
    shutil.copy(os.path.join(full, checkpoint), folder)
    with open(os.path.join(folder, "last_checkpoint"), "w") as f:
        f.write(checkpoint)


def write_image(path, seed=0, size=(24, 32)):
    """A random RGB image file; its path."""
    import numpy as np
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return str(path)


def coco_dict(num_categories=3):
    """A 2-image COCO dataset with one 10x10 box per category."""
    return {
        "images": [
            {"id": i + 1, "file_name": f"{i}.jpg", "height": 24, "width": 32} for i in range(2)
        ],
        "annotations": [
            {
                "id": k + 1,
                "image_id": k % 2 + 1,
                "category_id": k + 1,
                "bbox": [2, 2, 10, 10],
                "area": 100,
                "iscrowd": 0,
            }
            for k in range(num_categories)
        ],
        "categories": [{"id": k + 1, "name": f"c{k}"} for k in range(num_categories)],
    }


# ---------------------------------------------------------------------------------------------
# Tools


def tool_path(name):
    return os.path.join(TOOLS, name if name.endswith(".py") else name + ".py")


def load_tool(name):
    """tools/<name>.py imported as a module (its `__main__` block does not run)."""
    spec = importlib.util.spec_from_file_location(name, tool_path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sweep_tool(capsys, *argv):
    """tools/sweep.py's main(argv) in this process: (exit status, stdout, stderr)."""
    try:
        code = load_tool("sweep").main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def run_tool(name, *args, check=None, timeout=600, env=None, cwd=REPO, prefix=(sys.executable,)):
    """`python tools/<name>.py ARGS` in a fresh process (TOOL_ENV + `env`): the
    CompletedProcess, stdout and stderr as text. `check=True` asserts exit 0, `check=False`
    asserts a failure; None checks nothing."""
    proc = subprocess.run(
        [*prefix, tool_path(name), *[str(a) for a in args]],
        cwd=cwd,
        env={**TOOL_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    _check(proc, check, name)
    return proc


def _check(proc, check, name):
    if check is True:
        assert proc.returncode == 0, (
            f"{name} exited with {proc.returncode}:\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
        )
    elif check is False:
        assert proc.returncode != 0, f"{name} did not fail:\n" + proc.stdout[-2000:]


def _logger_state():
    loggers = [logging.getLogger()] + [
        x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger)
    ]
    return {x: (list(x.handlers), x.propagate, x.level) for x in loggers}


def _restore_loggers(before):
    from detectron2.utils import logger as d2_logger

    removed = []
    for x in [logging.getLogger()] + [
        x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger)
    ]:
        handlers, propagate, level = before.get(x, ([], True, logging.NOTSET))
        removed += [h for h in x.handlers if h not in handlers]
        x.handlers[:] = handlers
        x.propagate, x.level = propagate, level
    # The log files the removed handlers wrote (setup_logger's, cached per file name) are
    # closed, unless a handler that stays writes them too.
    kept = {id(getattr(h, "stream", None)) for x, (hs, _, _) in before.items() for h in hs}
    for h in removed:
        stream = getattr(h, "stream", None)
        if isinstance(stream, io.TextIOWrapper) and stream not in (sys.__stdout__, sys.__stderr__):
            if id(stream) not in kept and not stream.closed:
                stream.close()
        h.close()
    # setup_logger is cached per arguments: a later run in the same OUTPUT_DIR sets its logs up
    # again, as a new process would.
    d2_logger.setup_logger.cache_clear()
    d2_logger._cached_log_stream.cache_clear()
    logging.Logger.manager._clear_cache()


@contextlib.contextmanager
def tool_state(hide_datasets=()):
    """Undo what a tool run leaves in this process, as its process' exit would: the logging
    handlers and setup_logger's cache, the OUTPUT_DIR locks it holds, the datasets it
    registered, torch's thread count, the environment, sys.argv, the warning filters. Datasets
    in `hide_datasets` are unregistered during the run (it registers them itself) and restored."""
    from randwire_d2.engine import output_dir as output_dir_module

    loggers = _logger_state()
    held = set(output_dir_module._HELD_OUTPUT_DIRS)
    hidden = {}
    for name in hide_datasets:
        if name in DatasetCatalog.list():
            hidden[name] = (DatasetCatalog[name], MetadataCatalog.get(name))
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    registered = set(DatasetCatalog.list())
    threads, environ, argv, cwd = torch.get_num_threads(), dict(os.environ), sys.argv, os.getcwd()
    try:
        with warnings.catch_warnings():
            yield
    finally:
        os.chdir(cwd)
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)
        for path in set(output_dir_module._HELD_OUTPUT_DIRS) - held:
            output_dir_module.release_output_dir(path)
        for name in set(DatasetCatalog.list()) - registered:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        for name, (func, meta) in hidden.items():
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            DatasetCatalog.register(name, func)
            MetadataCatalog[name] = meta
        _restore_loggers(loggers)


def dataset_names(args):
    """The NAMEs of `--dataset NAME JSON IMAGES` in a command line."""
    args = list(args)
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--dataset"]


def call_tool(name, *args, check=None, env=None, cwd=None):
    """`python tools/<name>.py ARGS` run in this process, as a fresh process would run it: its
    `__main__` block under sys.argv, with stdout, stderr and the log records that would reach the
    screen captured, and SystemExit and uncaught exceptions turned into an exit status (an
    exception's traceback goes to stderr). The state it leaves is undone (`tool_state`).
    Returns a CompletedProcess; `check` as in `run_tool`."""
    args = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    code, argv = 0, [tool_path(name), *args]
    with tool_state(hide_datasets=dataset_names(args)):
        os.environ.update({"OMP_NUM_THREADS": "1", **(env or {})})
        if cwd is not None:
            os.chdir(cwd)
        sys.argv = list(argv)
        # Log records that reach no handler of their own: Python prints them (WARNING and up)
        # on stderr; pytest's handlers on the root logger would take them instead.
        screen = logging.StreamHandler(err)
        screen.setLevel(logging.WARNING)
        logging.getLogger().addHandler(screen)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    runpy.run_path(tool_path(name), run_name="__main__")
                except SystemExit as e:
                    if e.code is None or isinstance(e.code, int):
                        code = e.code or 0
                    else:
                        print(e.code, file=sys.stderr)
                        code = 1
                except Exception:
                    traceback.print_exc()
                    code = 1
        finally:
            logging.getLogger().removeHandler(screen)
    result = subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
    _check(result, check, name)
    return result


# One category, id 1 (Detectron2's class index 0); image ids neither contiguous nor in file order.
USER_IMAGES = {"sub/a.jpg": 17, "sub/b.jpg": 40, "sub/c.jpg": 3}
TINY_1CLASS = TINY_PREDICT_DET + ["MODEL.ROI_HEADS.NUM_CLASSES", "1"]


def write_user_dataset(folder) -> dict:
    """A user-style COCO dataset under `folder`: images/sub/{a,b,c}.jpg (64x64) with ids
    USER_IMAGES, category 1 "tree"; and other/x.jpg, an image that is not in it."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for name, image_id in USER_IMAGES.items():
        path = os.path.join(folder, "images", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, rng.integers(0, 255, (64, 64, 3), np.uint8))
        images.append({"id": image_id, "file_name": name, "height": 64, "width": 64})
        bbox = [8.0, 10.0, 30.0, 24.0]
        annotations.append(
            {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "bbox": bbox}
            | {"area": bbox[2] * bbox[3], "iscrowd": 0}
        )
    json_file = os.path.join(folder, "trees_val.json")
    with open(json_file, "w") as f:
        categories = [{"id": 1, "name": "tree"}]
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    other = os.path.join(folder, "other", "x.jpg")
    os.makedirs(os.path.dirname(other))
    cv2.imwrite(other, rng.integers(0, 255, (64, 64, 3), np.uint8))
    return {"json": json_file, "images": os.path.join(folder, "images"), "other": other}


def close_to_float64(got, ref32, ref64, what, factor=8.0, ulps=64):
    """`got` (float32) is as close to the float64 ground truth `ref64` as the float32 reference
    `ref32` is, within `factor`, or within `ulps` float32 roundings of the scale. Unlike a bound
    on got - ref32 it holds whatever order a CPU sums in: both round, each in its own order,
    and where a result cancels (a gradient through BatchNorm) both err far above its scale."""
    ref64 = ref64.double()
    err = (got.double() - ref64).abs().max().item()
    ref_err = (ref32.double() - ref64).abs().max().item()
    scale = ref64.abs().max().item()
    bound = factor * ref_err + ulps * torch.finfo(torch.float32).eps * scale
    assert err <= bound, (
        f"{what}: max error {err:.3g} against float64 > {factor} x the float32 reference's "
        f"{ref_err:.3g} + {ulps} ulps of {scale:.3g}"
    )
