"""randwire_d2/trust/yaml_safe.py: yaml configs parsed as data (no tags, bounded aliases)."""

import os

import pytest
from common import REPO, tiny_cfg

from randwire_d2.config import UnsafeConfigError, load_config
from randwire_d2.engine import argument_parser
from randwire_d2.inference_setup import load_any_config


def test_a_yaml_config_with_a_python_tag_is_refused_unless_allowed(tmp_path):
    marker = tmp_path / "yaml_payload_ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(
        f"_BASE_: {os.path.join(REPO, 'configs/demo/faster_rcnn_randwire_demo.yaml')}\n"
        "MODEL:\n  RANDWIRE:\n    GENERATOR_PARAMS:\n"
        f"      X: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    leaf = tmp_path / "leaf.yaml"  # an unsafe file anywhere in the _BASE_ chain
    leaf.write_text(f"_BASE_: {evil}\nSEED: 3\n")
    for config in (evil, leaf):
        with pytest.raises(UnsafeConfigError, match=r"evil\.yaml.*line 5.*--allow-unsafe-config"):
            load_config(str(config))
        assert not marker.exists()
    args = argument_parser().parse_args(["--config-file", str(evil), "--allow-unsafe-config"])
    assert args.allow_unsafe_config
    load_config(str(evil), allow_unsafe=True)  # the opt-in runs it, as Detectron2 would
    assert marker.exists()


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
