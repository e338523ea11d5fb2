"""randwire_d2/trust/targets.py: a LazyConfig's _target_s judged by what they resolve to."""

import os

import pytest
import yaml
from common import LAZY, LAZY_DET_CONFIG, LAZY_MASK_CONFIG, call_tool
from detectron2.config import LazyConfig, instantiate

from randwire_d2.config import UnsafeConfigError
from randwire_d2.inference_setup import load_any_config

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


def test_a_saved_lazy_config_builds_only_known_targets(tmp_path):
    """A lazy run's saved config.yaml is data: a `_target_` outside the model, data and solver
    packages (here os.system) is refused before anything is built, unless
    --allow-unsafe-config; predict and export load such files."""
    import yaml

    from randwire_d2.config import UnsafeConfigError
    from randwire_d2.inference_setup import load_any_config

    marker = tmp_path / "ran"
    config = tmp_path / "config.yaml"
    saved = {
        "model": {"_target_": "os.system", "command": f"touch {marker}"},
        "train": {"init_checkpoint": "", "device": "cpu"},
        "dataloader": {"test": {"dataset": {"names": "x"}}},
    }
    config.write_text(yaml.safe_dump(saved))
    with pytest.raises(UnsafeConfigError, match=r"_target_ 'os.system' at model: .*--allow-unsafe"):
        load_any_config(str(config))
    cfg = load_any_config(str(config), allow_unsafe=True)  # loaded, not built
    assert cfg.model._target_ == "os.system" and not marker.exists()


def test_a_saved_lazy_config_declaring_a_huge_model_is_refused_before_allocating(tmp_path):
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(LazyConfig.load(LAZY_DET_CONFIG), path)
    with pytest.raises(UnsafeConfigError, match=r"its model declares [\d,]+ parameter and buffer"):
        load_any_config(path, ["model.roi_heads.box_head.fc_dims=[100000,100000]"])


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
