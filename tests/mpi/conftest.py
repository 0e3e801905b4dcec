"""The MPI lane: ``mpiexec -n 2 python -m pytest -p no:cacheprovider tests/mpi``.

Without an MPI launcher every test here is skipped. Under one, the world must have exactly 2 ranks:
a launcher whose MPI differs from mpi4py's starts two single-rank jobs, and a one-rank launch does not
exercise anything; both fail loudly. Both ranks run the same tests in the same order, so collectives
match; tests share one directory made by rank 0 (``shared_dir``), never pytest's ``tmp_path``.
"""
from __future__ import annotations

import faulthandler
import shutil
import tempfile
from pathlib import Path

import pytest

from latticeflow.distributed import get_world, init_torch_distributed, launched_by_mpi, launcher_size, shutdown

UNDER_MPI = launched_by_mpi()
WATCHDOG_SECONDS = 600  # the lane takes ~15 s


def pytest_collection_modifyitems(config, items):
    if UNDER_MPI:
        return
    skip = pytest.mark.skip(reason="needs 'mpiexec -n 2 python -m pytest -p no:cacheprovider tests/mpi'")
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(skip)
            item.add_marker(pytest.mark.mpi)


@pytest.fixture(scope="session")
def world():
    """The 2-rank world with torch.distributed (gloo) joined; left cleanly at the end of the session."""
    from mpi4py import MPI

    size = MPI.COMM_WORLD.size
    assert size == 2, (f"tests/mpi need exactly 2 MPI ranks, MPI.COMM_WORLD.size is {size} (launcher says "
                       f"{launcher_size()}): run 'mpiexec -n 2' with the mpiexec of mpi4py's MPI")
    w = get_world()
    init_torch_distributed(w, "cpu")
    # a test that fails on one rank only could leave the other waiting in a collective: never hang CI
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    yield w
    faulthandler.cancel_dump_traceback_later()
    shutdown(w)


@pytest.fixture
def shared_dir(world):
    """A fresh directory made by rank 0 and seen by both ranks; removed after the test."""
    path = world.bcast(tempfile.mkdtemp(prefix="latticeflow-mpi-") if world.is_main else None)
    yield Path(path)
    world.barrier()
    if world.is_main:
        shutil.rmtree(path, ignore_errors=True)
