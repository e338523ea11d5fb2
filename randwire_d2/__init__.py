"""randwire_d2: randomly wired networks (Xie et al., ICCV 2019) as a Detectron2 extension.

Importing the package registers the RandWire backbones and the RandWireClassifier
meta-architecture with Detectron2.
"""

from . import graphs, modeling
from .config import add_randwire_config
from .modeling import RandWire, RandWireClassifier

__version__ = "0.1.0"
