from .classifier import ClassifierHead, RandWireClassifier
from .fpn import build_randwire_fpn_backbone
from .frozen import FrozenStage, fold_conv_norms, freeze_for_export
from .ops import NODE_OPS, build_node_op, register_node_op
from .randwire import (
    REGIMES,
    Node,
    RandWire,
    WiredStage,
    WiringMismatchError,
    build_randwire_backbone,
    network_wiring,
    stage_specs,
    wiring_from_cfg,
)
