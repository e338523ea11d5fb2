"""randwire_d2: randomly wired networks (Xie et al., ICCV 2019) as a Detectron2 extension.

Importing the package registers the RandWire backbones, the RandWireClassifier
meta-architecture and the embedded demo datasets with Detectron2.
"""

import warnings as _warnings

from .utils.quiet_warnings import quiet_third_party_warnings

# Detectron2's imports print deprecation notes of torch's (see utils/quiet_warnings.py): quiet them
# while importing it, without changing the filters of the program that imports us.
with _warnings.catch_warnings():
    quiet_third_party_warnings(logs=False)
    from . import data, graphs, modeling
    from .config import add_randwire_config
    from .modeling import RandWire, RandWireClassifier

__version__ = "0.1.0"
