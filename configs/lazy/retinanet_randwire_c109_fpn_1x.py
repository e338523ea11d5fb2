"""RetinaNet + FPN (P3-P7) on RandWire-WS(4, 0.75) C=109 (regular regime), 1x, on Detectron2's
common RetinaNet config. The yaml twin is configs/retinanet_randwire_c109_fpn_1x.yaml.

    python tools/lazyconfig_train_net.py --config-file configs/lazy/retinanet_randwire_c109_fpn_1x.py \\
        --num-gpus 8 train.init_checkpoint=<classifier checkpoint>
"""

from detectron2.model_zoo import get_config

from .common.randwire_rcnn import dataloader, lr_multiplier, model, optimizer, train

trunk = model.backbone.bottom_up
model = get_config("common/models/retinanet.py").model
model.backbone.bottom_up = trunk
model.backbone.bottom_up.out_features = ["conv3", "conv4", "conv5"]
model.backbone.in_features = "${.bottom_up.out_features}"
# P6 from conv5, as Detectron2's RetinaNet takes it from res5: conv5 has 8C channels (regular
# regime; 4C in the small one).
model.backbone.top_block.in_channels = 8 * 109
model.backbone.top_block.in_feature = "conv5"
model.pixel_mean = [123.675, 116.28, 103.53]
model.pixel_std = [58.395, 57.12, 57.375]
model.input_format = "RGB"
dataloader.train.mapper.use_instance_mask = False
optimizer.lr = 0.01  # as Detectron2's retinanet_R_50_FPN_1x
del trunk
