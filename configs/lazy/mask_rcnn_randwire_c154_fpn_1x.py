"""Mask R-CNN + FPN on RandWire-WS(4, 0.75) C=154 (regular regime), 1x."""

from .common.randwire_rcnn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.channels = 154
