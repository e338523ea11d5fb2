"""Training and evaluation on Detectron2's engine: one trainer base, one module per task.

launch.py          starting the processes (torchrun or Detectron2's launch), both tools
run_setup.py       a run's checks before anything is built (device, iterations, AMP, data), setup
output_dir.py      OUTPUT_DIR held by one run; metrics.json trimmed on resume
resume.py          start from weights or resume: what is restored, what a resume refuses
trainer.py         RandWireTrainer: what both yaml trainers share (DDP, AMP, hooks)
lazy.py            training and evaluation from a LazyConfig (tools/lazyconfig_train_net.py)
hooks.py           hooks (seeds, throughput, best checkpoint, pending evaluation)
schedule.py        pretraining epochs resolved into SOLVER.*
evaluation.py      top-k accuracy
classification.py  ClassificationTrainer
pretrain.py        the pretraining entry point (tools/train_cls.py; `python -m
                   randwire_d2.engine.pretrain`, so not imported here): setup, main, exit status
cuda_graphs.py     the classification step captured in a CUDA graph (PRETRAIN.CUDA_GRAPHS)
detection.py       Trainer (tools/train_net.py), detection pictures
"""

from ..checkpoint import build_checkpointer
from .classification import ClassificationTrainer, check_gpu_keys, evaluate_checkpoint
from .detection import Trainer, draw_detections
from .launch import argument_parser, launch
from .output_dir import OutputDirInUse, claim_output_dir, release_output_dir
from .run_setup import check_iterations, resolve_device
from .schedule import describe_schedule, resolve_schedule
from .trainer import RandWireTrainer, create_ddp_model
