"""Writing an ONNX file: torch's TorchScript-based exporter (dynamo=False) at ONNX_OPSET."""

import torch
from torch import nn

from .formats import ONNX_OPSET

__all__ = ["export_onnx"]


def export_onnx(
    module: nn.Module, args: tuple, path: str, input_names, output_names=None, dynamic_axes=None
):
    """Write `module` traced on `args` to ONNX file `path`. torch attributes its exporter note to
    this module, which EXPORT_WARNINGS names."""
    torch.onnx.export(
        module,
        args,
        path,
        dynamo=False,
        opset_version=ONNX_OPSET,
        input_names=list(input_names),
        output_names=output_names,
        dynamic_axes=dynamic_axes,
    )
