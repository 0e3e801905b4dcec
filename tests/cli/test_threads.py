"""Issue 24, item 7 / row T: ``--threads`` on every command, the ``threads:`` config key, a default that
never starts more compute threads than the process's cores, and ``run`` finishing when ``OMP_NUM_THREADS``
asks for more threads than there are cores."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

import latticeflow.resources as resources
from latticeflow.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
TINY_HMC = ("name: threads\n"
            "action: {theory: phi4, shape: [4, 4], kappa: 0.2, lam: 0.0}\n"
            "sampler: {n_samples: 16, n_chains: 2, n_thermalize: 2}\n")
TINY_FLOW = ("name: tiny_flow\n"
             "seed: 1\n"
             "dtype: float32\n"
             "action: {theory: phi4, shape: [8, 8], kappa: 0.2, lam: 0.0}\n"
             "flow: {family: spline}\n"
             "train: {steps: 3, batch_size: 32, log_every: 1, checkpoint_every: 3}\n"
             "sampler: {name: nmcmc, n_samples: 256, batch_size: 128, reference_hmc: 128, n_chains: 4,"
             " n_thermalize: 10}\n")


def _one_core() -> None:
    """preexec_fn: run the child on one core only (the first of this process's cores)."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "LATTICEFLOW_DEBUG")}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


@pytest.mark.parametrize("argv", [["sample", "c.yaml"], ["train", "c.yaml"], ["run", "c.yaml"],
                                  ["analyze", "e.h5"], ["verify", "e.h5"], ["bench", "gradients"]])
def test_threads_option_on_every_command(argv):
    assert build_parser().parse_args([*argv, "--threads", "3"]).threads == "3"


def test_available_cores_follow_affinity_quota_and_ranks_on_the_host(monkeypatch):
    for var in resources.LOCAL_SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(resources, "_cgroup_quota", lambda: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert resources.available_cores() == 8
    monkeypatch.setenv("MPI_LOCALNRANKS", "3")  # 3 unbound ranks on an 8-core host: 2 cores each
    assert resources.available_cores() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5})  # bound by the launcher: its cores
    assert resources.available_cores() == 2
    monkeypatch.setenv("MPI_LOCALNRANKS", "16")  # more ranks than cores: one thread each
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert resources.available_cores() == 1
    monkeypatch.delenv("MPI_LOCALNRANKS")
    monkeypatch.setattr(resources, "_cgroup_quota", lambda: 3)  # docker --cpus 2.5
    assert resources.available_cores() == 3
    assert resources.default_threads(64) == 3 and resources.default_threads(2) == 2


def test_T_default_threads_follow_the_affinity_not_OMP_NUM_THREADS():
    code = ("import torch\nfrom latticeflow.resources import configure_threads\n"
            "print(configure_threads(), torch.get_num_threads(), torch.get_num_interop_threads())")
    out = subprocess.run([sys.executable, "-c", code], env=_env(OMP_NUM_THREADS="8"), preexec_fn=_one_core,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "1"]


def test_threads_flag_wins_over_config_key_which_wins_over_the_default(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(TINY_HMC + "threads: 3\n")
    assert main(["sample", "c.yaml", "--no-progress"]) == 0
    assert torch.get_num_threads() == 3
    assert main(["sample", "c.yaml", "--no-progress", "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2
    (tmp_path / "c.yaml").write_text(TINY_HMC)
    assert main(["sample", "c.yaml", "--no-progress"]) == 0
    assert torch.get_num_threads() <= resources.available_cores()
    assert main(["analyze", "runs/threads/ensemble.h5", "--threads", "1", "--json"]) == 0
    assert torch.get_num_threads() == 1
    capsys.readouterr()


def test_T_run_with_oversubscribed_threads_finishes(tmp_path):
    """Row T: ``run`` of a flow config with OMP_NUM_THREADS=8 on one core finishes (it hung after sampling)."""
    (tmp_path / "tiny.yaml").write_text(TINY_FLOW)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "latticeflow", "run", "tiny.yaml", "--no-progress"],
                         env=_env(OMP_NUM_THREADS="8", MKL_NUM_THREADS="8", OPENBLAS_NUM_THREADS="8"),
                         preexec_fn=_one_core, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "runs" / "tiny_flow" / "summary.json").is_file()
    assert "forward ESS/N of the flow on the HMC ensemble" in out.stdout
    assert time.monotonic() - t0 < 240


def test_keep_heap_applies_on_glibc_and_leaves_user_tuning_alone(monkeypatch):
    """On glibc `keep_heap` applies its three mallopt settings (True); where the user tuned glibc through a
    MALLOC_*_ variable, or on another C library, it changes nothing and says so (False)."""
    is_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    for key in [k for k in os.environ if k.startswith("MALLOC_") and k.endswith("_")]:
        monkeypatch.delenv(key)
    assert resources.keep_heap() is is_glibc
    monkeypatch.setenv("MALLOC_ARENA_MAX_", "2")
    assert resources.keep_heap() is False


_HMC_FAULTS = """
import resource, sys, torch
from actions import Phi4
from latticeflow.samplers.hmc import HMC
if sys.argv[1] == "keep":
    from latticeflow.resources import keep_heap
    assert keep_heap()
torch.set_num_threads(1)
hmc = HMC(Phi4((64, 64), kappa=0.337, lam=0.5), n_leapfrog=12, step_size=0.08,
          generator=torch.Generator().manual_seed(0))
x = hmc.step(torch.randn(16, 64, 64, dtype=torch.float64)).x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    x = hmc.step(x).x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_keep_heap_stops_hmc_page_faulting_on_every_step():
    """The fault `keep_heap` removes: 16 HMC chains on 64 × 64 (float64, 0.5 MB per field) free and reallocate
    their tensors every leapfrog step; under glibc's defaults the freed heap top is returned to the kernel and
    every reuse page-faults (~2600 faults per trajectory measured), with `keep_heap` the heap keeps it (~60)."""
    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        pytest.skip("glibc's allocator only")
    env = {k: v for k, v in os.environ.items() if not (k.startswith("MALLOC_") and k.endswith("_"))}
    env["PYTHONPATH"] = str(ROOT)
    faults = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", _HMC_FAULTS, mode], capture_output=True, text=True, env=env,
                             cwd=ROOT, timeout=300)
        assert out.returncode == 0, out.stderr
        faults[mode] = int(out.stdout.split()[-1])
    assert faults["keep"] * 5 < faults["default"], faults
