"""Issue 24, item 1: the MPI master-file writer under fault injection. With the n-th write operation of
`write_master` failing (ENOSPC, EIO) for every n: a one-line error naming the master file, the previous master
intact and readable (its rows and data as before), every shard untouched, no temporary file left, and a rerun
writes the new master. (The MPI lane checks the same through ``sample`` on 2 ranks:
``tests/mpi/test_rank_counts.py``.)"""
from __future__ import annotations

import hashlib
import os
import shutil

import h5py
import numpy as np
import pytest

from latticeflow.config import config_from_dict
from latticeflow.io import open_ensemble, verify_ensemble, write_master
from latticeflow.pipeline import sample
from tests.faults.injector import EIO, ENOSPC, count_calls, fail_nth, record

#: every write (and file opening by name) of the master writer: HDF5 files, attributes, virtual datasets, fsync, rename
TARGETS = [(h5py._hl.files, "make_fid"), (h5py.AttributeManager, "__setitem__"), (h5py.Group, "create_virtual_dataset"),
           (os, "open"), (os, "fsync"), (os, "replace")]


def _ensemble(out, n_samples: int, seed: int = 5):
    cfg = config_from_dict({"name": "m", "seed": seed,
                            "action": {"theory": "phi4", "shape": [4, 4], "kappa": 0.2, "lam": 0.0},
                            "sampler": {"n_samples": n_samples, "n_chains": 4, "n_thermalize": 10, "batch_size": 32},
                            "output": {"dir": str(out)}})
    return sample(cfg, "", progress=False).path


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _read(master) -> tuple[int, np.ndarray]:
    with open_ensemble(master) as ens:
        return ens.n_rows, np.asarray(ens["action"])


@pytest.fixture
def shards(tmp_path):
    """Two shards (64 rows each) with their master; then r001 grows to 128 rows: the master is out of date."""
    short = _ensemble(tmp_path / "a", 64)
    long_ = _ensemble(tmp_path / "b", 128)
    d = tmp_path / "run"
    d.mkdir()
    paths = [d / "ensemble.r000.h5", d / "ensemble.r001.h5"]
    shutil.copy(short, paths[0])
    shutil.copy(short, paths[1])
    write_master(d / "ensemble.h5", paths, seed=5)
    shutil.copy(long_, paths[1])
    return d, paths


def test_master_writer_fails_at_every_write_op_with_enospc_and_eio(shards):
    d, paths = shards
    master = d / "ensemble.h5"
    old_rows, old_action = _read(master)
    assert old_rows == 128
    shard_digests = [_digest(p) for p in paths]
    saved = d.parent / "master.saved"
    shutil.copy(master, saved)
    n_ops = count_calls(TARGETS, lambda: write_master(master, paths, seed=5))
    new_rows, new_action = _read(master)
    assert new_rows == 192 and n_ops >= 10
    problems: list[str] = []
    points = 0
    for err in (ENOSPC, EIO):
        for n in range(1, n_ops + 1):
            shutil.copy(saved, master)
            where = f"errno {err}, op {n}"
            with fail_nth(TARGETS, n, err) as state:
                try:
                    write_master(master, paths, seed=5)
                    raised = None
                except OSError as exc:
                    raised = exc
            points += state["fired"]
            where += f" ({state['at']})"
            if raised is None or "\n" in str(raised) or str(master) not in str(raised):
                problems.append(f"{where}: raised {raised!r}")
            rows, action = _read(master)  # old or (failure after the rename) new, never anything else
            if not ((rows, action.tobytes()) in ((old_rows, old_action.tobytes()), (new_rows, new_action.tobytes()))):
                problems.append(f"{where}: master has {rows} rows")
            if not verify_ensemble(master).ok:
                problems.append(f"{where}: the master does not verify")
            if [_digest(p) for p in paths] != shard_digests:
                problems.append(f"{where}: a shard changed")
            left = [p.name for p in d.iterdir() if p.name.endswith(".tmp")]
            if left:
                problems.append(f"{where}: left {left}")
            write_master(master, paths, seed=5)  # the rerun
            rows, action = _read(master)
            if rows != new_rows or not np.array_equal(action, new_action):
                problems.append(f"{where}: the rerun wrote {rows} rows")
    record(points, lost=len(problems), cases=2)
    assert points == 2 * n_ops
    assert not problems, "\n".join(problems)
