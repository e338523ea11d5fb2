import pytest
import torch


@pytest.fixture
def one_thread():
    """Train on one intra-op thread: tiny models gain nothing from more, and on a busy 2-core
    machine oversubscribed OpenMP threads spin-wait and slow them down 10x or more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
