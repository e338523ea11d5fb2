"""Run keys that only a built model or an evaluation would use (execution, compile, the best
checkpoint's metric and mode) are refused at setup by every training tool, before OUTPUT_DIR,
config.yaml or log.txt is written (engine.run_setup.check_run_keys)."""

import os

import pytest
from common import CLS_CONFIG, DET_CONFIG, LAZY_DET_CONFIG, TINY_LAZY, call_tool
from common import tiny_cfg as tiny_detector_cfg
from common import tiny_cls_cfg, tiny_opts

from randwire_d2.engine import hooks
from randwire_d2.modeling import kernels

pytestmark = pytest.mark.usefixtures("one_thread")

EXECUTIONS = "['fast', 'reference', 'triton', 'eager']"
# (KEY VALUE overrides, the message), the same for the classifier and the detector.
YAML_REFUSALS = [
    (
        ["MODEL.RANDWIRE.EXECUTION", "fused"],
        f"MODEL.RANDWIRE.EXECUTION='fused' is unknown: expected one of {EXECUTIONS}",
    ),
    (
        ["MODEL.RANDWIRE.COMPILE", "fastest"],
        "MODEL.RANDWIRE.COMPILE='fastest' is unknown: expected one of ['', 'node', 'stage']",
    ),
    (
        ["MODEL.RANDWIRE.COMPILE", "node", "MODEL.RANDWIRE.MEMORY_EFFICIENT", "True"],
        "MODEL.RANDWIRE.COMPILE='node' runs the wired stages through torch.compile, which "
        "decides what to store for backward, so MEMORY_EFFICIENT=True would not apply",
    ),
    (
        ["TEST.BEST_CHECKPOINT_MODE", "maximum"],
        "TEST.BEST_CHECKPOINT_MODE='maximum' is invalid: expected one of ['max', 'min']",
    ),
    (
        ["MODEL.RANDWIRE.EXECUTION", "triton"],
        "MODEL.RANDWIRE.EXECUTION='triton' cannot run on cpu: on CPU the kernels run only "
        "under Triton's interpreter: set TRITON_INTERPRET=1",
    ),
]


def refused(tool, config, args, message, output_dir):
    """tools/<tool>.py --config-file config ARGS fails with `message`, having written nothing."""
    assert_refused_before_writing(
        call_tool(tool, "--config-file", config, *args), message, output_dir
    )


def assert_refused_before_writing(proc, message, output_dir):
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-3000:]
    written = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    assert not {"config.yaml", "log.txt"} & set(written), written


@pytest.fixture
def no_interpreter(monkeypatch):
    """As a process started without TRITON_INTERPRET=1: the kernels cannot run on CPU."""
    monkeypatch.setattr(kernels, "INTERPRET", False)


@pytest.mark.parametrize(
    "opts,message", YAML_REFUSALS, ids=lambda x: "_".join(x) if isinstance(x, list) else None
)
def test_train_cls_refuses_run_keys_before_writing(
    cls_data_root, tmp_path, no_interpreter, opts, message
):
    out = str(tmp_path / "run")
    refused("train_cls", CLS_CONFIG, tiny_opts(cls_data_root, out) + opts, message, out)


def test_train_cls_refuses_a_metric_the_classifier_does_not_report(cls_data_root, tmp_path):
    """Defect 10: bbox/AP on a classifier was refused only at the first evaluation."""
    out = str(tmp_path / "run")
    args = tiny_opts(cls_data_root, out, **{"PRETRAIN.TEST_CROPS": [28, 32]})
    proc = call_tool(
        "train_cls", "--config-file", CLS_CONFIG, *args, "TEST.BEST_CHECKPOINT_METRIC", "bbox/AP"
    )
    message = (
        "TEST.BEST_CHECKPOINT_METRIC='bbox/AP' is not a metric this run's evaluation reports: "
        "expected '' (off), 'auto' or one of ['val_28/top1', 'val_32/top1']"
    )
    assert_refused_before_writing(proc, message, out)


def _det_args(tiny_data, out):
    folder, paths = tiny_data
    data = [
        a
        for s in ("train", "val")
        for a in ("--dataset", f"det_test_{s}", paths[s], os.path.join(folder, s))
    ]
    return data + [
        *("DATASETS.TRAIN", '("det_test_train",)', "DATASETS.TEST", '("det_test_val",)'),
        *("DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", out),
    ]


@pytest.mark.parametrize(
    "opts,message",
    YAML_REFUSALS
    + [
        (
            ["TEST.BEST_CHECKPOINT_METRIC", "segm/AP"],
            "TEST.BEST_CHECKPOINT_METRIC='segm/AP' is not a metric this run's evaluation "
            "reports: expected '' (off), 'auto' or one of ['bbox/AP', 'bbox/AP50',",
        )
    ],
    ids=lambda x: "_".join(x) if isinstance(x, list) else None,
)
def test_train_net_refuses_run_keys_before_writing(
    tiny_data, tmp_path, no_interpreter, opts, message
):
    out = str(tmp_path / "run")
    refused("train_net", DET_CONFIG, _det_args(tiny_data, out) + opts, message, out)


@pytest.mark.parametrize(
    "opts,message",
    [
        (
            ["+model.backbone.bottom_up.execution=fused"],
            "model.backbone.bottom_up.execution='fused' is unknown: expected one of " + EXECUTIONS,
        ),
        (
            ["+model.backbone.bottom_up.execution=triton"],
            "model.backbone.bottom_up.execution='triton' cannot run on cpu",
        ),
        (
            ["train.best_checkpoint.mode=maximum"],
            "train.best_checkpoint.mode='maximum' is invalid: expected one of ['max', 'min']",
        ),
        (
            ["train.best_checkpoint.metric=segm/AP"],
            "train.best_checkpoint.metric='segm/AP' is not a metric this run's evaluation "
            "reports: expected '' (off), 'auto' or one of ['bbox/AP',",
        ),
    ],
    ids=lambda x: "_".join(x) if isinstance(x, list) else None,
)
def test_lazyconfig_train_net_refuses_run_keys_before_writing(
    tiny_data, tmp_path, no_interpreter, opts, message
):
    folder, paths = tiny_data
    out = str(tmp_path / "run")
    data = [
        a
        for s in ("train", "val")
        for a in ("--dataset", f"det_test_{s}", paths[s], os.path.join(folder, s))
    ]
    args = (
        data
        + TINY_LAZY
        + [
            "dataloader.train.dataset.names=det_test_train",
            "dataloader.test.dataset.names=det_test_val",
            "train.device=cpu",
            f"train.output_dir={out}",
        ]
    )
    proc = call_tool("lazyconfig_train_net", "--config-file", LAZY_DET_CONFIG, *args, *opts)
    assert_refused_before_writing(proc, message, out)


def test_best_checkpoint_metrics_of_each_task():
    cfg = tiny_cls_cfg()
    cfg.PRETRAIN.TEST_CROPS = [56, 80]
    assert hooks.evaluation_metrics(cfg) == (["val_56/top1", "val_80/top1"], [])
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = 10
    assert hooks.evaluation_metrics(cfg)[0] == [
        "val_56/top1",
        "val_56/top5",
        "val_80/top1",
        "val_80/top5",
    ]
    det = tiny_detector_cfg("MODEL.MASK_ON", True)
    names, per_category = hooks.evaluation_metrics(det)
    assert {"bbox/AP", "bbox/APl", "segm/AP", "segm/AP50"} <= set(names)
    assert per_category == ["bbox", "segm"]
    for metric in ("", "auto", "segm/AP75", "bbox/AP-tree"):
        det.TEST.BEST_CHECKPOINT_METRIC = metric
        hooks.check_best_checkpoint(det)
    det.DATASETS.TEST = ("a", "b")
    det.TEST.BEST_CHECKPOINT_METRIC = "b/segm/AP"
    hooks.check_best_checkpoint(det)
    det.TEST.BEST_CHECKPOINT_METRIC = "segm/AP"
    with pytest.raises(ValueError, match=r"'segm/AP' is not a metric .*'a/bbox/AP'"):
        hooks.check_best_checkpoint(det)


def test_an_evaluation_builds_its_run_config_once(tmp_path, monkeypatch):
    """tools/train_net.py --eval-only builds the run's RunConfig in setup and passes it down:
    the checks, the set-up and the strict loading read that one."""
    from common import TINY_PREDICT_DET, load_tool, save_random_model

    from randwire_d2.run_settings import RunConfig

    weights = save_random_model(DET_CONFIG, TINY_PREDICT_DET, tmp_path)
    built = []
    init = RunConfig.__init__
    monkeypatch.setattr(RunConfig, "__init__", lambda self, cfg: built.append(1) or init(self, cfg))
    train_net = load_tool("train_net")
    args = train_net.build_parser().parse_args(
        ["--config-file", DET_CONFIG, "--eval-only", *TINY_PREDICT_DET, "MODEL.WEIGHTS", weights]
        + ["OUTPUT_DIR", str(tmp_path / "out"), "TEST.BEST_CHECKPOINT_METRIC", "auto"]
    )
    run = train_net.setup(args)
    model = train_net.Trainer.build_model(run.cfg)
    train_net.load_for_eval(run, model)
    assert len(built) == 1


@pytest.fixture
def run_configs_built(monkeypatch):
    """The RunConfigs constructed while the test runs (RunConfig.__init__ counted)."""
    from randwire_d2.run_settings import RunConfig

    built = []
    init = RunConfig.__init__
    monkeypatch.setattr(RunConfig, "__init__", lambda self, cfg: built.append(1) or init(self, cfg))
    return built


def test_a_yaml_training_builds_its_run_config_once(tiny_data, tmp_path, run_configs_built):
    """tools/train_net.py (training) builds the run's RunConfig in setup and passes it down: the
    checks, the set-up, the trainer, its hooks, the resume and the checkpoints read that one."""
    from common import TINY_DET, as_args

    out = str(tmp_path / "run")
    opts = as_args(TINY_DET) + ["SOLVER.MAX_ITER", "1", "TEST.BEST_CHECKPOINT_METRIC", "auto"]
    call_tool(
        "train_net", "--config-file", DET_CONFIG, *_det_args(tiny_data, out), *opts, check=True
    )
    assert len(run_configs_built) == 1


def test_a_pretraining_builds_its_run_config_once(cls_data_root, tmp_path, run_configs_built):
    """tools/train_cls.py builds the run's RunConfig in setup and passes it down, training (the
    trainer, its hooks, the resume, the checkpoints) or evaluating (--eval-only)."""
    out = tmp_path / "run"
    opts = tiny_opts(cls_data_root, out, epochs=1)
    call_tool("train_cls", "--config-file", CLS_CONFIG, *opts, check=True)
    assert len(run_configs_built) == 1
    run_configs_built.clear()
    weights = {"MODEL.WEIGHTS": str(out / "model_final.pth")}
    opts = tiny_opts(cls_data_root, tmp_path / "eval", **weights)
    call_tool("train_cls", "--config-file", CLS_CONFIG, "--eval-only", *opts, check=True)
    assert len(run_configs_built) == 1


def test_a_lazy_training_and_evaluation_build_their_run_config_once(
    tiny_data, tmp_path, run_configs_built
):
    """tools/lazyconfig_train_net.py builds the run's RunConfig once, training or evaluating."""
    folder, paths = tiny_data
    data = [
        a
        for s in ("train", "val")
        for a in ("--dataset", f"det_test_{s}", paths[s], os.path.join(folder, s))
    ]
    args = ["--config-file", LAZY_DET_CONFIG, *data, *TINY_LAZY, "train.device=cpu"]
    args += ["dataloader.train.dataset.names=det_test_train", "train.max_iter=1"]
    args += ["dataloader.test.dataset.names=det_test_val", "train.best_checkpoint.metric=auto"]
    out = tmp_path / "run"
    call_tool("lazyconfig_train_net", *args, f"train.output_dir={out}", check=True)
    assert len(run_configs_built) == 1
    run_configs_built.clear()
    weights = f"train.init_checkpoint={out / 'model_final.pth'}"
    evaluate = [f"train.output_dir={tmp_path / 'eval'}", weights]
    call_tool("lazyconfig_train_net", "--eval-only", *args, *evaluate, check=True)
    assert len(run_configs_built) == 1


def test_a_prediction_builds_its_run_config_once(tiny_data, tmp_path, run_configs_built):
    """tools/predict.py builds the RunConfig once (setup_run_config) and the predictor reads that
    one: a detector on a dataset's images, a classifier on an image."""
    from common import TINY_PREDICT_CLS, TINY_PREDICT_DET, load_tool, save_random_model, write_image

    predict = load_tool("predict")
    detector = save_random_model(DET_CONFIG, TINY_PREDICT_DET, tmp_path, "detector")
    classifier = save_random_model(CLS_CONFIG, TINY_PREDICT_CLS, tmp_path, "classifier")
    image = write_image(tmp_path / "images" / "a.jpg")
    run_configs_built.clear()
    argv = ["--config-file", DET_CONFIG, "--dataset", "det_test_val"]
    assert len(predict.main(argv + [*TINY_PREDICT_DET, "MODEL.WEIGHTS", detector])) == 8
    assert len(run_configs_built) == 1
    run_configs_built.clear()
    argv = ["--config-file", CLS_CONFIG, "--input", image, *TINY_PREDICT_CLS]
    assert len(predict.main(argv + ["MODEL.WEIGHTS", classifier])) == 1
    assert len(run_configs_built) == 1


def test_an_export_builds_its_run_config_once(tmp_path, run_configs_built):
    """tools/export_model.py builds the RunConfig once (setup) and passes it down: the checks, the
    strict loading."""
    from common import TINY_EXPORT_CLS, load_tool, save_model_final, tiny_export_model

    weights = save_model_final(tiny_export_model(), CLS_CONFIG, TINY_EXPORT_CLS, tmp_path)
    run_configs_built.clear()
    out = tmp_path / "export"
    load_tool("export_model").main(
        ["--config-file", CLS_CONFIG, "--format", "onnx", "--input-size", "32", "--output"]
        + [str(out), *TINY_EXPORT_CLS, "MODEL.WEIGHTS", weights]
    )
    assert (out / "model.onnx").is_file()
    assert len(run_configs_built) == 1
