"""Mask R-CNN + FPN on RandWire-WS(4, 0.75) C=109 (regular regime), 1x. The yaml twin is
configs/mask_rcnn_randwire_c109_fpn_1x.yaml.

    python tools/lazyconfig_train_net.py --config-file configs/lazy/mask_rcnn_randwire_c109_fpn_1x.py \\
        --num-gpus 8 train.init_checkpoint=<classifier checkpoint>
"""

from .common.randwire_rcnn import dataloader, lr_multiplier, model, optimizer, train
