"""Issue 24, items 5 and 10: every check that can refuse a run runs before its first write. A refused resume
(not whole sweeps, another ``n_chains``), a serial ``sample`` into a directory of MPI shards (with or without
master file), ``mpiexec`` with another rank count, and a ``config.yaml`` that differs: one line, exit 2, and
the directory byte for byte as it was."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from latticeflow.cli import main
from latticeflow.config import config_from_dict
from latticeflow.io import open_ensemble, write_master
from latticeflow.pipeline.rundir import MAY_DIFFER, config_difference

PHI4 = ("name: t\nseed: 3\naction: {theory: phi4, shape: [4, 4], kappa: 0.2, lam: 0.0}\n"
        "sampler: {n_samples: 64, n_chains: 4, n_thermalize: 10, batch_size: 32}\noutput: {dir: out}\n")


def snapshot(directory: Path) -> dict[str, str]:
    """Every file below ``directory`` (hidden ones included) with the hash of its bytes."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def ran(tmp_path, monkeypatch):
    """A directory with ``c.yaml`` and a finished 64-row HMC ensemble in ``out/``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(PHI4)
    assert main(["sample", "c.yaml", "--no-progress"]) == 0
    return tmp_path


def refused(capsys, *args: str) -> str:
    assert main([*args, "--no-progress"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latticeflow: error:"), captured.err
    assert captured.out == ""
    return lines[0]


def _make_dirty(path: Path, n_rows: int) -> None:
    """Set the committed row count below the datasets' length (a batch cut short): the writer would repair it."""
    with h5py.File(path, "r+") as f:
        f.attrs.modify("n_rows", np.int64(n_rows))


def test_refused_resume_not_whole_sweeps_leaves_the_file_untouched(ran, capsys):
    _make_dirty(ran / "out" / "ensemble.h5", 62)
    before = snapshot(ran)
    line = refused(capsys, "sample", "c.yaml", "--set", "sampler.n_samples=128")
    assert "not a whole number of sweeps" in line
    assert snapshot(ran) == before


def test_refused_resume_with_another_n_chains_leaves_the_file_untouched(ran, capsys):
    _make_dirty(ran / "out" / "ensemble.h5", 60)  # dirty, but whole sweeps: only n_chains refuses
    before = snapshot(ran)
    line = refused(capsys, "sample", "c.yaml", "--set", "sampler.n_chains=2")
    assert "n_chains" in line and "written with n_chains=4" in line
    assert snapshot(ran) == before


def test_refused_resume_of_another_coupling_leaves_dirty_file_untouched(ran, capsys):
    _make_dirty(ran / "out" / "ensemble.h5", 60)
    before = snapshot(ran)
    assert "kappa" in refused(capsys, "sample", "c.yaml", "--set", "action.kappa=0.1")
    assert snapshot(ran) == before


def _fake_shards(out: Path, ranks: int, master: bool) -> None:
    """Turn the serial ensemble of ``out`` into the shards (and master) of a ``ranks``-rank MPI run."""
    src = out / "ensemble.h5"
    shards = [out / f"ensemble.r{r:03d}.h5" for r in range(ranks)]
    for s in shards:
        shutil.copy(src, s)
    os.unlink(src)
    if master:
        write_master(src, shards, seed=3)


@pytest.mark.parametrize("master", [True, False])
def test_serial_sample_into_a_directory_of_shards_is_refused(ran, capsys, master):
    _fake_shards(ran / "out", 3, master)
    before = snapshot(ran)
    line = refused(capsys, "sample", "c.yaml", "--set", "sampler.n_samples=128")
    assert "mpiexec -n 3" in line and ("master file" in line if master else "shards" in line)
    assert snapshot(ran) == before


def test_config_yaml_that_differs_is_refused_naming_the_key_and_nothing_is_written(ran, capsys):
    before = snapshot(ran)
    line = refused(capsys, "sample", "c.yaml", "--set", "sampler.n_leapfrog=7", "--set", "sampler.n_samples=128")
    assert "config.yaml" in line and "'sampler.n_leapfrog'" in line and "(10 there, 7 here)" in line
    assert snapshot(ran) == before


def test_config_yaml_in_a_fresh_output_dir_that_differs_is_refused(tmp_path, monkeypatch, capsys):
    """The user's own config.yaml in output.dir (no ensemble yet) is not overwritten by another config."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.yaml").write_text(PHI4.replace("seed: 3", "seed: 4"))
    (tmp_path / "c.yaml").write_text(PHI4)
    before = snapshot(tmp_path)
    assert "'seed'" in refused(capsys, "sample", "c.yaml")
    assert snapshot(tmp_path) == before


def test_config_yaml_that_is_the_same_config_unresolved_is_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.yaml").write_text(PHI4)  # the user's file, without the defaults filled in
    (tmp_path / "c.yaml").write_text(PHI4)
    assert main(["sample", "c.yaml", "--no-progress"]) == 0


def test_budget_keys_may_differ_on_resume_and_config_yaml_follows(ran):
    assert main(["sample", "c.yaml", "--no-progress", "--set", "sampler.n_samples=128"]) == 0
    assert yaml.safe_load((ran / "out" / "config.yaml").read_text())["sampler"]["n_samples"] == 128
    with open_ensemble(ran / "out" / "ensemble.h5") as ens:
        assert ens.n_rows == 128
    assert not [p for p in (ran / "out").iterdir() if p.name.endswith(".tmp")]


def test_train_refuses_a_config_yaml_that_differs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flow = ("name: f\nseed: 1\naction: {theory: phi4, shape: [4, 4], kappa: 0.2, lam: 0.0}\n"
            "flow: {family: z2affine, n_layers: 2, hidden: [4]}\ntrain: {steps: 2, batch_size: 8, log_every: 1}\n"
            "output: {dir: out}\n")
    (tmp_path / "c.yaml").write_text(flow)
    assert main(["train", "c.yaml", "--no-progress"]) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert "'train.lr'" in refused(capsys, "train", "c.yaml", "--set", "train.lr=0.01", "--set", "train.steps=4")
    assert snapshot(tmp_path) == before
    assert main(["train", "c.yaml", "--no-progress", "--set", "train.steps=4"]) == 0  # a budget: resumes


def test_config_difference_ignores_exactly_the_documented_keys():
    base = config_from_dict(yaml.safe_load(PHI4))
    from latticeflow.config import config_to_yaml

    text = config_to_yaml(base)
    tree = yaml.safe_load(text)
    assert config_difference(text, text) is None
    tree["sampler"]["n_samples"] = 10**6
    tree["train"]["steps"] = 7
    assert config_difference(text, yaml.safe_dump(tree)) is None
    tree["dtype"] = "float32"
    assert config_difference(text, yaml.safe_dump(tree))[0] == "dtype"
    assert "sampler.n_samples" in MAY_DIFFER and "seed" not in MAY_DIFFER


MPIEXEC = Path(sys.executable).parent / "mpiexec"


@pytest.mark.skipif(not MPIEXEC.is_file(), reason="needs the mpiexec of the mpich wheel")
def test_mpi_three_shards_two_ranks_refused_in_one_line_via_cli(ran):
    """Without a master file, ``-n 2`` over 3 shards used to rebuild ensemble.h5 from r000 and r001 only."""
    _fake_shards(ran / "out", 3, master=False)
    before = snapshot(ran)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "MPI_", "HYDRA_"))}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-m", "latticeflow", "sample", "c.yaml",
                           "--no-progress", "--set", "sampler.n_samples=128"], cwd=ran, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "3-rank MPI run" in lines[0] and "mpiexec -n 3" in lines[0], proc.stderr
    assert snapshot(ran) == before
