"""Quiet runs: ignore exactly the deprecation notes torch, fvcore and Detectron2 print on every
run (addressed to their authors), by message and module; every other warning still shows.
`quiet_export_warnings()` also ignores the notes of tracing and exporting, during an export
only. RANDWIRE_SHOW_ALL_WARNINGS=1 turns both off.

Standard library only, so `randwire_d2/__init__.py` can apply it before importing Detectron2.
"""

import contextlib
import logging
import os
import re
import warnings
from typing import Iterator, List, Tuple

__all__ = ["quiet_third_party_warnings", "quiet_export_warnings", "THIRD_PARTY_WARNINGS"]
__all__ += ["EXPORT_WARNINGS", "THIRD_PARTY_LOG_RECORDS", "SHOW_ALL_WARNINGS_ENV"]

SHOW_ALL_WARNINGS_ENV = "RANDWIRE_SHOW_ALL_WARNINGS"

# (category, message regex, module regex) of `warnings.warn` calls; the module is the one the
# warning is attributed to (torch's own for these: they are not issued at the caller's level).
THIRD_PARTY_WARNINGS = (
    # fvcore.nn (imported by detectron2.layers) scripts its focal losses on import.
    (FutureWarning, r"`torch\.jit\.script` is (deprecated|not supported)", r"torch\.jit\._script"),
    # detectron2's anchor generator, at the first detector forward.
    (UserWarning, r"torch\.meshgrid: in an upcoming release", r"torch\.functional"),
    # detectron2.model_zoo imports pkg_resources (setuptools < 81 is pinned for it); a LazyConfig
    # that calls model_zoo.get_config prints it from inside detectron2.config.lazy.
    (UserWarning, r"pkg_resources is deprecated as an API", r"detectron2\."),
)
# The same for the notes of an export, ignored only while it runs: each exported file is checked
# against the eager model at several input shapes, which is what these notes ask for.
EXPORT_WARNINGS = (
    # torch's TracerWarning (a subclass of Warning: this module does not import torch) on the
    # Python-side checks of Detectron2, torchvision and torch (`assert boxes.shape[-1] == 4`,
    # `if tensor.numel() == 0`), written to trace shape-generically. Those of randwire_d2 show.
    (
        Warning,
        r"(Converting a tensor to a Python \w+|Iterating over a tensor) might cause the trace",
        r"(detectron2|torchvision|torch)(\.|$)",
    ),
    # The TorchScript format is made and checked with these on purpose.
    (FutureWarning, r"`torch\.jit\.(trace|trace_method|save|load)` is deprecated", r"torch\.jit\."),
    # The ONNX exporter on Detectron2's `boxes[keep]` after NMS (indices never negative).
    (UserWarning, r"Exporting aten::index operator of advanced indexing", r"torch\.onnx\."),
    # The TorchScript-based ONNX exporter is chosen on purpose (dynamo=False, see export/onnx.py);
    # torch attributes the first note to its caller.
    (
        DeprecationWarning,
        r"You are using the legacy TorchScript-based ONNX",
        r"randwire_d2\.export\.onnx$",
    ),
    (DeprecationWarning, r"The feature will be removed", r"torch\.onnx\._internal\.torchscript_"),
)
# (logger name, message regex) of log records that torch writes at WARNING level.
THIRD_PARTY_LOG_RECORDS = (
    # Detectron2's fx-tracing check, at the first detector forward.
    ("torch.fx._symbolic_trace", r"is_fx_tracing will return true"),
    # Detectron2's environment report on a machine without CUDA (MODEL.DEVICE says what runs).
    ("torch.utils.cpp_extension", r"No CUDA runtime is found"),
)


class _DropMessages(logging.Filter):
    """Drops the records of one logger whose message matches a regex."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def _show_all() -> bool:
    return os.environ.get(SHOW_ALL_WARNINGS_ENV, "") not in ("", "0")


def _ignore(table) -> None:
    for category, message, module in table:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def _drop_log_records() -> List[Tuple[logging.Logger, _DropMessages]]:
    """Add the THIRD_PARTY_LOG_RECORDS filters each logger lacks; returns those added."""
    added = []
    for name, message in THIRD_PARTY_LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(
            isinstance(f, _DropMessages) and f.pattern.pattern == message for f in logger.filters
        ):
            added.append((logger, _DropMessages(message)))
            logger.addFilter(added[-1][1])
    return added


def quiet_third_party_warnings(logs: bool = True) -> bool:
    """Ignore THIRD_PARTY_WARNINGS (and with `logs` THIRD_PARTY_LOG_RECORDS) in this process
    unless RANDWIRE_SHOW_ALL_WARNINGS is set; idempotent; returns whether the filters are on."""
    if _show_all():
        return False
    _ignore(THIRD_PARTY_WARNINGS)
    if logs:
        _drop_log_records()
    return True


@contextlib.contextmanager
def quiet_export_warnings() -> Iterator[bool]:
    """Context manager (or decorator) ignoring THIRD_PARTY_WARNINGS, EXPORT_WARNINGS and
    THIRD_PARTY_LOG_RECORDS until exit, unless RANDWIRE_SHOW_ALL_WARNINGS is set; yields whether
    the filters are on."""
    with warnings.catch_warnings():
        quiet = not _show_all()
        added = []
        if quiet:
            _ignore(THIRD_PARTY_WARNINGS + EXPORT_WARNINGS)
            added = _drop_log_records()
        try:
            yield quiet
        finally:
            for logger, f in added:
                logger.removeFilter(f)
