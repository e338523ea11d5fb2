"""randwire_d2.trust: what a file given to the tools may make the process do. Each test holds a
file an attacker (or an unlucky user) could hand over: it is refused with an error naming the file
and why, before anything of it runs or is allocated."""

import contextlib
import os
import pickle
import signal
import zipfile

import numpy as np
import pytest
import torch
import yaml
from common import (
    DET_CONFIG,
    LAZY,
    LAZY_DET_CONFIG,
    LAZY_MASK_CONFIG,
    TINY_DET,
    call_tool,
    tiny_cfg,
)
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model

from randwire_d2.checkpoint import (
    CheckpointError,
    build_checkpointer,
    read_checkpoint,
    read_pickled_weights,
)
from randwire_d2.config import UnsafeConfigError, load_config
from randwire_d2.graphs import NetworkWiring
from randwire_d2.inference_setup import load_any_config

# A file that is not regular, or too large, is a ValueError (trust.FileTrustError) naming it.
FileTrustError = ValueError


@contextlib.contextmanager
def deadline(seconds=10):
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer comes)."""

    def expired(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---- LazyConfig targets: decided on what they resolve to ---------------------------------------

# Each starts with an allowed package's name and walks into something else.
WALKING_TARGETS = [
    "detectron2.config.lazy.os.system",
    "detectron2.utils.collect_env.subprocess.check_output",
    "detectron2.config.LazyConfig.load",
    "detectron2.utils.file_io.PathManager.rm",
    "detectron2.utils.file_io.PathManager.open",
    "torch.nn.modules.module.torch.save",
    "randwire_d2.checkpoint.os.remove",
    "a_module_never_imported.run",
]


def saved_lazy_config(tmp_path, extra):
    """A lazy run's config.yaml (the demo detector's, as LazyConfig.save writes it) with `extra`
    added under `model`, where predict and export would build it."""
    path = tmp_path / "config.yaml"
    LazyConfig.save(LazyConfig.load(LAZY_DET_CONFIG), str(path))
    saved = yaml.load(path.read_text(), Loader=yaml.SafeLoader)
    saved["model"]["extra"] = extra
    path.write_text(yaml.safe_dump(saved))
    return str(path)


@pytest.mark.parametrize("target", WALKING_TARGETS)
def test_a_saved_lazy_config_target_is_judged_by_what_it_resolves_to(tmp_path, target):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    config = saved_lazy_config(tmp_path, {"_target_": target, "path": str(victim)})
    with pytest.raises(UnsafeConfigError, match=r"at model\.extra: it resolves to"):
        load_any_config(config)
    assert victim.read_text() == "keep me"


def test_a_resolver_interpolation_cannot_build_a_target(tmp_path):
    config = saved_lazy_config(tmp_path, "${oc.create:'{_target_: os.system, command: ls}'}")
    with pytest.raises(UnsafeConfigError, match=r"model\.extra: an interpolation that calls a"):
        load_any_config(config)


def test_predict_and_export_refuse_the_file_before_building_anything(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    config = saved_lazy_config(
        tmp_path, {"_target_": "detectron2.utils.file_io.PathManager.rm", "path": str(victim)}
    )
    for tool, extra in (("predict", ["--input", str(victim)]), ("export_model", [])):
        out = call_tool(tool, "--config-file", config, *extra, "--output", str(tmp_path / tool))
        assert out.returncode != 0 and "resolves to" in out.stderr, out.stderr[-2000:]
        assert victim.read_text() == "keep me"


def test_a_saved_shipped_lazy_config_loads_as_data_and_builds(tmp_path):
    """LazyConfig.save writes Detectron2's ShapeSpec objects as python tags: they read back as
    the lazy calls that build them; every target is bound to an allowed object."""
    from detectron2.layers import ShapeSpec

    path = str(tmp_path / "config.yaml")
    lazy = LazyConfig.load(LAZY_MASK_CONFIG)
    lazy.model.roi_heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
    LazyConfig.save(lazy, path)  # as the model zoo's common configs save
    assert "!!python/object" in open(path).read()
    cfg = load_any_config(path, ["model.backbone.bottom_up.channels=8"])
    assert not isinstance(cfg.model._target_, str)  # bound to the object that was checked
    assert type(instantiate(cfg.model)).__name__ == "GeneralizedRCNN"


def test_allowed_targets_cover_every_shipped_lazy_config():
    from randwire_d2.trust.targets import ALLOWED_TARGETS, resolve_imported

    listed = {id(resolve_imported(n)) for n in ALLOWED_TARGETS}
    for name in ("faster_rcnn_randwire_c109_fpn_1x.py", "retinanet_randwire_c109_fpn_1x.py"):
        cfg = LazyConfig.load(os.path.join(LAZY, name))
        stack = [cfg]
        while stack:
            node = stack.pop()
            if hasattr(node, "items"):
                target = node.get("_target_")
                if target is not None:
                    obj = resolve_imported(target) if isinstance(target, str) else target
                    assert id(getattr(obj, "__func__", obj)) in listed, (name, target)
                stack.extend(v for k, v in node.items() if k != "_target_")
            elif isinstance(node, (list, tuple)) or type(node).__name__ == "ListConfig":
                stack.extend(node)


# ---- yaml: no aliases, no tags --------------------------------------------------------------


def alias_bomb(depth):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, depth):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_a_yacs_yaml_whose_aliases_expand_past_a_config_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("MODEL:\n  PIXEL_MEAN: &m [1.0, 2.0, 3.0]\n  PIXEL_STD: *m\n")
    assert list(load_config(str(path)).MODEL.PIXEL_STD) == [1.0, 2.0, 3.0]  # yacs' own dumps
    path.write_text("_BASE_: base.yaml\n")
    bomb = "".join("  " + line + "\n" for line in alias_bomb(6).splitlines())
    (tmp_path / "base.yaml").write_text("PRETRAIN:\n" + bomb)
    assert os.path.getsize(tmp_path / "base.yaml") < 1024
    with pytest.raises(UnsafeConfigError, match=r"base\.yaml, line 7: its aliases expand it to"):
        load_config(str(path))


def test_a_checkpoint_config_is_read_as_data(tmp_path):
    from randwire_d2.run_settings import RunConfig

    saved = {"cfg": "MODEL:\n" + "".join("  " + line + "\n" for line in alias_bomb(6).splitlines())}
    with pytest.raises(UnsafeConfigError, match="the checkpoint, line 7: its aliases expand"):
        RunConfig(tiny_cfg()).saved_flat(saved)
    saved = {"cfg": "MODEL:\n  X: !!python/name:os.system ''\n"}
    with pytest.raises(UnsafeConfigError, match="holds the tag tag:yaml.org,2002:python/name"):
        RunConfig(tiny_cfg()).saved_flat(saved)


def test_a_lazy_config_yaml_whose_aliases_expand_past_a_config_is_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model: {}\ntrain: {}\n" + alias_bomb(6))
    with pytest.raises(UnsafeConfigError, match="its aliases expand it to more than 100000"):
        load_any_config(str(path))


def test_yaml_tags_other_than_plain_scalars_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("SOLVER:\n  BASE_LR: !!float 1e-3\n")
    assert load_config(str(path)).SOLVER.BASE_LR == 1e-3
    path.write_text("SOLVER:\n  BASE_LR: !!binary AAAA\n")
    with pytest.raises(UnsafeConfigError, match=r"c\.yaml, line 2 holds the tag .*binary"):
        load_config(str(path))


def test_a_base_chain_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("_BASE_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_BASE_: a.yaml\n")
    with pytest.raises(ValueError, match="_BASE_ chain .* is a cycle"):
        load_config(str(tmp_path / "a.yaml"))


# ---- files: regular only, bounded ------------------------------------------------------------


def test_a_fifo_or_a_device_is_refused_without_blocking(tmp_path):
    from randwire_d2.data.imagefolder import read_rgb_image
    from randwire_d2.predict import read_video

    fifo = str(tmp_path / "wiring.fifo")
    os.mkfifo(fifo)
    with deadline():
        for path, kind in ((fifo, r"a FIFO \(named pipe\)"), ("/dev/zero", "a character device")):
            with pytest.raises(FileTrustError, match=f"is {kind}, not a regular file"):
                NetworkWiring.load(path)
            with pytest.raises(FileTrustError, match=f"WIRING_FILE='{path}' is {kind}"):
                build_model(tiny_cfg("MODEL.RANDWIRE.WIRING_FILE", path))
            with pytest.raises(FileTrustError, match=f"MODEL.WEIGHTS='{path}' is {kind}"):
                read_checkpoint(path)
            with pytest.raises(FileTrustError, match=f"is {kind}"):
                load_config(path)
            with pytest.raises(ValueError, match=f"is {kind}"):  # predict's images, training's
                read_rgb_image(path)
            with pytest.raises(FileTrustError, match=f"--video-input='{path}' is {kind}"):
                read_video(path)


def test_a_file_larger_than_its_kind_is_refused(tmp_path, monkeypatch):
    from randwire_d2.trust import files, read_bounded

    path = tmp_path / "w.json"
    path.write_text("x" * 100)
    monkeypatch.setitem(files.LIMITS, "wiring", 99)
    with pytest.raises(FileTrustError, match=r"w\.json' is 100 bytes, more than the 99 bytes"):
        read_bounded(path, "WIRING_FILE", "wiring")


# ---- .pkl: numeric arrays only, sizes from the file's bytes ----------------------------------


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


# ---- .pth: tensors within their storage, storages within the file ----------------------------


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


@pytest.mark.parametrize("value", ["abc", 3, [1.0, 2.0]], ids=["str", "int", "list"])
def test_a_pkl_weight_that_is_not_an_array_is_named_with_its_file(tmp_path, value):
    path = write_pkl(tmp_path, value)
    model = build_model(tiny_cfg())
    with pytest.raises(CheckpointError, match=rf"w\.pkl holds 'w' as a {type(value).__name__}"):
        build_checkpointer(model, "").load(path, checkpointables=[])


def test_a_lazy_runs_saved_config_is_evaluated_by_the_lazy_tool_and_named_by_the_yaml_one(
    tmp_path,
):
    from randwire_d2.config import load_lazy_config

    path = str(tmp_path / "config.yaml")
    LazyConfig.save(LazyConfig.load(LAZY_DET_CONFIG), path)
    cfg = load_lazy_config(path, ["train.device=cpu"])  # what lazyconfig_train_net reads
    assert cfg.train.device == "cpu" and not isinstance(cfg.model._target_, str)
    with pytest.raises(
        ValueError, match=r"is a lazy run's saved LazyConfig .*lazyconfig_train_net"
    ):
        load_config(path)  # train_net / train_cls
    out = call_tool("train_net", "--config-file", path, "--eval-only")
    assert out.returncode != 0 and "tools/lazyconfig_train_net.py" in out.stderr
    with pytest.raises(ValueError, match=r"is a yaml config, not a LazyConfig"):
        load_lazy_config(DET_CONFIG)


def test_a_video_declaring_frames_beyond_the_pixel_limit_is_refused_before_decoding(
    tmp_path, monkeypatch
):
    import cv2

    from randwire_d2 import predict

    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    for _ in range(2):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    frames, _ = predict.read_video(video)
    assert next(frames).shape == (48, 64, 3)
    monkeypatch.setattr(predict, "MAX_IMAGE_PIXELS", 64 * 48 - 1)
    with pytest.raises(ValueError, match=r"declares 64x48 frames, more than MAX_IMAGE_PIXELS"):
        predict.read_video(video)


def test_a_wiring_text_beyond_the_wiring_bound_is_refused(monkeypatch):
    from randwire_d2.trust import files

    monkeypatch.setitem(files.LIMITS, "wiring", 10)
    with pytest.raises(ValueError, match="checkpoint: 11 characters, more than a wiring file"):
        NetworkWiring.from_json('{"a": "bc"}', "checkpoint")


@pytest.mark.parametrize("content", ["../../elsewhere.pth", "/etc/passwd", ""])
def test_last_checkpoint_names_a_file_in_output_dir(tmp_path, content):
    (tmp_path / "last_checkpoint").write_text(content)
    checkpointer = build_checkpointer(build_model(tiny_cfg()), str(tmp_path))
    with pytest.raises(CheckpointError, match="last_checkpoint names .*expected the file name"):
        checkpointer.get_checkpoint_file()


def test_last_checkpoint_that_is_a_fifo_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "last_checkpoint")
    checkpointer = build_checkpointer(build_model(tiny_cfg()), str(tmp_path))
    with deadline():
        with pytest.raises(FileTrustError, match=r"last_checkpoint=.* is a FIFO"):
            checkpointer.get_checkpoint_file()


def test_a_checkpoint_iteration_that_is_not_a_count_is_refused(tmp_path):
    model = build_model(tiny_cfg())
    path = str(tmp_path / "model_0000009.pth")
    build_checkpointer(model, str(tmp_path)).save("model_0000009")
    data = torch.load(path, weights_only=True)
    data["trainer"] = {"iteration": "9; rm -rf"}
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"holds trainer\.iteration='9; rm -rf': expected an"):
        build_checkpointer(model, "").load(path, checkpointables=[])


def test_what_a_lazy_target_is_decides_not_its_name():
    from detectron2.config import LazyCall as L
    from omegaconf import OmegaConf

    from randwire_d2.engine.lazy import _resumable
    from randwire_d2.inference_setup import is_classifier
    from randwire_d2.modeling.classifier import RandWireClassifier as Ours

    class RandWireClassifier:  # another class of the same name
        pass

    def build_detection_train_loader(**kwargs):  # another function of the same name
        pass

    def lazy(target):
        return OmegaConf.create({"model": L(target)(), "train": {}}, flags={"allow_objects": True})

    assert is_classifier(lazy(Ours)) and not is_classifier(lazy(RandWireClassifier))
    assert not _resumable(L(build_detection_train_loader)(dataset=None))


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


def test_a_saved_lazy_config_declaring_a_huge_model_is_refused_before_allocating(tmp_path):
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(LazyConfig.load(LAZY_DET_CONFIG), path)
    with pytest.raises(UnsafeConfigError, match=r"its model declares [\d,]+ parameter and buffer"):
        load_any_config(path, ["model.roi_heads.box_head.fc_dims=[100000,100000]"])
