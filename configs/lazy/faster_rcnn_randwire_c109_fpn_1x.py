"""Faster R-CNN + FPN on RandWire-WS(4, 0.75) C=109 (regular regime), 1x: paper Table 5, 39.9
box AP. Equivalent to configs/faster_rcnn_randwire_c109_fpn_1x.yaml (same trunk, same schedule:
batch 16, lr 0.02, steps 60k/80k of 90k, 1000 warm-up iterations).

    python tools/lazyconfig_train_net.py --config-file configs/lazy/faster_rcnn_randwire_c109_fpn_1x.py \\
        --num-gpus 8 train.init_checkpoint=<classifier checkpoint>
"""

from .common.randwire_rcnn import dataloader, lr_multiplier, model, optimizer, train

# Detectron2's common model is Mask R-CNN: without its mask branch it is Faster R-CNN.
model.roi_heads.update(mask_in_features=None, mask_pooler=None, mask_head=None)
dataloader.train.mapper.use_instance_mask = False
