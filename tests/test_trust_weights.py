"""randwire_d2/trust/weights.py: weights files read as data, sizes checked before allocating."""

import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from common import DET_CONFIG, LAZY_DET_CONFIG, TINY_DET, TINY_LAZY, make_cfg, tiny_cfg, tiny_opts
from detectron2.modeling import build_model

from randwire_d2.checkpoint import (
    CheckpointError,
    RandWireCheckpointer,
    build_checkpointer,
    read_checkpoint,
    read_pickled_weights,
)
from randwire_d2.config import load_lazy_config

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_classifier(cls_data_root, tmp_path, **extra):
    return build_model(make_cfg(tiny_opts(cls_data_root, tmp_path, **extra)))


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 100])
def test_empty_or_random_weight_files_are_named(cls_data_root, tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    model = tiny_classifier(cls_data_root, tmp_path)
    with pytest.raises(CheckpointError, match=rf"weights\.pth' is not a readable checkpoint "):
        RandWireCheckpointer(model).load(str(path))


class _Payload:
    """Unpickling this creates `marker`: what a malicious weights file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil_pkl(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:  # as a model-zoo file would look, with the payload inside
        pickle.dump({"model": {"w": _Payload(str(marker))}, "__author__": "x"}, f)
    return str(path), marker


def test_a_pkl_payload_never_runs_in_any_weights_loader(evil_pkl, tmp_path):
    path, marker = evil_pkl
    detector = build_model(tiny_cfg())
    baseline = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1))  # no trunk: the baselines' loader
    for model in (detector, baseline):
        with pytest.raises(CheckpointError, match=r"asks for posix\.system.*could run code"):
            build_checkpointer(model, "", strict=True).load(path, checkpointables=[])
        assert not marker.exists()
    # predict and export load through the same strict checkpointer
    from randwire_d2.inference_setup import load_model
    from randwire_d2.predict import build_predictor, setup_run_config

    cfg = tiny_cfg("MODEL.WEIGHTS", path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_model(cfg)
    with pytest.raises(CheckpointError, match="could run code"):
        build_predictor(setup_run_config(DET_CONFIG, TINY_DET + ["MODEL.WEIGHTS", path]))
    # the LazyConfig tool's --eval-only
    from randwire_d2.checkpoint import load_for_eval
    from randwire_d2.engine.lazy import build_model as build_lazy

    lazy = load_lazy_config(
        LAZY_DET_CONFIG,
        TINY_LAZY
        + [
            f"train.init_checkpoint={path}",
            f"train.output_dir={tmp_path / 'lazy'}",
            "train.device=cpu",
        ],
    )
    with pytest.raises(CheckpointError, match="could run code"):
        load_for_eval(lazy, build_lazy(lazy), resume=False)
    assert not marker.exists()


def test_model_zoo_pkl_of_numpy_arrays_still_loads(tmp_path):
    source = build_model(tiny_cfg())
    state = {k: v.numpy() for k, v in source.state_dict().items()}
    path = str(tmp_path / "zoo.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "test", "step": np.float32(3)}, f, protocol=2)
    assert all(isinstance(v, np.ndarray) for v in read_pickled_weights(path)["model"].values())
    target = build_model(tiny_cfg())
    build_checkpointer(target, "", strict=True).load(path, checkpointables=[])
    for k, v in source.state_dict().items():
        assert torch.equal(v, target.state_dict()[k]), k


class _Reduce:
    def __init__(self, *reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def write_pkl(tmp_path, value):
    path = str(tmp_path / "w.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": value}, "__author__": "x"}, f, protocol=2)
    return path


PKL_BOMBS = {
    # numpy.ndarray((2**27,), 'O') would allocate 1 GiB of object pointers
    "object_array": (_Reduce(np.ndarray, ((2**27,), np.dtype("O"))), "dtype '|O'"),
    # ndarray's constructor allocates what it is told
    "float_array": (_Reduce(np.ndarray, ((2**40,), np.dtype("f8"))), "a call of numpy.ndarray"),
    # a void scalar of 1 GiB
    "void_scalar": (
        _Reduce(np.core.multiarray.scalar, (np.dtype("V1073741824"), b"")),
        "dtype '\\|V1073741824'",
    ),
    "string_array": (np.array(["a", "b"]), "dtype '<U1'"),
}


@pytest.mark.parametrize("name", sorted(PKL_BOMBS))
def test_pkl_declared_sizes_and_dtypes_are_checked_before_allocating(tmp_path, name):
    value, message = PKL_BOMBS[name]
    path = write_pkl(tmp_path, value)
    assert os.path.getsize(path) < 400
    with pytest.raises(CheckpointError, match=rf"MODEL.WEIGHTS='{path}' holds .*({message})"):
        read_pickled_weights(path)


def test_pkl_array_shape_must_match_its_bytes(tmp_path):
    path = write_pkl(tmp_path, np.zeros(4, np.float32))
    data = open(path, "rb").read()
    # the shape tuple (4,) declared as (4000000,): the data still holds 16 bytes
    patched = data.replace(b"K\x04\x85", b"J\x00\x09\x3d\x00\x85", 1)
    assert patched != data
    open(path, "wb").write(patched)
    with pytest.raises(CheckpointError, match=r"shape \(4000000,\) float32 .* over 16 bytes"):
        read_pickled_weights(path)


def test_numeric_pkl_arrays_still_load(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(3).astype(">i4")}
    arrays["c"] = np.asfortranarray(arrays["a"])
    path = str(tmp_path / "ok.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "n": np.float64(2.5)}, f)
    loaded = read_pickled_weights(path)
    for k, v in arrays.items():
        assert loaded["model"][k].dtype == v.dtype and np.array_equal(loaded["model"][k], v)
    assert loaded["n"] == 2.5


def test_a_zero_stride_view_is_refused_before_any_computation(tmp_path):
    path = str(tmp_path / "view.pth")
    big = torch.zeros(1).expand(2**20, 2**20)  # 2^40 elements over 1
    torch.save({"model": {"backbone.bottom_up.conv1.conv.weight": big}}, path)
    assert os.path.getsize(path) < 4096
    with pytest.raises(CheckpointError, match=r"declares shape \(1048576, 1048576\)"):
        read_checkpoint(path)
    model = build_model(tiny_cfg())
    with pytest.raises(CheckpointError, match="over a storage of 1 elements"):
        build_checkpointer(model, "").load(path, checkpointables=[])


def test_a_legacy_checkpoint_declaring_more_than_its_bytes_is_refused(tmp_path):
    path = str(tmp_path / "legacy.pyth")
    torch.save({"w": torch.zeros(1000)}, path, _use_new_zipfile_serialization=False)
    read_checkpoint(path)  # an honest legacy file loads
    data = open(path, "rb").read()
    patched = data.replace(b"M\xe8\x03", b"J\x00\x00\x00\x40", 1)  # 1000 -> 2**30 elements
    assert patched != data
    open(path, "wb").write(patched)
    with pytest.raises(CheckpointError, match="declares 4294967296 bytes of storages"):
        read_checkpoint(path)


def test_a_compressed_zip_record_is_refused(tmp_path):
    path = str(tmp_path / "z.pth")
    torch.save({"w": torch.zeros(10)}, path)
    out = str(tmp_path / "deflated.pth")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(CheckpointError, match="compressed or oversized record"):
        read_checkpoint(out)


def shared_reference_bomb(depth=8):
    """A list that expands to 10**depth values through shared references: a few hundred bytes
    pickled, but any walk of it (a config diff, a copy) would take 10**depth steps."""
    node = [0] * 10
    for _ in range(depth - 1):
        node = [node] * 10
    return node


def test_shared_references_that_expand_past_a_checkpoint_are_refused(tmp_path):
    path = str(tmp_path / "bomb.pth")
    torch.save({"model": {}, "lazy_cfg": {"train.max_iter": shared_reference_bomb()}}, path)
    assert os.path.getsize(path) < 4096
    with pytest.raises(CheckpointError, match="expands to more than 10000000 values"):
        read_checkpoint(path)
    cycle = []
    cycle.append(cycle)
    torch.save({"model": {}, "x": cycle}, path)
    with pytest.raises(CheckpointError, match="holds a container that contains itself"):
        read_checkpoint(path)
    pkl = write_pkl(tmp_path, shared_reference_bomb())
    with pytest.raises(CheckpointError, match="expands to more than 10000000 values"):
        read_pickled_weights(pkl)
