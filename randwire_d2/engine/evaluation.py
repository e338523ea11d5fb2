"""Top-k accuracy of classifier outputs, summed over processes."""

from typing import List, Sequence

import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

__all__ = ["topk_correct", "ClassificationEvaluator"]


def topk_correct(
    scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> List[int]:
    """For each k (capped at the class count), how many rows rank their label in the top k."""
    maxk = min(max(ks), scores.shape[1])
    top = scores.topk(maxk, dim=1).indices
    hit = top == labels.view(-1, 1).to(top.device)
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


class ClassificationEvaluator(DatasetEvaluator):
    """Top-k accuracy (percent) summed over processes; top-k for k > 1 only above k classes (it
    is 100 by construction otherwise)."""

    def __init__(self, ks: Sequence[int] = (1, 5)):
        self.ks = tuple(ks)
        self.reset()

    def reset(self):
        self._correct = [0] * len(self.ks)
        self._count = 0
        self._classes = 0

    def process(self, inputs, outputs):
        scores = torch.stack([o["scores"] for o in outputs])
        labels = torch.as_tensor([x["label"] for x in inputs])
        self._classes = scores.shape[1]
        for i, c in enumerate(topk_correct(scores, labels, self.ks)):
            self._correct[i] += c
        self._count += len(inputs)

    def evaluate(self):
        parts = comm.all_gather((self._correct, self._count, self._classes))
        total = sum(n for _, n, _ in parts)
        if total == 0:
            raise ValueError("evaluated 0 images: the validation set is empty")
        classes = max(k for _, _, k in parts)
        return {
            f"top{k}": 100.0 * sum(c[i] for c, _, _ in parts) / total
            for i, k in enumerate(self.ks)
            if k == 1 or k < classes
        }
