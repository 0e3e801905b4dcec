"""Issue 24, items 2 and 5: every check that can refuse a resume runs before any write (also across the steps
of ``latticeflow run``), and a damaged tail of a chain ensemble is cut back to the last good batch on resume
(with a message naming the rows dropped) instead of refusing the resume."""
from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from latticeflow.cli import main
from latticeflow.io import open_ensemble, verify_ensemble
from tests.faults.test_damaged_files import flip

PHI4 = ("name: t\nseed: 3\naction: {{theory: phi4, shape: [4, 4], kappa: 0.2, lam: 0.0}}\n"
        "sampler: {{n_samples: {n}, n_chains: 4, n_thermalize: 10, batch_size: 32}}\noutput: {{dir: out}}\n")


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def hmc(tmp_path, monkeypatch):
    """A finished 64-row HMC ensemble (two batches of 32 rows, 4 chains) in ``out/``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(PHI4.format(n=64))
    assert main(["sample", "c.yaml", "--no-progress"]) == 0
    (tmp_path / "c.yaml").write_text(PHI4.format(n=96))
    return tmp_path / "out" / "ensemble.h5"


def _resumes_after_cut(path: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["sample", "c.yaml", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "dropping its last 32 rows" in err, err
    assert verify_ensemble(path).ok
    with open_ensemble(path) as ens:
        assert ens.n_rows == 96
    with h5py.File(path, "r") as f:
        chain, mc = f["chain"][:96], f["mc_index"][:96]
    assert np.array_equal(chain, np.tile(np.arange(4), 24))
    assert np.array_equal(mc[::4], np.arange(24) * int(mc[4] - mc[0]))  # every chain continues without a gap


def test_damaged_last_sweep_is_cut_back_and_sample_resumes(hmc, capsys):
    flip(hmc, "samples", 62)  # the last sweep, in the last batch (rows 32-63)
    _resumes_after_cut(hmc, capsys)


def test_n_rows_past_the_end_is_cut_back_and_sample_resumes(hmc, capsys):
    with h5py.File(hmc, "r+") as f:
        f.attrs.modify("n_rows", np.int64(96))
    capsys.readouterr()
    assert main(["sample", "c.yaml", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "dropping its last 32 rows" in err and "chains []" not in err, err
    assert verify_ensemble(hmc).ok
    with open_ensemble(hmc) as ens:
        assert ens.n_rows == 96


FLOW = ("name: f\nseed: 1\ndtype: float32\naction: {{theory: phi4, shape: [4, 4], kappa: 0.2, lam: 0.0}}\n"
        "flow: {{family: spline}}\ntrain: {{steps: {steps}, batch_size: 16, log_every: 1, checkpoint_every: 2}}\n"
        "sampler: {{name: nmcmc, n_samples: 64, batch_size: 32, reference_hmc: {ref}, n_chains: 4, "
        "n_thermalize: 5}}\noutput: {{dir: out}}\n")


def test_run_refusal_changes_nothing_in_any_step(tmp_path, monkeypatch, capsys):
    """A flow ensemble that cannot be resumed (a damaged batch in the middle) is refused before the HMC
    reference is extended or training resumes: every file of the run directory is as it was."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(FLOW.format(steps=2, ref=32))
    assert main(["run", "c.yaml", "--no-progress"]) == 0
    flip(tmp_path / "out" / "ensemble.h5", "samples", 3)  # batch 0 of 2: later batches intact
    (tmp_path / "c.yaml").write_text(FLOW.format(steps=4, ref=64))
    before = snapshot(tmp_path / "out")
    capsys.readouterr()
    assert main(["run", "c.yaml", "--no-progress"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "refusing to resume, nothing was changed" in lines[0], captured.err
    assert snapshot(tmp_path / "out") == before
