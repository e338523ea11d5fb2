"""RandWire-FPN R-CNN on Detectron2's own LazyConfig `common/` configs (shipped inside the
installed detectron2): its Mask R-CNN FPN model, COCO data, SGD, 1x schedule and train dict, with
the RandWire trunk (paper Table 3 top: WS(4, 0.75), N=32, C=109, regular regime) as FPN's
bottom_up. The values equal configs/Base-RandWire-FPN.yaml's, so the yaml and the lazy configs
build the same trunk from the same (generator, theta, seed): same wiring fingerprint, same keys.

Change the network on the command line, e.g.
    model.backbone.bottom_up.wiring.seed=2 model.backbone.bottom_up.channels=154
"""

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from randwire_d2.modeling.randwire import RandWire, network_wiring

optimizer = get_config("common/optim.py").SGD
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x
dataloader = get_config("common/data/coco.py").dataloader
model = get_config("common/models/mask_rcnn_fpn.py").model
train = get_config("common/train.py").train

model.backbone.bottom_up = L(RandWire)(
    # g(theta, s), the same function the yaml keys MODEL.RANDWIRE.GENERATOR/NUM_NODES/SEED/WS_*
    # call; the regime is the trunk's.
    wiring=L(network_wiring)(
        generator="ws", num_nodes=32, seed=1, regime="${..regime}", K=4, P=0.75
    ),
    channels=109,
    regime="regular",
    node_op="sep_conv3x3",
    # 2 images per GPU: BN statistics frozen, as ResNet's in Detectron's 1x.
    norm="FrozenBN",
    out_features=["conv2", "conv3", "conv4", "conv5"],
    drop_edge_prob=0.0,
    # conv1 + conv2 frozen, as ResNet's res2 (FREEZE_AT 2).
    freeze_at=2,
)
# The classifier's input (RGB, 0-255, torchvision statistics): it must match the pretraining.
model.pixel_mean = [123.675, 116.28, 103.53]
model.pixel_std = [58.395, 57.12, 57.375]
model.input_format = "RGB"
dataloader.train.mapper.image_format = "RGB"
# Detectron's 1x, as the yaml configs: single-scale training at 800 pixels.
dataloader.train.mapper.augmentations[0].short_edge_length = (800,)
# A tools/train_cls.py checkpoint of the same wiring (or tools/convert_cls_to_d2.py's output).
train.init_checkpoint = ""
# Keep output_dir/model_best.pth, the checkpoint of the best evaluation by `metric`: "" (off),
# "auto" (bbox/AP) or a name the evaluation reports ("segm/AP"); mode "max" or "min".
train.best_checkpoint = dict(metric="", mode="max")
