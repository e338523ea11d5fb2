"""What the benchmarks share: the line that names the machine, and the tools they run."""

import importlib.util
import os
import platform
import sys
from types import ModuleType

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine(device=None) -> str:
    """The machine in one line: the GPU's name where `device` is a CUDA device, the CPU's model
    name, its CPU count, torch's intra-op threads, the 1-minute load average, torch's version."""
    cpu = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    text = (
        f"{cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"load average {os.getloadavg()[0]:.1f} (torch {torch.__version__})"
    )
    if device is not None and torch.device(device).type == "cuda":
        text = f"{torch.cuda.get_device_name(device)}, {text}"
    return text


def import_tool(name: str) -> ModuleType:
    """tools/`name`.py (a folder of scripts, not a package) as the module `name`."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(ROOT, "tools", f"{name}.py")
        )
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]
