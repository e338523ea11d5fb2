"""RandWireClassifier: the ImageNet network of Table 1 as a Detectron2 meta-architecture."""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList
from torch import nn

from .ops import norm_layer

__all__ = ["ClassifierHead", "ClassifierLogits", "RandWireClassifier"]


class ClassifierHead(nn.Module):
    """Classifier of Table 1: ReLU -> 1x1 conv -> BN -> ReLU -> global avg pool -> dropout -> fc."""

    def __init__(
        self, in_channels: int, head_channels: int, num_classes: int, dropout: float, norm: str
    ):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DROPOUT={dropout!r} is invalid: expected a rate in [0, 1)")
        self.conv = nn.Conv2d(in_channels, head_channels, 1, bias=False)
        self.norm = norm_layer(norm, head_channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(head_channels, num_classes)

    def forward(self, x):
        x = F.relu(self.norm(self.conv(F.relu(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.dropout(x))


@META_ARCH_REGISTRY.register()
class RandWireClassifier(nn.Module):
    """Image classifier: logits = head(backbone(image)[last stage]).

    Takes `list[dict]` inputs ("image" CHW 0-255, in training "label") or a stacked batch
    {"images", "labels"}. Training returns {"loss_cls"}; eval one {"scores"} per image.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        pixel_mean,
        pixel_std,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.label_smoothing = label_smoothing
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        feature = backbone.output_shape()[backbone._out_features[-1]]
        c = cfg.MODEL.CLASSIFIER
        # fmt: off
        return {
            "backbone":        backbone,
            "head":            ClassifierHead(feature.channels, c.HEAD_CHANNELS, c.NUM_CLASSES,
                                              c.DROPOUT, cfg.MODEL.RANDWIRE.NORM),
            "pixel_mean":      cfg.MODEL.PIXEL_MEAN,
            "pixel_std":       cfg.MODEL.PIXEL_STD,
            "label_smoothing": c.LABEL_SMOOTHING,
        }
        # fmt: on

    @property
    def device(self):
        return self.pixel_mean.device

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits of a normalized NCHW batch."""
        features = self.backbone(images)
        return self.head(features[self.backbone._out_features[-1]])

    def preprocess_image(self, batched_inputs) -> torch.Tensor:
        """The normalized NCHW batch of `batched_inputs` (a list of dicts or a stacked batch)."""
        if isinstance(batched_inputs, dict):
            images = batched_inputs["images"].to(self.device, non_blocking=True)
            return (images - self.pixel_mean) / self.pixel_std
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(images).tensor

    def labels(self, batched_inputs) -> torch.Tensor:
        if isinstance(batched_inputs, dict):
            return batched_inputs["labels"].to(self.device, non_blocking=True)
        return torch.as_tensor([x["label"] for x in batched_inputs], device=self.device)

    def forward(self, batched_inputs):
        logits = self.logits(self.preprocess_image(batched_inputs))
        if self.training:
            labels = self.labels(batched_inputs)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            return {"loss_cls": loss}
        return [{"scores": s} for s in logits.softmax(dim=1)]


class ClassifierLogits(nn.Module):
    """A RandWireClassifier as a tensor -> logits module: with `normalize` (as exported) of NCHW
    images as its "image" inputs (INPUT.FORMAT, 0-255), else of a batch normalized already."""

    def __init__(self, model: RandWireClassifier, normalize: bool = True):
        super().__init__()
        self.model, self.normalize = model, normalize

    def forward(self, images):  # the name of the input of an export (torch.export, TorchScript)
        if self.normalize:
            images = (images - self.model.pixel_mean) / self.model.pixel_std
        return self.model.logits(images)
