"""RetinaNet + FPN on RandWire-WS(4, 0.75) C=154 (regular regime), 1x."""

from .retinanet_randwire_c109_fpn_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.channels = 154
model.backbone.top_block.in_channels = 8 * 154
