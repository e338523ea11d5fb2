"""RandWire-FPN: Detectron2's FPN on the RandWire trunk's stages (the paper's Sec. 5).

`build_randwire_fpn_backbone` (Faster/Mask R-CNN): p2..p6 from conv2..conv5 + max-pool, as
Detectron2's `build_resnet_fpn_backbone` from res2..res5. `build_randwire_retinanet_fpn_backbone`
(RetinaNet): p3..p7 from conv3..conv5 + two stride-2 convs on conv5, as Detectron2's
`build_retinanet_resnet_fpn_backbone` from res3..res5.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7

from .randwire import build_randwire_backbone

__all__ = ["build_randwire_fpn_backbone", "build_randwire_retinanet_fpn_backbone"]


def _trunk(cfg, input_shape: ShapeSpec):
    """The RandWire trunk, after checking that it returns every MODEL.FPN.IN_FEATURES."""
    in_features, out_features = cfg.MODEL.FPN.IN_FEATURES, cfg.MODEL.RANDWIRE.OUT_FEATURES
    if not set(in_features) <= set(out_features):
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES={list(in_features)} is invalid: the trunk returns only "
            f"MODEL.RANDWIRE.OUT_FEATURES={list(out_features)}, which must include every FPN input"
        )
    return build_randwire_backbone(cfg, input_shape)


def _fpn(cfg, bottom_up, top_block):
    # fmt: off
    return FPN(
        bottom_up    = bottom_up,
        in_features  = cfg.MODEL.FPN.IN_FEATURES,
        out_channels = cfg.MODEL.FPN.OUT_CHANNELS,
        norm         = cfg.MODEL.FPN.NORM,
        top_block    = top_block,
        fuse_type    = cfg.MODEL.FPN.FUSE_TYPE,
    )
    # fmt: on


@BACKBONE_REGISTRY.register()
def build_randwire_fpn_backbone(cfg, input_shape: ShapeSpec):
    """FPN(RandWire trunk) + LastLevelMaxPool: p2..p6 from MODEL.FPN.IN_FEATURES (conv2..conv5)."""
    return _fpn(cfg, _trunk(cfg, input_shape), LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_randwire_retinanet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """FPN(RandWire trunk) + LastLevelP6P7 on conv5: p3..p7 from MODEL.FPN.IN_FEATURES
    (conv3..conv5), as RetinaNet reads them."""
    bottom_up = _trunk(cfg, input_shape)
    if "conv5" not in bottom_up.output_shape():
        raise ValueError(
            f"MODEL.RANDWIRE.OUT_FEATURES={list(cfg.MODEL.RANDWIRE.OUT_FEATURES)} is invalid for "
            "RetinaNet: p6 and p7 are computed from conv5, which it must include"
        )
    in_channels_p6p7 = bottom_up.output_shape()["conv5"].channels
    top_block = LastLevelP6P7(in_channels_p6p7, cfg.MODEL.FPN.OUT_CHANNELS, in_feature="conv5")
    return _fpn(cfg, bottom_up, top_block)
