"""Shared fixtures: deterministic seeds, and one intra-op thread per test.

The suite runs tiny lattices: one thread is faster than two (no thread overhead) and does not fight a
concurrently running process for the two cores (oversubscribed OpenMP threads slow torch down by an
order of magnitude). Restored after each test.

Parallel workers: the README's test command runs the suite with pytest-xdist (``-n 2``); each worker is pinned
to its own core here, so the two never fight over one (its CLI subprocesses inherit the core and default to one
thread), and `heavy_threads` gives the few tests large enough for two threads only the cores they have.

Device lanes: ``LATTICEFLOW_TEST_DEVICE=cuda`` (or ``cuda:1``, ...) runs the device-aware tests (those that
take the ``device`` fixture, e.g. tests/training/test_host_syncs.py) on that device; default ``cpu``.
tests/test_meta_device.py is the ``meta`` default-device lane (a tensor made without a device fails).
"""
import os

import pytest
import torch

TEST_DEVICE = os.environ.get("LATTICEFLOW_TEST_DEVICE", "cpu")


def _pin_xdist_worker() -> None:
    """Worker ``gwN`` of pytest-xdist runs on core N (mod the cores available): two workers with one thread
    each use both cores of the CI machine without oversubscribing either."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[int(worker[2:]) % len(cores)]})


def heavy_threads(n: int = 2) -> int:
    """Threads for a test large enough to use ``n``: at most the cores this process may run on."""
    return max(1, min(n, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else n))


def pytest_configure(config):
    _pin_xdist_worker()
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
