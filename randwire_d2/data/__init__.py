"""Embedded datasets: procedural shapes on cluttered backgrounds (see `shapes`).

Importing this package registers the detection demo splits ("randwire_demo_det_train",
"randwire_demo_det_val") under $DETECTRON2_DATASETS (default ./datasets); their files are
generated the first time a split is loaded.
"""

from . import shapes
from .detection_demo import (
    DEMO_DET_NAMES,
    ensure_detection_demo,
    generate_detection_demo,
    register_detection_demo,
)

register_detection_demo()
