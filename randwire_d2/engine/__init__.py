"""Training and evaluation of RandWire detectors (tools/train_net.py runs `train_or_evaluate`)."""

from .detection import (
    DatasetNotFoundError,
    Trainer,
    argument_parser,
    build_checkpointer,
    check_datasets_on_disk,
    check_input_normalization,
    check_weights_on_disk,
    create_ddp_model,
    detection_cfg,
    draw_detections,
    prepare_datasets,
    register_user_datasets,
    setup_cfg,
    train_or_evaluate,
)
from .classification import ClassificationTrainer, dry_run_schedule, launch_from_env_or_args
