"""randwire_d2/engine/hooks.py's BestCheckpoint: the best evaluation kept, also across a resume."""

import pytest
import torch
from common import CLS_CONFIG, make_cfg, read_metrics, stopped_after, tiny_opts, train_lazy

from randwire_d2.config import load_config
from randwire_d2.engine import ClassificationTrainer, Trainer
from randwire_d2.engine.hooks import BestCheckpoint


class _Storage:
    def __init__(self):
        self.values = {}

    def latest(self):
        return self.values


class _Trainer:
    def __init__(self, max_iter):
        self.storage, self.max_iter, self.iter = _Storage(), max_iter, 0


class _Checkpointer:
    def __init__(self):
        self.saved = []

    def save(self, name, tag_last=True, **extra):
        assert name == "model_best" and not tag_last
        self.saved.append(extra["iteration"])


def _evaluate(hook, it, value, metric="val_32/top1"):
    hook.trainer.iter = it
    hook.trainer.storage.values = {metric: (value, it), "loss_cls": (1.0, it)}
    hook.after_step()


def test_best_checkpoint_keeps_the_best_across_a_resume():
    """model_best follows the best value (mode max and min); its state resumes with the run, so
    a worse evaluation after a resume does not replace an earlier, better model_best."""
    ckpt = _Checkpointer()
    hook = BestCheckpoint(ckpt, eval_period=10, metric="val_32/top1")
    hook.trainer = _Trainer(max_iter=100)
    for it, value in [(9, 50.0), (19, 70.0), (29, 60.0), (39, float("nan"))]:
        _evaluate(hook, it, value)
    assert ckpt.saved == [9, 19] and (hook.best_metric, hook.best_iter) == (70.0, 19)

    resumed = BestCheckpoint(ckpt, eval_period=10, metric="val_32/top1")
    resumed.load_state_dict(hook.state_dict())
    resumed.trainer = _Trainer(max_iter=100)
    _evaluate(resumed, 49, 65.0)
    _evaluate(resumed, 59, 80.0)
    assert ckpt.saved == [9, 19, 59]

    low = BestCheckpoint(_Checkpointer(), 10, "error", mode="min")
    low.trainer = _Trainer(max_iter=100)
    for it, value in [(9, 3.0), (19, 1.0), (29, 2.0)]:
        _evaluate(low, it, value, "error")
    assert low._checkpointer.saved == [9, 19]


def test_best_checkpoint_names_the_metrics_the_evaluation_reports():
    hook = BestCheckpoint(_Checkpointer(), 10, "bbox/AP", key="TEST.BEST_CHECKPOINT_METRIC")
    hook.trainer = _Trainer(max_iter=100)
    with pytest.raises(ValueError, match=r"TEST.BEST_CHECKPOINT_METRIC='bbox/AP' is not among .*"):
        _evaluate(hook, 9, 50.0, metric="val_32/top1")
    with pytest.raises(ValueError, match=r"mode='best' is invalid: expected 'max' or 'min'"):
        BestCheckpoint(_Checkpointer(), 10, "bbox/AP", mode="best")


def test_auto_names_each_tasks_main_metric():
    cfg = load_config(CLS_CONFIG, ["PRETRAIN.TEST_CROPS", "[32, 40]"])
    assert ClassificationTrainer.main_metric(cfg) == "val_32/top1"
    assert Trainer.main_metric(cfg) == "bbox/AP"


def test_classifier_keeps_its_best_evaluation(cls_data_root, tmp_path, one_thread):
    """TEST.BEST_CHECKPOINT_METRIC auto on the classifier: model_best.pth holds the iteration
    of the best val top-1 in metrics.json; last_checkpoint still names the newest checkpoint."""
    opts = tiny_opts(cls_data_root, tmp_path, epochs=4, **{"PRETRAIN.EVAL_PERIOD_EPOCHS": 1.0})
    opts += ["TEST.BEST_CHECKPOINT_METRIC", "auto"]
    cfg = make_cfg(opts)
    trainer = ClassificationTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    evals = [(it, r["val_32/top1"]) for it, r in read_metrics(tmp_path) if "val_32/top1" in r]
    assert len(evals) == 4
    best_it, best = max(evals, key=lambda e: (e[1], -e[0]))  # the first of equal bests
    saved = torch.load(tmp_path / "model_best.pth", weights_only=True)
    assert saved["iteration"] == best_it
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def check_the_lost_evaluation_ran(full, resumed, metric, count, lost):
    """`resumed`, resumed after a stop before the evaluation of iteration `lost` ended, holds the
    `count` evaluations of the uninterrupted run `full`, and model_best.pth their best."""
    evals = {it: r[metric] for it, r in read_metrics(resumed) if metric in r}
    assert evals == {it: r[metric] for it, r in read_metrics(full) if metric in r}
    assert len(evals) == count and lost in evals
    best = max(evals, key=lambda it: (evals[it], -it))  # the first of equal bests
    assert torch.load(resumed / "model_best.pth", weights_only=True)["iteration"] == best


@pytest.mark.slow
def test_resume_runs_the_evaluation_a_stopped_run_lost(cls_data_root, tmp_path, one_thread):
    """A run stopped after its checkpoint of iteration 0, before that iteration's evaluation
    ended (metrics.json has no record of it yet): --resume evaluates iteration 0 before it
    trains on (evaluations after iterations 0, 1 and the final one)."""

    def train(folder, resume):
        opts = tiny_opts(cls_data_root, folder, epochs=3, **{"PRETRAIN.EVAL_PERIOD_EPOCHS": 1.0})
        trainer = ClassificationTrainer(make_cfg(opts + ["TEST.BEST_CHECKPOINT_METRIC", "auto"]))
        trainer.resume_or_load(resume=resume)
        trainer.train()

    train(tmp_path / "full", resume=False)
    stopped_after(tmp_path / "full", tmp_path / "resumed", "model_0000000.pth")
    train(tmp_path / "resumed", resume=True)
    check_the_lost_evaluation_ran(tmp_path / "full", tmp_path / "resumed", "val_32/top1", 3, 0)


@pytest.mark.slow
def test_lazy_resume_runs_the_evaluation_a_stopped_run_lost(tiny_data, tmp_path, one_thread):
    """As above, for the LazyConfig trainer (COCO evaluations after iteration 1 and the final
    one)."""
    settings = ["train.max_iter=4", "train.checkpointer.period=2", "train.eval_period=2"]
    settings += ["train.seed=3", "+train.best_checkpoint.metric=bbox/AP"]
    train_lazy(tmp_path / "full", False, *settings)
    stopped_after(tmp_path / "full", tmp_path / "resumed", "model_0000001.pth")
    train_lazy(tmp_path / "resumed", True, *settings)
    check_the_lost_evaluation_ran(tmp_path / "full", tmp_path / "resumed", "bbox/AP", 2, 1)
