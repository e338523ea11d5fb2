import os

# The Triton node kernels run on CPU tensors through Triton's interpreter, which Triton selects
# when a kernel is defined: set before anything imports randwire_d2.modeling.kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")
# One OpenMP thread per process, the tools the tests start included: two pytest-xdist workers
# share two cores, and oversubscribed OpenMP threads spin-wait (tests that need more set them).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import dataclasses  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from common import LAZY_DET_CONFIG, TINY_LAZY, write_user_dataset  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from randwire_d2.checkpoint import RandWireCheckpointer  # noqa: E402
from randwire_d2.config import load_lazy_config  # noqa: E402
from randwire_d2.data.cls_demo import generate_classification_demo  # noqa: E402
from randwire_d2.data.dataset_checks import register_user_datasets  # noqa: E402
from randwire_d2.data.detection_demo import generate_detection_demo  # noqa: E402

if os.environ["TRITON_INTERPRET"] == "1":
    # Triton's interpreter checks every 32-bit integer add, sub and mul for overflow (in int64)
    # and then drops the result: its device_assert acts only with `debug`, which it never sets.
    # That is half of an interpreted kernel's time; the tests' offsets are far from 2**31.
    import triton.runtime.interpreter as _interpreter

    _builder = _interpreter.interpreter_builder
    _builder.options = dataclasses.replace(_builder.options, sanitize_overflow=False)


@pytest.fixture
def one_thread():
    """Train on one intra-op thread: tiny models gain nothing from more, and on a busy 2-core
    machine oversubscribed OpenMP threads spin-wait and slow them down 10x or more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A tiny demo-style COCO dataset (24 train, 8 val images of 64x64), registered as
    det_test_train / det_test_val; tests only read it."""
    folder = str(tmp_path_factory.mktemp("det_data"))
    paths = generate_detection_demo(
        folder,
        {"train": 24, "val": 8},
        image_size=(64, 64),
        objects_per_image=(1, 3),
        object_size=(14, 30),
        seed=3,
    )
    for split in ("train", "val"):
        name = f"det_test_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    register_user_datasets(
        [
            (f"det_test_{split}", paths[split], os.path.join(folder, split))
            for split in ("train", "val")
        ]
    )
    return folder, paths


@pytest.fixture(scope="session")
def cls_data_root(tmp_path_factory):
    """A tiny ImageFolder of the classification demo (4 train, 2 val images per class, 32x32),
    that tests only read."""
    folder = tmp_path_factory.mktemp("cls_data") / "demo"
    return generate_classification_demo(str(folder), {"train": 4, "val": 2}, image_size=32)


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    return write_user_dataset(str(tmp_path_factory.mktemp("trees")))


@pytest.fixture
def forget_datasets():
    """Unregister the datasets a test's --dataset registered (a tool's main runs in-process)."""
    before = set(DatasetCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.fixture(scope="module")
def lazy_run(tmp_path_factory):
    """(overrides, saved config.yaml, model_final.pth) of a lazy run of a tiny 1-class detector
    on the user's dataset: the config as tools/lazyconfig_train_net.py saves it (LazyConfig.save),
    the weights written by the project's checkpointer."""
    from detectron2.config import LazyConfig, instantiate

    folder = tmp_path_factory.mktemp("lazy_run")
    opts = TINY_LAZY + [
        "model.roi_heads.num_classes=1",
        "dataloader.test.dataset.names=trees_val",
        f"train.output_dir={folder}",
    ]
    cfg = load_lazy_config(LAZY_DET_CONFIG, opts)
    torch.manual_seed(0)
    RandWireCheckpointer(instantiate(cfg.model), str(folder), cfg=cfg).save("model_final")
    LazyConfig.save(cfg, str(folder / "config.yaml"))
    return opts, str(folder / "config.yaml"), str(folder / "model_final.pth")
