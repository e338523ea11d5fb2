#!/usr/bin/env python
"""ImageNet pretraining of RandWire classifiers (Sec. 4) on Detectron2's engine.

    python tools/train_cls.py --config-file configs/imagenet/randwire_ws_c109_regular.yaml --num-gpus 8
    python tools/train_cls.py --config-file ... --num-gpus 8 --dry-run     # print the schedule only
    python tools/train_cls.py --config-file ... SOLVER.MAX_ITER 20         # a smoke test
    python tools/train_cls.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    torchrun --nproc-per-node 8 tools/train_cls.py --config-file ...     # joins torchrun's group

The schedule is written in epochs (PRETRAIN.*) and resolved here into SOLVER.* for the training
set and the global batch; SOLVER/TEST keys given explicitly are kept (and said so). On a machine
without CUDA, --num-gpus N runs N CPU processes (gloo).
"""

import sys

# The entry point is the package's (also `python -m randwire_d2.engine.pretrain`; importing the
# package first quiets the deprecation notes of Detectron2's imports). Its exit status
# EXIT_OUTPUT_DIR_IN_USE says another live process holds OUTPUT_DIR.
from randwire_d2.engine.pretrain import (  # noqa: F401
    EXIT_OUTPUT_DIR_IN_USE,
    build_parser,
    cli,
    main,
    setup,
)

if __name__ == "__main__":
    status = cli()
    if status:  # else return normally (runpy callers go on)
        sys.exit(status)
