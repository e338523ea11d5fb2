"""randwire_d2/limits.py: sizes that config keys and tools' flags set, refused past their limit."""

import ast

import pytest
from common import (
    CLS_CONFIG,
    DET_CONFIG,
    LAZY_DET_CONFIG,
    TINY_EXPORT_CLS,
    TINY_LAZY,
    call_tool,
    load_tool,
    write_image,
)

from randwire_d2 import inference_setup, limits
from randwire_d2.config import load_config, load_lazy_config
from randwire_d2.modeling import stage_specs


@pytest.mark.parametrize(
    "flag, value, limit",
    [
        ("--input-size", "100000", "1..8192 (limits.MAX_IMAGE_SIDE)"),
        ("--input-size", "-5", "1..8192 (limits.MAX_IMAGE_SIDE)"),
        ("--batch-size", "20000", "1..1024 (limits.MAX_EXPORT_BATCH)"),
        ("--num-samples", "100000000", "1..64 (limits.MAX_EXPORT_SAMPLES)"),
    ],
)
def test_export_size_flags_out_of_range_are_argparse_errors(flag, value, limit, capsys):
    parser = load_tool("export_model").build_parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--config-file", CLS_CONFIG, flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: {value} is invalid: expected {limit}" in capsys.readouterr().err


def test_export_refuses_sample_images_beyond_the_pixel_limit_before_building(tmp_path):
    out = tmp_path / "export"
    args = ["--config-file", CLS_CONFIG, "--random-weights", "--output", out]
    args += ["--batch-size", "1024", "--input-size", "8192", *TINY_EXPORT_CLS]
    proc = call_tool("export_model", *args, check=False)
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --num-samples 2 x --batch-size 1024 x --input-size 8192^2 is 137,438,953,472 "
        "pixels of sample images: at most 67,108,864 (limits.MAX_EXPORT_PIXELS); give a smaller "
        "batch, size or fewer samples"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("MODEL.RANDWIRE.CHANNELS", "10000000", "an integer in [2, 4096] (limits.MAX_CHANNELS)"),
        ("MODEL.RANDWIRE.CHANNELS", "1", "an integer in [2, 4096] (limits.MAX_CHANNELS)"),
        ("INPUT.MIN_SIZE_TEST", "60000", "an integer in [0, 8192] (limits.MAX_IMAGE_SIDE)"),
        ("INPUT.MAX_SIZE_TEST", "60000", "an integer in [0, 8192] (limits.MAX_IMAGE_SIDE)"),
        ("INPUT.MIN_SIZE_TRAIN", "(800, 60000)", "integers in [0, 8192] (limits.MAX_IMAGE_SIDE)"),
        ("INPUT.MAX_SIZE_TRAIN", "-1", "an integer in [0, 8192] (limits.MAX_IMAGE_SIDE)"),
        ("PRETRAIN.TEST_CROPS", "[224, 60000]", "integers in [1, 8192] (limits.MAX_IMAGE_SIDE)"),
        ("PRETRAIN.TRAIN_CROP", "60000", "an integer in [1, 8192] (limits.MAX_IMAGE_SIDE)"),
        (
            "SOLVER.IMS_PER_BATCH",
            "100000000",
            "an integer in [1, 65536] (limits.MAX_IMS_PER_BATCH)",
        ),
        (
            "MODEL.CLASSIFIER.NUM_CLASSES",
            "1000000000",
            "an integer in [1, 100000] (limits.MAX_CLASSES)",
        ),
        ("TEST.AUG.MIN_SIZES", "(800, 60000)", "integers in [0, 8192] (limits.MAX_IMAGE_SIDE)"),
        ("MODEL.ROI_BOX_HEAD.FC_DIM", "10000000", "an integer in [1, 4096] (limits.MAX_CHANNELS)"),
        (
            "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
            "100000",
            "an integer in [1, 64] (limits.MAX_POOLER_RESOLUTION)",
        ),
        ("MODEL.ROI_BOX_HEAD.NUM_FC", "100000", "an integer in [0, 64] (limits.MAX_HEAD_LAYERS)"),
        ("DATALOADER.NUM_WORKERS", "100000", "an integer in [0, 256] (limits.MAX_WORKERS)"),
    ],
)
def test_config_sizes_beyond_their_limit_are_refused_when_loaded(key, value, expected):
    with pytest.raises(ValueError) as e:
        load_config(CLS_CONFIG, [key, value])
    assert str(e.value) == f"{key}={ast.literal_eval(value)!r} is invalid: expected {expected}"


def test_channels_are_bounded_for_both_config_systems():
    """The trunk checks C itself: a LazyConfig's model.backbone.bottom_up.channels reaches it."""
    with pytest.raises(ValueError, match=r"CHANNELS=10000000 is invalid: expected an integer in "):
        stage_specs("small", 32, 10**7)
    assert stage_specs("regular", 32, limits.MAX_CHANNELS)[-1][2] == 8 * limits.MAX_CHANNELS


def test_predict_refuses_a_test_size_beyond_the_limit_in_one_line(tmp_path):
    image = write_image(tmp_path / "a.jpg")
    for config, key, value in [
        (CLS_CONFIG, "PRETRAIN.TEST_CROPS", "[60000]"),
        (DET_CONFIG, "INPUT.MIN_SIZE_TEST", "60000"),
    ]:
        proc = call_tool(
            "predict", "--config-file", config, "--input", image, key, value, check=False
        )
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {key}={value} is invalid")


def test_a_lazy_test_resize_beyond_the_limit_is_refused():
    key = "dataloader.test.mapper.augmentations.0.short_edge_length"
    cfg = load_lazy_config(LAZY_DET_CONFIG, TINY_LAZY + [f"{key}=60000"])
    with pytest.raises(ValueError) as e:
        inference_setup.test_augmentations(cfg)
    assert str(e.value) == (
        f"{key}=60000 is invalid: expected an integer in [0, 8192] (limits.MAX_IMAGE_SIDE)"
    )
    assert (
        len(inference_setup.test_augmentations(load_lazy_config(LAZY_DET_CONFIG, TINY_LAZY)).augs)
        == 1
    )


def test_analyze_model_input_size_is_bounded():
    proc = call_tool("analyze_model", "--config-file", CLS_CONFIG, "--input-size", "100000")
    assert proc.returncode == 2
    expected = "argument --input-size: 100000 is invalid: expected 1..8192 (limits.MAX_IMAGE_SIDE)"
    assert expected in proc.stderr


@pytest.mark.parametrize(
    "tool, args, expected",
    [
        ("predict", ["--input", "x.jpg", "--topk", "1000000000"], "1..100000 (limits.MAX_CLASSES)"),
        ("compare_generators", ["--seeds", "1000000000"], "1..10000 (MAX_SEEDS)"),
        ("compare_generators", ["--num-nodes", "1000000000"], "2..2048 (MAX_NODES)"),
        ("sweep", ["--jobs", "1000000"], "1..256 (MAX_JOBS)"),
    ],
)
def test_tool_count_flags_out_of_range_are_argparse_errors(tool, args, expected):
    proc = call_tool(tool, "--config-file", CLS_CONFIG, *args, check=False)
    assert proc.returncode == 2 and f"{args[-1]} is invalid: expected {expected}" in proc.stderr


def test_num_gpus_beyond_this_machine_is_refused_before_any_process_starts():
    from randwire_d2.engine.launch import check_process_count

    check_process_count(1)
    with pytest.raises(SystemExit, match=r"--num-gpus 100000 is invalid: this machine has "):
        check_process_count(100000)
    with pytest.raises(SystemExit, match=r"--num-gpus 0 is invalid"):
        check_process_count(0)
