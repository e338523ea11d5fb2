"""Training and evaluation on Detectron2's engine: one trainer base, one module per task.

launch.py          starting the processes (torchrun or Detectron2's launch), both tools
trainer.py         RandWireTrainer: what both trainers share; OUTPUT_DIR claim; resume checks
hooks.py           hooks and the progress printer
schedule.py        pretraining epochs resolved into SOLVER.*
evaluation.py      top-k accuracy
classification.py  ClassificationTrainer (tools/train_cls.py)
cuda_graphs.py     the classification step captured in a CUDA graph (PRETRAIN.CUDA_GRAPHS)
detection.py       Trainer (tools/train_net.py), detection pictures
"""

from .classification import ClassificationTrainer, check_gpu_keys, evaluate_checkpoint
from .detection import Trainer, draw_detections
from .launch import argument_parser, launch
from .schedule import describe_schedule, resolve_schedule
from .trainer import (
    RandWireTrainer,
    build_checkpointer,
    check_iterations,
    claim_output_dir,
    create_ddp_model,
    resolve_device,
)
