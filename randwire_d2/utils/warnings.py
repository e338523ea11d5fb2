"""Quiet runs: the deprecation notes that torch, fvcore and Detectron2 print on every run.

They are addressed to those libraries' authors (fvcore calls `torch.jit.script` on import,
Detectron2 calls `torch.meshgrid` without `indexing`), repeat in every process of a run, and bury
the lines a user should read. `quiet_third_party_warnings()` ignores exactly these messages, by
message and module; every other warning, randwire_d2's own and its log records included, still
shows. RANDWIRE_SHOW_ALL_WARNINGS=1 in the environment turns it off.

This module imports only the standard library, so that `randwire_d2/__init__.py` can apply it
before it imports Detectron2, whose imports print some of these notes.
"""

import logging
import os
import re
import warnings

__all__ = [
    "quiet_third_party_warnings",
    "THIRD_PARTY_WARNINGS",
    "THIRD_PARTY_LOG_RECORDS",
    "SHOW_ALL_WARNINGS_ENV",
]

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


def quiet_third_party_warnings(logs: bool = True) -> bool:
    """Ignore the known third-party notes (THIRD_PARTY_WARNINGS, and with `logs` the
    THIRD_PARTY_LOG_RECORDS) in this process, unless RANDWIRE_SHOW_ALL_WARNINGS is set to
    anything but "" or "0". Idempotent; returns whether the filters are in place."""
    if os.environ.get(SHOW_ALL_WARNINGS_ENV, "") not in ("", "0"):
        return False
    for category, message, module in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    if logs:
        for name, message in THIRD_PARTY_LOG_RECORDS:
            logger = logging.getLogger(name)
            if not any(
                isinstance(f, _DropMessages) and f.pattern.pattern == message
                for f in logger.filters
            ):
                logger.addFilter(_DropMessages(message))
    return True
