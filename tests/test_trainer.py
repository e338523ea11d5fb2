"""randwire_d2/engine/trainer.py: the step trainer (AMP) and the DDP wrapper."""

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_amp_step_trainer_runs_an_iteration(dtype, monkeypatch):
    """The GPU check found `AMPTrainer(model, loader, optimizer, scaler)` putting the scaler in
    gather_metric_period: the first iteration failed in _write_metrics. AMPTrainer's autocast is
    CUDA's, inactive on CPU, so the step runs here in float32 through the same code."""
    import warnings

    from detectron2.engine import AMPTrainer

    from randwire_d2.engine.trainer import step_trainer

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, batch):
            return {"loss": self.fc(batch).pow(2).mean()}

    model = Model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler/autocast: CUDA is not available
        trainer = step_trainer(model, iter([torch.ones(3, 4)] * 4), optimizer, dtype)
        assert isinstance(trainer, AMPTrainer) and trainer.precision == dtype
        assert trainer.gather_metric_period == 1
        assert isinstance(trainer.grad_scaler, torch.amp.GradScaler)
        from detectron2.utils.events import EventStorage

        before = model.fc.weight.detach().clone()
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # run_step asserts it
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        with EventStorage(0) as storage:
            trainer.iter = 0
            trainer.run_step()
        assert "total_loss" in storage.histories() and not torch.equal(before, model.fc.weight)


def test_ddp_gets_forward_sync_buffers_instead_of_the_deprecated_broadcast_buffers(monkeypatch):
    """torch 2.13 deprecates DistributedDataParallel(broadcast_buffers=...) with a FutureWarning
    in every process of a multi-process run."""
    import randwire_d2.engine.trainer as trainer

    seen = {}
    monkeypatch.setattr(trainer.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(trainer, "DistributedDataParallel", lambda model, **kw: seen.update(kw))
    trainer.create_ddp_model(torch.nn.Linear(2, 2), broadcast_buffers=False)
    assert seen == {"forward_sync_buffers": False}
