"""An MPI job whose rank 1 fails while rank 0 holds the output directory's lock ends with ``MPI_Abort``, which
skips rank 0's ``finally`` blocks: the failing rank removes the job's lock itself (rank 0 shared its token), so the
next command is not refused by a lock of a job that is gone (issue 24, review finding)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from latticeflow.distributed import launch_env

MPIEXEC = Path(sys.executable).parent / "mpiexec"
pytestmark = pytest.mark.skipif(not MPIEXEC.is_file(), reason="needs the mpiexec of the mpich wheel")

SCRIPT = """
import sys, time
from pathlib import Path
from latticeflow.distributed import abort_on_error, get_world
from latticeflow.io.lock import directory_lock
world = get_world()
assert world.size == 2
with directory_lock(Path(sys.argv[1]), "test", world):
    world.barrier()
    if world.rank == 1:
        abort_on_error(world, "disk full on rank 1", 2)
    time.sleep(60)  # rank 0 is busy writing when the job is aborted
"""


def test_lock_of_rank_0_is_released_when_another_rank_aborts(tmp_path):
    (tmp_path / "job.py").write_text(SCRIPT)
    out = tmp_path / "out"
    proc = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, str(tmp_path / "job.py"), str(out)],
                          env={**launch_env(), "LATTICEFLOW_MPI": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "disk full on rank 1" in proc.stderr
    assert out.is_dir() and not (out / ".latticeflow.lock").exists(), sorted(p.name for p in out.iterdir())
