"""tools/export_model.py on a user's own COCO dataset (--dataset, as tools/train_net.py takes it)
and on LazyConfigs: a `.py` file and the config.yaml a lazy run saves (key=value overrides)."""

import json

import pytest
from common import DET_CONFIG
from common import LAZY_DET_CONFIG as LAZY_DEMO
from common import TINY_1CLASS, load_tool

export_model = load_tool("export_model")

FAST = ["--format", "torchscript", "--num-samples", "1"]

pytestmark = pytest.mark.usefixtures("one_thread", "forget_datasets")


def exported(out) -> dict:
    report = json.loads((out / "export_report.json").read_text())
    checks = report["torchscript"]["checks"]
    assert (out / "model.ts").is_file() and checks and all(c["ok"] for c in checks.values())
    return report


@pytest.mark.slow
def test_export_traces_on_the_dataset_given_with_dataset(user_data, tmp_path):
    """The run's config names its own dataset: without --dataset (and --sample-image) the error
    names the dataset and the flag; with --dataset the detector is traced on its images."""
    argv = ["--config-file", DET_CONFIG, "--random-weights", "--output", str(tmp_path)] + FAST
    argv += TINY_1CLASS + ["DATASETS.TEST", "('trees_val',)"]
    with pytest.raises(
        SystemExit,
        match=r"DATASETS\.TEST names dataset 'trees_val', which is not registered: pass "
        r"--dataset trees_val JSON IMAGE_DIR .*, or --sample-image IMAGE",
    ):
        export_model.main(argv)
    dataset = ["--dataset", "trees_val", user_data["json"], user_data["images"]]
    export_model.main(argv[:2] + dataset + argv[2:])
    exported(tmp_path)


@pytest.mark.slow
def test_lazy_config_and_its_saved_yaml_export(lazy_run, user_data, tmp_path):
    """A LazyConfig .py (traced on --sample-image) and the config.yaml its run saved (traced on
    the dataset of dataloader.test, registered with --dataset), with train.init_checkpoint."""
    opts, saved, weights = lazy_run
    checkpoint = f"train.init_checkpoint={weights}"
    py_out, yaml_out = tmp_path / "py", tmp_path / "yaml"
    export_model.main(
        ["--config-file", LAZY_DEMO, "--sample-image", user_data["other"], "--output", str(py_out)]
        + FAST
        + opts
        + [checkpoint]
    )
    exported(py_out)
    export_model.main(
        ["--config-file", saved, "--dataset", "trees_val", user_data["json"], user_data["images"]]
        + ["--output", str(yaml_out)]
        + FAST
        + [checkpoint]
    )
    exported(yaml_out)
    with pytest.raises(SystemExit, match=r"train\.init_checkpoint is empty: .*--random-weights"):
        export_model.main(["--config-file", saved, "--output", str(tmp_path / "x")] + FAST)
