import os

# The Triton node kernels run on CPU tensors through Triton's interpreter, which Triton selects
# when a kernel is defined: set before anything imports randwire_d2.modeling.kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from randwire_d2.data.checks import register_user_datasets  # noqa: E402
from randwire_d2.data.cls_demo import generate_classification_demo  # noqa: E402
from randwire_d2.data.detection_demo import generate_detection_demo  # noqa: E402


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
