"""Shared fixtures: deterministic seeds, and one intra-op thread per test.

The suite runs tiny lattices: one thread is faster than two (no thread overhead) and does not fight a
concurrently running process for the two cores (oversubscribed OpenMP threads slow torch down by an
order of magnitude). Restored after each test.
"""
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_single_thread():
    torch.manual_seed(1234)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
