"""S1 and S1b of issue 24 on a real, small tmpfs (needs root to mount; skipped otherwise).

S1: an 8 MB disk holding a 4096-row free-field ensemble, ``n_samples`` raised to 8192: one line, exit 2 (it was a
segfault, exit 139, with n_rows = 8192 over zeroed rows); the file verifies and holds exactly rows of the
uninterrupted run; on a larger disk the rerun completes with exact physics (χ₂ = V⟨m²⟩ within 3σ of the exact
free-field value, 2.5 in infinite volume). S1b: a new ensemble on a 2 MB disk: one line, exit 2, no temporary file.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from actions import exact
from latticeflow.io import open_ensemble, verify_ensemble

CONFIG = """seed: 3
action: {{theory: phi4, shape: [8, 8], kappa: 0.2, lam: 0.0}}
sampler: {{name: hmc, n_samples: {n}, n_chains: 16, n_thermalize: 100, n_leapfrog: 5, batch_size: 512}}
output: {{dir: {out}}}
"""


@pytest.fixture
def disk(tmp_path):
    """``mount(size)`` mounts a tmpfs of that size (e.g. "8m") at a fresh directory and returns it."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
        if res.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], capture_output=True)


def sample(config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "latticeflow", "sample", str(config), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)


def config(path: Path, out: Path, n: int) -> Path:
    path.write_text(CONFIG.format(n=n, out=out))
    return path


def test_S1_resume_on_full_tmpfs_is_one_line_then_completes_with_exact_physics(tmp_path, disk):
    ref_out = tmp_path / "ref"
    assert sample(config(tmp_path / "ref.yaml", ref_out, 8192)).returncode == 0
    with h5py.File(ref_out / "ensemble.h5", "r") as f:
        reference = f["samples"][:]

    small = disk("8m")
    out = small / "run"
    cfg = tmp_path / "run.yaml"
    assert sample(config(cfg, out, 4096)).returncode == 0
    res = sample(config(cfg, out, 8192))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("latticeflow: error: no space left on device"), lines
    assert "committed rows are intact; free space and rerun to resume" in lines[0]
    path = out / "ensemble.h5"
    assert verify_ensemble(path).ok
    with open_ensemble(path) as ens:
        n = ens.n_rows
        assert 4096 <= n < 8192 and n % 512 == 0
        np.testing.assert_array_equal(ens["samples"], reference[:n])  # exactly the rows that were written
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]

    subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
    res = sample(cfg)
    assert res.returncode == 0, res.stderr[-2000:]
    assert verify_ensemble(path).ok
    with open_ensemble(path) as ens:
        assert ens.n_rows == 8192
        np.testing.assert_array_equal(ens["samples"][:n], reference[:n])
        chi2 = ens.gamma("m2")
        volume = 64
        expected = exact.free_field_chi2((8, 8), 0.2)
        assert abs(volume * chi2.mean - expected) < 3 * volume * chi2.error, (volume * chi2.mean, expected)
        assert [h["rows_before"] for h in ens.history] == [0, 4096, n]


def test_S1b_new_ensemble_on_a_2m_tmpfs_is_one_line_and_leaves_no_temp_file(tmp_path, disk):
    small = disk("2m")
    out = small / "run"
    res = sample(config(tmp_path / "run.yaml", out, 4096))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("latticeflow: error: no space left on device"), lines
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")], os.listdir(out)
    path = out / "ensemble.h5"
    if path.exists():
        report = verify_ensemble(path)
        assert report.ok, report.lines()
