"""randwire_d2: randomly wired networks (Xie et al., ICCV 2019) as a Detectron2 extension.

Importing the package registers the RandWire backbones, the RandWireClassifier
meta-architecture and the embedded demo datasets with Detectron2.
"""

from . import data, graphs, modeling
from .config import add_randwire_config
from .modeling import RandWire, RandWireClassifier

__version__ = "0.1.0"
