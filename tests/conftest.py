"""Shared fixtures: deterministic seeds, and one intra-op thread per test.

The suite runs tiny lattices: one thread is faster than two (no thread overhead) and does not fight a
concurrently running process for the two cores (oversubscribed OpenMP threads slow torch down by an
order of magnitude). Restored after each test.

Device lanes: ``LATTICEFLOW_TEST_DEVICE=cuda`` (or ``cuda:1``, ...) runs the device-aware tests (those that
take the ``device`` fixture, e.g. tests/training/test_host_syncs.py) on that device; default ``cpu``.
tests/test_meta_device.py is the ``meta`` default-device lane (a tensor made without a device fails).
"""
import os

import pytest
import torch

TEST_DEVICE = os.environ.get("LATTICEFLOW_TEST_DEVICE", "cpu")


def pytest_configure(config):
    try:
        device = torch.device(TEST_DEVICE)
    except RuntimeError as err:
        raise pytest.UsageError(f"LATTICEFLOW_TEST_DEVICE={TEST_DEVICE!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"LATTICEFLOW_TEST_DEVICE={TEST_DEVICE!r} but torch sees no CUDA device")


@pytest.fixture
def device() -> torch.device:
    """The device of the device-aware tests (``LATTICEFLOW_TEST_DEVICE``, default cpu)."""
    return torch.device(TEST_DEVICE)


@pytest.fixture(autouse=True)
def _seed_and_single_thread():
    torch.manual_seed(1234)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
