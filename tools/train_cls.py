#!/usr/bin/env python
"""ImageNet pretraining of RandWire classifiers (Sec. 4) on Detectron2's engine: the command
line of randwire_d2/engine/pretrain.py, whose docstring (`--help`) gives the usage.
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
