import os

# The Triton node kernels run on CPU tensors through Triton's interpreter, which Triton selects
# when a kernel is defined: set before anything imports randwire_d2.modeling.kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def one_thread():
    """Train on one intra-op thread: tiny models gain nothing from more, and on a busy 2-core
    machine oversubscribed OpenMP threads spin-wait and slow them down 10x or more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
