"""Gradient-estimator tests run tiny lattices: one intra-op thread is faster than two and does not fight a
concurrently running benchmark for the cores. Restored after each test."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
