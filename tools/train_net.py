#!/usr/bin/env python
"""Train or evaluate a RandWire (or ResNet) Faster R-CNN with Detectron2.

    python tools/train_net.py --config configs/faster_rcnn_randwire_c109_fpn_1x.yaml \\
        --num-gpus 8 MODEL.WEIGHTS <pretrained.pth>
    python tools/train_net.py --config-file configs/demo/faster_rcnn_randwire_demo.yaml
    python tools/train_net.py --config ... --eval-only MODEL.WEIGHTS <model.pth>
    python tools/train_net.py --config ... --dataset mydata_train train.json images/ \\
        DATASETS.TRAIN '("mydata_train",)'

Without CUDA, `--num-gpus N` runs N CPU processes (gloo).
"""

import sys

from detectron2.engine import launch

from randwire_d2.engine import argument_parser, setup_cfg, train_or_evaluate
from randwire_d2.engine.detection import DatasetNotFoundError
from randwire_d2.engine.distributed import CloseProcessGroupAfter


def setup(args):
    return setup_cfg(args)


def main(args):
    return train_or_evaluate(args)


if __name__ == "__main__":
    args = argument_parser(__doc__).parse_args()
    print("Command Line Args:", args)
    try:
        launch(
            CloseProcessGroupAfter(main),
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except DatasetNotFoundError as e:  # a user error: the message, not a traceback
        sys.exit(f"{type(e).__name__}: {e}")
