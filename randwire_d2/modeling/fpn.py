"""RandWire-FPN: Detectron2's FPN on the RandWire trunk's `conv2..conv5` (the paper's Sec. 5)."""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from .randwire import build_randwire_backbone

__all__ = ["build_randwire_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_randwire_fpn_backbone(cfg, input_shape: ShapeSpec):
    """FPN(RandWire trunk) + LastLevelMaxPool: p2..p6 from MODEL.FPN.IN_FEATURES (conv2..conv5)."""
    in_features, out_features = cfg.MODEL.FPN.IN_FEATURES, cfg.MODEL.RANDWIRE.OUT_FEATURES
    if not set(in_features) <= set(out_features):
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES={list(in_features)} is invalid: the trunk returns only "
            f"MODEL.RANDWIRE.OUT_FEATURES={list(out_features)}, which must include every FPN input"
        )
    bottom_up = build_randwire_backbone(cfg, input_shape)
    # fmt: off
    return FPN(
        bottom_up    = bottom_up,
        in_features  = in_features,
        out_channels = cfg.MODEL.FPN.OUT_CHANNELS,
        norm         = cfg.MODEL.FPN.NORM,
        top_block    = LastLevelMaxPool(),
        fuse_type    = cfg.MODEL.FPN.FUSE_TYPE,
    )
    # fmt: on
