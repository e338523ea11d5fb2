"""Embedded datasets: procedural shapes on cluttered backgrounds (see `shapes`).

Importing this package registers the detection demo splits (generated on first load).
"""

from . import shapes
from .detection_demo import (
    DEMO_DET_NAMES,
    ensure_detection_demo,
    generate_detection_demo,
    register_detection_demo,
)

register_detection_demo()
