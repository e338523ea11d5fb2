"""`--resume` of a detector continues exactly: after a stop at a checkpoint, the resumed run's
final weights equal an uninterrupted run's, bit for bit (data order, augmentation, box sampling),
for the yaml and the LazyConfig trainers and any worker count."""

import logging
import os

import pytest
import torch
from common import stopped_after, tiny_cfg, train_lazy

from randwire_d2.data.detection_loader import GroupedBatchSampler
from randwire_d2.engine import RandWireTrainer, Trainer
from randwire_d2.engine.resume import log_resume

pytestmark = pytest.mark.usefixtures("one_thread")


def final_weights(folder):
    return torch.load(os.path.join(folder, "model_final.pth"), weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.slow
def test_yaml_resume_gives_the_uninterrupted_runs_weights(tiny_data, tmp_path, workers, caplog):
    def train(folder, resume):
        cfg = tiny_cfg(
            *("DATASETS.TRAIN", ("det_test_train",), "DATASETS.TEST", ()),
            *("SOLVER.MAX_ITER", 6, "SOLVER.CHECKPOINT_PERIOD", 3, "SEED", 5),
            *("DATALOADER.NUM_WORKERS", workers, "OUTPUT_DIR", str(folder)),
        )
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=resume)
        trainer.train()
        return trainer

    train(tmp_path / "full", resume=False)
    stopped_after(tmp_path / "full", tmp_path / "resumed")
    with caplog.at_level(logging.INFO, logger="randwire_d2"):
        resumed = train(tmp_path / "resumed", resume=True)
    assert resumed.start_iter == 3
    assert "applies changed keys" not in caplog.text  # SOLVER.STEPS (700, 900) == [700, 900]
    assert "Resumed at iteration 3: model, optimizer, lr scheduler, iteration, data order" in (
        caplog.text
    )
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "resumed"))


@pytest.mark.slow
def test_lazy_resume_gives_the_uninterrupted_runs_weights_with_a_drawn_seed(
    tiny_data, tmp_path, caplog
):
    def train(folder, resume):
        settings = ["train.max_iter=6", "train.checkpointer.period=3", "train.eval_period=0"]
        train_lazy(folder, resume, *settings, "train.seed=-1")

    train(tmp_path / "full", resume=False)
    stopped_after(tmp_path / "full", tmp_path / "resumed")
    with caplog.at_level(logging.INFO, logger="randwire_d2"):
        train(tmp_path / "resumed", resume=True)
    seed = torch.load(tmp_path / "full" / "model_final.pth", weights_only=True)["run_seed"]
    assert f"data order, run seed {seed['seed']} restored from" in caplog.text
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "resumed"))


def test_batches_depend_on_the_iteration_only_and_group_by_aspect_ratio():
    groups = [0, 1] * 10
    sampler = GroupedBatchSampler(groups, 3, size=20, seed=4)
    stream = iter(sampler)
    first = [next(stream) for _ in range(25)]  # past two epochs
    later = GroupedBatchSampler(groups, 3, size=20, seed=4, start_iter=17)
    assert next(iter(later)) == first[17]
    for batch in first:
        assert len({groups[i] for i, _ in batch}) == 1
    ranks = [GroupedBatchSampler(groups, 3, size=20, seed=4, rank=r, world_size=2) for r in (0, 1)]
    firsts = [next(iter(s)) for s in ranks]
    assert not {i for i, _ in firsts[0]} & {i for i, _ in firsts[1]}
    with pytest.raises(ValueError, match="IMS_PER_BATCH=3 is invalid for 2 processes"):
        from randwire_d2.data.detection_loader import build_resumable_train_loader

        build_resumable_train_loader([{}] * 4, None, 3, seed=0, world_size=2)


def test_a_loader_that_cannot_resume_says_so(tiny_data, caplog):
    cfg = tiny_cfg("DATASETS.TRAIN", ("det_test_train",), "SEED", 5)
    assert Trainer.resumes_data_order(cfg) and not RandWireTrainer.resumes_data_order(cfg)
    other = cfg.clone()
    other.DATALOADER.SAMPLER_TRAIN = "RandomSubsetTrainingSampler"
    assert not Trainer.resumes_data_order(other)
    with caplog.at_level(logging.WARNING, logger="randwire_d2"):
        RandWireTrainer.build_train_loader(cfg, start_iter=3, seed=5)  # Detectron2's loader
    assert "RandWireTrainer's training data restart their order" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="randwire_d2"):
        log_resume(3, "x.pth", 5, data_order=False)
    assert "iteration, run seed 5 restored from x.pth" in caplog.text
