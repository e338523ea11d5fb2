"""randwire_d2/utils/quiet_warnings.py: known third-party notes ignored precisely, nothing else."""

import importlib
import logging
import os
import subprocess
import sys
import warnings

import pytest
import torch

import randwire_d2
from randwire_d2.utils.quiet_warnings import (
    SHOW_ALL_WARNINGS_ENV,
    quiet_export_warnings,
    quiet_third_party_warnings,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_CLS = os.path.join(REPO, "tools", "train_cls.py")
JIT_NOTE = "`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`."
# What the notes look like on stderr: warnings' "Category: message", torch's log lines.
THIRD_PARTY_LINES = ("torch.jit.script", "meshgrid", "is_fx_tracing", "No CUDA runtime")


def warn_from(module, message, category):
    """Issue a warning attributed to `module` (what `module=` filters match)."""
    warnings.warn_explicit(message, category, module.replace(".", "/") + ".py", 1, module=module)


def shown(emit, env_value=None):
    """The messages of the warnings `emit()` shows after quiet_third_party_warnings(), with
    RANDWIRE_SHOW_ALL_WARNINGS set to `env_value` (None: unset)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = os.environ.pop(SHOW_ALL_WARNINGS_ENV, None)
        if env_value is not None:
            os.environ[SHOW_ALL_WARNINGS_ENV] = env_value
        try:
            quiet_third_party_warnings(logs=False)
        finally:
            os.environ.pop(SHOW_ALL_WARNINGS_ENV, None)
            if old is not None:
                os.environ[SHOW_ALL_WARNINGS_ENV] = old
        emit()
    return [str(w.message) for w in caught]


def add_one(x: torch.Tensor) -> torch.Tensor:
    return x + 1


def emit_notes():
    torch.jit.script(add_one)  # the real call: its note is torch.jit._script's
    warn_from("torch.functional", "torch.meshgrid: in an upcoming release, it will be", UserWarning)
    # The same texts attributed to randwire_d2, and other notes of torch's, still show.
    warn_from("randwire_d2.modeling.ops", JIT_NOTE, FutureWarning)
    warn_from("torch.functional", "torch.foo is deprecated", UserWarning)
    warn_from("torch.jit._script", JIT_NOTE, DeprecationWarning)
    # What a LazyConfig calling model_zoo.get_config prints, and the same from randwire_d2.
    warn_from("detectron2.config.lazy", PKG_NOTE, UserWarning)
    warn_from("randwire_d2.config", PKG_NOTE, UserWarning)


PKG_NOTE = "pkg_resources is deprecated as an API. See https://setuptools.pypa.io/en/latest/"


def test_only_the_known_notes_are_ignored():
    assert shown(emit_notes) == [JIT_NOTE, "torch.foo is deprecated", JIT_NOTE, PKG_NOTE]


@pytest.mark.parametrize("value", ["1", "yes"])
def test_environment_variable_shows_everything(value):
    assert len(shown(emit_notes, value)) == 7


def test_log_records_of_torch_are_dropped_precisely(caplog):
    quiet_third_party_warnings()
    quiet_third_party_warnings()  # idempotent: one filter per logger
    fx = logging.getLogger("torch.fx._symbolic_trace")
    assert len(fx.filters) == 1
    with caplog.at_level(logging.WARNING):
        fx.warning("is_fx_tracing will return true for both fx.symbolic_trace and torch.export.")
        fx.warning("another note of torch.fx")
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, ...")
        logging.getLogger("randwire_d2.engine.trainer").warning("is_fx_tracing (ours)")
    assert [r.getMessage() for r in caplog.records] == [
        "another note of torch.fx",
        "is_fx_tracing (ours)",
    ]


# A tiny pretraining run of tools/train_cls.py (as tests/test_train_cls.py's), run through
# runpy so that a warning of randwire_d2's own can follow it in the same process.
RUN_TOOL = """
import runpy, sys, warnings
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
warnings.warn_explicit({note!r}, FutureWarning, "randwire_d2/engine/trainer.py", 1,
                       module="randwire_d2.engine.trainer")
"""


@pytest.mark.slow
def test_training_run_shows_only_the_project_warnings(tmp_path, one_thread):
    from randwire_d2.data.cls_demo import generate_classification_demo

    root = generate_classification_demo(str(tmp_path / "data"), {"train": 4, "val": 1}, 32)
    # fmt: off
    opts = [
        "MODEL.DEVICE", "cpu", "MODEL.RANDWIRE.NUM_NODES", "6", "MODEL.RANDWIRE.CHANNELS", "8",
        "MODEL.CLASSIFIER.HEAD_CHANNELS", "32", "SOLVER.IMS_PER_BATCH", "16",
        "SOLVER.AMP.ENABLED", "True",  # on CPU: randwire_d2 logs a warning
        "PRETRAIN.DATA_ROOT", root, "PRETRAIN.EPOCHS", "1", "PRETRAIN.WARMUP_EPOCHS", "1.0",
        "PRETRAIN.TRAIN_CROP", "32", "PRETRAIN.TEST_CROPS", "[32]",
        "PRETRAIN.EVAL_PERIOD_EPOCHS", "0.0", "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(tmp_path / "out"),
    ]
    # fmt: on
    env = {k: v for k, v in os.environ.items() if k != SHOW_ALL_WARNINGS_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", RUN_TOOL.format(note=JIT_NOTE), TRAIN_CLS]
        + ["--config-file", os.path.join(REPO, "configs", "demo", "randwire_cls_demo.yaml")]
        + opts,
        cwd=REPO,
        env=dict(env, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SOLVER.AMP.ENABLED needs CUDA" in proc.stdout + proc.stderr  # randwire_d2's log
    own = f"randwire_d2/engine/trainer.py:1: FutureWarning: {JIT_NOTE}"
    assert own in proc.stderr  # randwire_d2's warning, with the very text of torch's note
    rest = proc.stderr.replace(own, "")
    assert not [line for line in THIRD_PARTY_LINES if line in rest], proc.stderr[-3000:]


def test_import_leaves_the_filters_of_the_importing_program():
    before = list(warnings.filters)
    importlib.reload(randwire_d2)  # runs randwire_d2/__init__.py again
    assert warnings.filters == before


@pytest.mark.slow
def test_environment_variable_brings_import_notes_back():
    """The notes Detectron2's imports print, quiet in every tool run above, show again."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **{SHOW_ALL_WARNINGS_ENV: "1"})
    loud = subprocess.run(
        [sys.executable, "-c", "import randwire_d2"], env=env, capture_output=True, text=True
    )
    assert loud.returncode == 0, loud.stderr
    assert f"FutureWarning: {JIT_NOTE}" in loud.stderr


TRACER_NOTE = "Converting a tensor to a Python boolean might cause the trace to be incorrect."
TRACE_NOTE = "`torch.jit.trace` is deprecated. Please switch to `torch.compile` or `torch.export`."


def emit_export_notes():
    warn_from("detectron2.structures.boxes", TRACER_NOTE, torch.jit.TracerWarning)
    warn_from("torch", TRACER_NOTE, torch.jit.TracerWarning)
    warn_from("torch.jit._trace", TRACE_NOTE, FutureWarning)
    warn_from("torch.functional", "torch.meshgrid: in an upcoming release, it will be", UserWarning)
    # The tracer on randwire_d2's own code, and another note of the tracer's, still show.
    warn_from("randwire_d2.export", TRACER_NOTE, torch.jit.TracerWarning)
    warn_from("detectron2.structures.boxes", "Output nr 1. of the traced function", Warning)


def test_export_notes_are_ignored_only_during_an_export(monkeypatch):
    fx = logging.getLogger("torch.fx._symbolic_trace")
    monkeypatch.setattr(fx, "filters", [])
    monkeypatch.delenv(SHOW_ALL_WARNINGS_ENV, raising=False)
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_export_warnings() as quiet:
            emit_export_notes()
            assert len(fx.filters) == 1
        assert quiet and [str(w.message) for w in caught] == [
            TRACER_NOTE,
            "Output nr 1. of the traced function",
        ]
        caught.clear()
        emit_export_notes()  # after the export: the filters of before
        assert len(caught) == 6 and fx.filters == []
        monkeypatch.setenv(SHOW_ALL_WARNINGS_ENV, "1")
        with quiet_export_warnings() as quiet:
            emit_export_notes()
        assert not quiet and len(caught) == 12 and fx.filters == []
    assert warnings.filters == before


@pytest.mark.slow
def test_throughput_help_shows_no_third_party_notes():
    """benchmarks/speed.py imports Detectron2 through randwire_d2 (quiet imports)."""
    env = {k: v for k, v in os.environ.items() if k != SHOW_ALL_WARNINGS_ENV}
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "speed.py"), "--help"],
        cwd=REPO,
        env=dict(env, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-3000:]
    assert proc.stderr == ""
