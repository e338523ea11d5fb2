"""The classification training step as one CUDA graph (PRETRAIN.CUDA_GRAPHS).

A RandWire-C109 step launches ~2,700 kernels, whose CPU dispatch costs about the GPU time of a
batch of 32; a graph replays them in one launch. What a replay cannot see is written to device
memory before it: the batch, each group's lr, the edge removal masks. Float16 AMP is refused
(its GradScaler decides on the CPU whether to skip a step).
"""

import logging
import time
from typing import Callable, Dict, Optional, Tuple

import torch
from detectron2.engine import SimpleTrainer
from torch.nn.parallel import DistributedDataParallel

from ..modeling.randwire import RandWire

__all__ = ["GraphedStepTrainer", "capture_cuda_graph", "check_cuda_graphs"]

logger = logging.getLogger(__name__)


def capture_cuda_graph(step: Callable[[], Dict]) -> Tuple[Callable[[], None], Dict]:
    """Capture `step` in a CUDA graph and run it once; (replay, the step's static outputs)."""
    graph = torch.cuda.CUDAGraph()
    # thread_local: the data loader's pin-memory thread keeps allocating pinned memory (an
    # event query, illegal in a global-mode capture) while this thread captures.
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        outputs = step()
    graph.replay()
    return graph.replay, outputs


def check_cuda_graphs(device: str, amp_dtype: Optional[torch.dtype]) -> None:
    """PRETRAIN.CUDA_GRAPHS where it can run: on CUDA, in float32 or bfloat16 AMP."""
    if not str(device).startswith("cuda"):
        raise ValueError(
            f"PRETRAIN.CUDA_GRAPHS=True needs CUDA, but the model runs on {device!r}: CUDA "
            "graphs capture GPU work. Set PRETRAIN.CUDA_GRAPHS False on this machine."
        )
    if amp_dtype == torch.float16:
        raise ValueError(
            "PRETRAIN.CUDA_GRAPHS=True cannot capture float16 AMP (PRETRAIN.AMP_DTYPE="
            "'float16'): its GradScaler decides on the CPU, every step, whether to skip the "
            "optimizer step. Use PRETRAIN.AMP_DTYPE 'bfloat16' (no scaler) or "
            "SOLVER.AMP.ENABLED False."
        )


class GraphedStepTrainer(SimpleTrainer):
    """SimpleTrainer whose step runs as one captured graph: `warmup_iters` eager steps (DDP's
    buckets need 11), then one captured by `capture`, later ones replayed. One batch shape."""

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        amp_dtype: Optional[torch.dtype] = None,
        warmup_iters: Optional[int] = None,
        capture: Callable = capture_cuda_graph,
    ):
        super().__init__(model, data_loader, optimizer)
        if warmup_iters is None:
            warmup_iters = 11 if isinstance(model, DistributedDataParallel) else 3
        self.amp_dtype = amp_dtype
        self.warmup_iters = warmup_iters
        self._capture = capture
        self._static: Optional[Dict[str, torch.Tensor]] = None
        self._replay = self._outputs = self._lrs = None
        self._eager_steps = 0
        inner = getattr(model, "module", model)
        self.trunks = [m for m in inner.modules() if isinstance(m, RandWire)]
        for trunk in self.trunks:
            if not trunk.uses_edge_masks:
                trunk.use_edge_masks()
            trunk.edge_masks_drawn_by_caller = True

    @property
    def device(self) -> torch.device:
        return next(getattr(self.model, "module", self.model).parameters()).device

    def run_step(self):
        assert self.model.training, "[GraphedStepTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        self._load(data)
        self._sync_lrs()
        for trunk in self.trunks:  # this iteration's edge removal, keyed by StepSeed
            trunk.draw_edge_removal()
        if self._replay is not None:
            self._replay()
            loss_dict = self._outputs
        elif self._eager_steps < self.warmup_iters:
            loss_dict = self._eager_step()
        else:
            self.optimizer.zero_grad(set_to_none=True)  # gradients live in the graph's memory
            self._replay, self._outputs = self._capture(self._step)
            loss_dict = self._outputs
            logger.info(
                f"PRETRAIN.CUDA_GRAPHS: the training step was captured at iteration {self.iter} "
                f"after {self._eager_steps} eager steps; every later step replays it"
            )
        self._write_metrics(loss_dict, data_time)

    def _step(self) -> Dict[str, torch.Tensor]:
        """Forward, loss, backward and SGD step on the static buffers."""
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=bool(self.amp_dtype)
        ):
            loss_dict = self.model(self._static)
        sum(loss_dict.values()).backward()
        self.optimizer.step()
        return loss_dict

    def _eager_step(self) -> Dict[str, torch.Tensor]:
        self._eager_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type != "cuda":
            return self._step()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            loss_dict = self._step()
        torch.cuda.current_stream().wait_stream(side)
        return loss_dict

    def _load(self, data) -> None:
        """Copy the batch (image dicts, or stacked {"images", "labels"}) into the static buffers."""
        if isinstance(data, dict):
            images, labels = data["images"], data["labels"]
            shape, dtype = tuple(images.shape), images.dtype
        else:
            images, labels = [x["image"] for x in data], [x["label"] for x in data]
            shape, dtype = (len(images),) + tuple(images[0].shape), images[0].dtype
        if self._static is None:
            self._static = {
                "images": torch.empty(shape, dtype=dtype, device=self.device),
                "labels": torch.empty(shape[0], dtype=torch.int64, device=self.device),
            }
        static = self._static["images"]
        shapes = {tuple(i.shape) for i in images} if isinstance(images, list) else set()
        if (
            shape != tuple(static.shape)
            or dtype != static.dtype
            or shapes - {tuple(static.shape[1:])}
        ):
            got = sorted(shapes) if len(shapes) > 1 else list(shape)
            raise RuntimeError(
                f"PRETRAIN.CUDA_GRAPHS=True captured the step for batches of images "
                f"{list(static.shape)} {static.dtype}, but iteration {self.iter} brought {got} "
                f"{dtype}: a CUDA graph replays fixed shapes. Give batches of one shape, or set "
                "PRETRAIN.CUDA_GRAPHS False."
            )
        if isinstance(images, list):
            for i, image in enumerate(images):
                static[i].copy_(image, non_blocking=True)
            labels = torch.as_tensor(labels, dtype=torch.int64)
        else:
            static.copy_(images, non_blocking=True)
        self._static["labels"].copy_(labels, non_blocking=True)

    def _sync_lrs(self) -> None:
        """Keep every group's lr a device scalar holding this iteration's lr, which replays read."""
        groups = self.optimizer.param_groups
        if self._lrs is None:
            self._lrs = [
                torch.tensor(float(g["lr"]), dtype=torch.float32, device=self.device)
                for g in groups
            ]
            for g, lr in zip(groups, self._lrs):
                g["lr"] = lr
                if "fused" in g:  # torch.optim.SGD: the fused step reads a tensor lr on device
                    g["foreach"], g["fused"] = False, True
        for g, lr in zip(groups, self._lrs):
            if g["lr"] is not lr:
                lr.fill_(float(g["lr"]))
                g["lr"] = lr
