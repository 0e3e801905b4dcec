"""``mpiexec -n 2 latticeflow …`` end to end (needs the mpich wheel and mpi4py): one line of output,
a master file that ``analyze`` reads as replicas, a failing rank that ends the whole job with its
message, and the MPI test lane refusing a world of the wrong size."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latticeflow.io import open_ensemble

pytest.importorskip("mpi4py")
ROOT = Path(__file__).resolve().parents[2]
MPIEXEC = Path(sys.executable).parent / "mpiexec"
pytestmark = pytest.mark.skipif(not MPIEXEC.is_file(), reason="needs the mpiexec of the mpich wheel")
U1 = ("name: t\nseed: 3\naction: {theory: u1, shape: [8, 8], beta: 2.0}\n"
      "sampler: {n_samples: N, n_chains: 16, n_thermalize: 50, batch_size: 256}\noutput: {dir: out}\n")


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "MPI_", "HYDRA_"))}
    e["OMP_NUM_THREADS"] = "1"
    return e


def mpirun(n, *args, cwd, timeout=300):
    return subprocess.run([str(MPIEXEC), "-n", str(n), sys.executable, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env())


def test_mpiexec_sample_prints_once_and_analyze_combines_the_replicas(tmp_path):
    (tmp_path / "c.yaml").write_text(U1.replace("N", "1024"))
    proc = mpirun(2, "-m", "latticeflow", "sample", "c.yaml", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("wrote") == 1 and "2048 configurations" in proc.stdout
    res = subprocess.run([sys.executable, "-m", "latticeflow", "analyze", "out/ensemble.h5", "--json"], cwd=tmp_path,
                         capture_output=True, text=True, env=env(), check=True)
    out = json.loads(res.stdout)
    assert out["n_rows"] == 2048 and out["n_chains"] == 32


def test_a_failing_rank_ends_the_job_with_its_message_and_shards_stay_readable(tmp_path):
    (tmp_path / "c.yaml").write_text(U1.replace("N", "100000000"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ensemble.r001.h5").write_text("not hdf5")  # rank 1 cannot open its shard
    t0 = time.time()
    proc = mpirun(2, "-m", "latticeflow", "sample", "c.yaml", "--no-progress", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and time.time() - t0 < 60
    assert "error on rank 1 of 2" in proc.stderr and "not an HDF5 file" in proc.stderr
    shard = tmp_path / "out" / "ensemble.r000.h5"
    if shard.exists():  # whatever rank 0 had committed is a valid ensemble
        for _ in range(100):  # mpiexec may return while the killed rank 0 still holds its HDF5 file lock
            try:
                ens = open_ensemble(shard)
                break
            except BlockingIOError:
                time.sleep(0.1)
        with ens:
            assert ens.n_rows % 16 == 0


def test_mpi_lane_refuses_a_one_rank_world(tmp_path):
    proc = mpirun(1, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests/mpi/test_training.py"),
                  "-k", "odd", cwd=tmp_path)
    assert proc.returncode != 0 and "need exactly 2 MPI ranks" in proc.stdout


PHI4 = ("name: t\nseed: 5\ndtype: float64\naction: {theory: phi4, shape: [8, 8], kappa: 0.2, lam: 0.0}\n"
        "flow: {family: z2nice, n_layers: 2, conditioner: cnn, hidden: [8]}\n"
        "train: {steps: 6, batch_size: 64, log_every: 3, checkpoint_every: 3}\n")


def test_mpiexec_train_equals_one_process_with_the_same_global_batch(tmp_path):
    import torch

    (tmp_path / "c.yaml").write_text(PHI4)
    par = mpirun(2, "-m", "latticeflow", "train", "c.yaml", "--no-progress", "--set", "output.dir=two", cwd=tmp_path)
    one = subprocess.run([sys.executable, "-m", "latticeflow", "train", "c.yaml", "--no-progress", "--set",
                          "output.dir=one"], cwd=tmp_path, capture_output=True, text=True, env=env())
    assert par.returncode == 0 and one.returncode == 0, par.stderr + one.stderr
    assert par.stdout.count("trained 6 steps") == 1
    a = torch.load(tmp_path / "two/checkpoints/latest.pt", weights_only=False)["flow"]
    b = torch.load(tmp_path / "one/checkpoints/latest.pt", weights_only=False)["flow"]
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()) < 1e-10
