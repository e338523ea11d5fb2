"""Tiny RandWire-FPN Faster R-CNN for the embedded detection data, as LazyConfig: the twin of
configs/demo/faster_rcnn_randwire_demo.yaml (same trunk, heads, data and schedule).

    python tools/lazyconfig_train_net.py --config-file configs/lazy/demo/faster_rcnn_randwire_demo.py
    python tools/lazyconfig_train_net.py --config-file configs/lazy/demo/faster_rcnn_randwire_demo.py \\
        train.init_checkpoint=output/demo/classification/model_final.pth
"""

from .mask_rcnn_randwire_demo import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.update(mask_in_features=None, mask_pooler=None, mask_head=None)
dataloader.train.mapper.use_instance_mask = False
train.output_dir = "output/demo_detection_lazy"
