"""Shared fixtures: float64 by default, deterministic seeds."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(1234)
    yield
