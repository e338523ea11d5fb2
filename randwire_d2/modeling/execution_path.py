"""Which path a wired stage runs, decided once for the device its model runs on (when the model
is built or its execution is set), and said in the log with the reason."""

import logging
from typing import Tuple

import torch

__all__ = [
    "EXECUTIONS",
    "ExecutionPath",
    "KERNELS_MEASURED_FASTER",
    "KERNEL_DTYPES",
    "check_triton",
    "choose_execution",
    "runs_kernels",
]

logger = logging.getLogger(__name__)

# Stage execution modes, selected by MODEL.RANDWIRE.EXECUTION.
EXECUTIONS = ("fast", "reference", "triton", "eager")

# GPU generations (compute capability major) on which `benchmarks/kernels.py` measured the
# Triton node kernels faster than the eager fast path; EXECUTION "fast" runs them there only.
# No GPU run has measured them yet: "fast" is the eager fast path everywhere, "triton" opts in.
KERNELS_MEASURED_FASTER: Tuple[int, ...] = ()

# The kernels' dtypes; another (float64) runs the eager fast path.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_LOGGED = set()  # (execution, device, reason) already said in the log


class ExecutionPath:
    """How a wired stage runs, decided once for the device its model runs on: `requested`
    (MODEL.RANDWIRE.EXECUTION), `kernels` (whether separable-conv nodes run the Triton node
    kernels; the other nodes, and every node of a float64 model, run the eager fast path) and
    `reason` (why, as the log says it)."""

    def __init__(self, requested: str, kernels: bool, reason: str):
        self.requested, self.kernels, self.reason = requested, kernels, reason

    def __repr__(self):
        return f"ExecutionPath({self.requested!r}, kernels={self.kernels}: {self.reason})"


def check_triton(device: torch.device, key: str = "MODEL.RANDWIRE.EXECUTION") -> None:
    """EXECUTION "triton" (at config `key`) where the Triton node kernels cannot run on `device`
    is an error naming the reason (checked at setup and when the model is built)."""
    from . import kernels

    ok, why = kernels.runnable(device)
    if not ok:
        raise RuntimeError(
            f"{key}='triton' cannot run on {device}: {why}. Use EXECUTION 'fast' (the eager fast "
            "path) or 'reference'."
        )


def choose_execution(requested: str, device) -> ExecutionPath:
    """The path of EXECUTION `requested` for a model running on `device`, said in the log (once
    per execution, device and reason). "triton" where the kernels cannot run is an error."""
    device = torch.device(device)
    if requested not in EXECUTIONS:
        raise ValueError(f"EXECUTION={requested!r} is unknown: expected one of {list(EXECUTIONS)}")
    if requested == "reference":
        path = ExecutionPath(requested, False, "the per-node loop of Fig. 2 as written")
    elif requested == "eager":
        path = ExecutionPath(requested, False, "the eager fast path, as requested")
    elif requested == "triton" or device.type == "meta":  # meta: shapes only, the fake ops
        if requested == "triton":
            check_triton(device)
        path = ExecutionPath(
            requested, requested == "triton", "the fused Triton node kernels, as requested"
        )
    elif device.type != "cuda":
        path = ExecutionPath(
            requested,
            False,
            f"the eager fast path: the node kernels run on CUDA only, not {device}",
        )
    else:
        major, minor = torch.cuda.get_device_capability(device)
        if major in KERNELS_MEASURED_FASTER:
            check_triton(device)
            path = ExecutionPath(
                requested,
                True,
                f"the fused Triton node kernels, measured faster than the eager fast path on "
                f"compute capability {major}.x (execution_path.KERNELS_MEASURED_FASTER)",
            )
        else:
            path = ExecutionPath(
                requested,
                False,
                f"the eager fast path: no run of benchmarks/kernels.py has measured the Triton "
                f"node kernels faster on compute capability {major}.{minor} "
                f"(execution_path.KERNELS_MEASURED_FASTER = {KERNELS_MEASURED_FASTER}); "
                "EXECUTION 'triton' runs them",
            )
    said = (requested, str(device), path.reason)
    if said not in _LOGGED:
        _LOGGED.add(said)
        logger.info(f"EXECUTION {requested} on {device}: {path.reason}")
    return path


def runs_kernels(path: ExecutionPath, dtype: torch.dtype) -> bool:
    if not path.kernels:
        return False
    if dtype in KERNEL_DTYPES:
        return True
    said = ("dtype", str(dtype), "")
    if said not in _LOGGED:
        _LOGGED.add(said)
        logger.info(
            f"the Triton node kernels take {KERNEL_DTYPES}: {dtype} runs the eager fast path"
        )
    return False
