"""Flow tests run tiny lattices: one intra-op thread is much faster than two (no thread overhead,
no oversubscription on a loaded 2-core machine). Restored after each test."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
