"""Faster R-CNN + FPN on RandWire-WS(4, 0.75) C=154 (regular regime), 1x: paper Table 5, 40.4
box AP. Equivalent to configs/faster_rcnn_randwire_c154_fpn_1x.yaml."""

from .faster_rcnn_randwire_c109_fpn_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.channels = 154
