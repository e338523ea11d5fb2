"""Tiny RandWire-FPN Mask R-CNN for the embedded detection data (160x160 shapes on clutter, exact
instance masks), as LazyConfig. The trunk equals configs/demo/randwire_cls_demo.yaml's, so the
demo classifier's checkpoint is a train.init_checkpoint.

    python tools/lazyconfig_train_net.py --config-file configs/lazy/demo/mask_rcnn_randwire_demo.py
"""

from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..common.randwire_rcnn import dataloader, model, optimizer, train

trunk = model.backbone.bottom_up
trunk.update(regime="small", channels=16, norm="BN", freeze_at=0, memory_efficient=True)
trunk.wiring.num_nodes = 8
model.backbone.out_channels = 64
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.update(
    pre_nms_topk=(400, 200), post_nms_topk=(200, 100), batch_size_per_image=128
)
model.roi_heads.update(num_classes=5, batch_size_per_image=64)
model.roi_heads.box_head.update(
    input_shape=L(ShapeSpec)(channels=64, height=7, width=7), fc_dims=[256, 256]
)
model.roi_heads.box_predictor.input_shape = L(ShapeSpec)(channels=256)
# Detectron2's head has 4 convs of 256 channels; 2 of 64 suffice for 5 silhouettes.
model.roi_heads.mask_head.update(
    input_shape=L(ShapeSpec)(channels=64, height=14, width=14), conv_dims=[64, 64, 64]
)

dataloader.train.dataset.names = "randwire_demo_det_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(160,), max_size=160, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
# The demo's masks are exact RLE: "bitmask" reads RLE (and polygons), "polygon" only polygons.
dataloader.train.mapper.instance_mask_format = "bitmask"
dataloader.train.update(total_batch_size=8, num_workers=1)
dataloader.test.dataset.names = "randwire_demo_det_val"
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=160, max_size=160)
]
dataloader.test.num_workers = 1

optimizer.update(lr=0.02, weight_decay=1e-4)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[700, 900, 1000]),
    warmup_length=100 / 1000,
    warmup_method="linear",
    warmup_factor=0.001,
)
train.update(
    max_iter=1000,
    eval_period=0,
    checkpointer=dict(period=500, max_to_keep=100),
    device="cpu",
    seed=0,  # weights and data order: the demo prints the same numbers on every run
    output_dir="output/demo_mask_rcnn_lazy",
)
del trunk
