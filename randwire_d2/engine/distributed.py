"""Process-group helpers shared by the classification and detection trainers."""

import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["CloseProcessGroupAfter"]


class CloseProcessGroupAfter:
    """main_func(*args), then destroy the process group when one exists.

    A gloo group left for interpreter exit can abort the process ("terminate called without an
    active exception", SIGABRT) after its work is done. A class, not a closure, so that
    Detectron2's `launch` can pickle it into spawned processes.
    """

    def __init__(self, main_func):
        self.main_func = main_func

    def __call__(self, *args, **kwargs):
        try:
            return self.main_func(*args, **kwargs)
        finally:
            if dist.is_available() and dist.is_initialized():
                comm.synchronize()
                dist.destroy_process_group()
