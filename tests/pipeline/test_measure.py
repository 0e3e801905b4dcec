"""`latticeflow measure`: stored values equal a direct computation, provenance, refusals leave the ensemble
unchanged, a SIGKILL mid-way resumes to the same values, masters of MPI runs, analyze includes the result."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from actions import build_theory
from latticeflow.io import EnsembleWriter, open_ensemble, verify_ensemble, write_master
from latticeflow.io.measured import MEASURED_ATTR, partial_path
from latticeflow.pipeline import analyze
from latticeflow.pipeline.measure import measure

LATTICEFLOW = [sys.executable, "-m", "latticeflow"]
SHAPE = (4, 4)

OBS_MODULE = '''
import time
import numpy as np


def corner(phi):
    """phi(0,0) phi(1,1) per configuration."""
    return phi[:, 0, 0] * phi[:, 1, 1]


def scaled_row(phi, theory):
    return phi[:, 0, :] * theory.volume


def numpy_sq(phi):
    assert isinstance(phi, np.ndarray)
    return (phi ** 2).mean(axis=(1, 2))


def slow(phi):
    time.sleep(0.04)
    return phi.sum(dim=(1, 2))


def wrong_shape(phi):
    return phi[:2, 0, 0]


def not_finite(phi):
    out = phi[:, 0, 0].clone()
    out[3] = float("nan")
    return out


def boom(phi):
    raise RuntimeError("no such observable")
'''


def make_ensemble(path: Path, n_batches: int = 4, rows: int = 100, seed: int = 0, chains: int = 4) -> np.ndarray:
    """A φ⁴ 4×4 ensemble written batch by batch with every built-in observable; returns its samples."""
    theory = build_theory("phi4", SHAPE, {"kappa": 0.2, "lam": 0.1})
    rng = np.random.default_rng(seed)
    out = []
    with EnsembleWriter(path, theory="phi4", couplings={"kappa": 0.2, "lam": 0.1}, shape=SHAPE, field_shape=SHAPE,
                        sampler="hmc", seed=seed) as w:
        for b in range(n_batches):
            x = torch.from_numpy(rng.normal(size=(rows, *SHAPE)))
            i = np.arange(b * rows, (b + 1) * rows)
            w.append(x, theory.action(x), chain=i % chains, mc_index=i // chains, accepted=np.ones(rows, bool),
                     observables=theory.observables(x))
            out.append(x.numpy())
    return np.concatenate(out)


@pytest.fixture
def ensemble(tmp_path, monkeypatch):
    (tmp_path / "obs.py").write_text(OBS_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "e.h5"
    return path, make_ensemble(path)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_stored_values_equal_a_direct_computation_with_provenance(ensemble):
    path, x = ensemble
    s = measure(path, "obs:corner", progress=False, batch_size=64)
    assert s["name"] == "corner" and s["n_rows"] == 400 and s["shape"] == []
    measure(path, "obs:scaled_row", name="row", progress=False)
    measure(path, "obs.py:numpy_sq", name="sq", numpy_input=True, progress=False)
    with open_ensemble(path) as ens:  # the reader checks every batch's checksum of what it loads
        assert np.array_equal(ens["observables/corner"], x[:, 0, 0] * x[:, 1, 1])
        assert np.allclose(ens["observables/row"], x[:, 0, :] * 16, rtol=0, atol=1e-12)
        assert np.allclose(ens["observables/sq"], (x**2).mean(axis=(1, 2)), rtol=0, atol=1e-14)
        assert np.array_equal(ens["samples"], x)  # the rest is untouched
        prov = json.loads(ens.dataset("observables/corner").attrs[MEASURED_ATTR])
        assert prov["module"] == "obs" and prov["function"] == "corner" and prov["n_rows"] == 400
        assert prov["source_sha256"] == hashlib.sha256(OBS_MODULE.encode()).hexdigest()
    assert verify_ensemble(path).ok
    assert not partial_path(path, "corner").exists()
    result = analyze(str(path), reference=None)
    row = result.row("corner")
    direct = x[:, 0, 0] * x[:, 1, 1]
    assert row.result.mean == pytest.approx(direct.mean(), rel=1e-12)
    assert result.extra["measured"]["row"]["shape"] == [4]
    assert result.extra["measured"]["row"]["mean"] == pytest.approx((x[:, 0, :] * 16).mean(0), rel=1e-12)


@pytest.mark.parametrize("spec, text", [
    ("obs:wrong_shape", "obs:wrong_shape returned shape (2,) for a batch of"),
    ("obs:not_finite", "obs:not_finite returned a non-finite value for configuration 3"),
    ("obs:boom", "obs:boom raised RuntimeError: no such observable"),
    ("obs:nothing", "'obs' has no function 'nothing'"),
    ("nomodule_xyz:f", "cannot import 'nomodule_xyz'"),
    ("no_colon", "--observable must be module:function"),
])
def test_a_bad_function_gets_one_line_and_the_ensemble_is_unchanged(ensemble, spec, text, capsys):
    from latticeflow.cli import main

    path, _ = ensemble
    before = digest(path)
    status = main(["measure", str(path), "--observable", spec, "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("latticeflow: error:") and text in lines[0], err
    assert digest(path) == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["e.h5", "obs.py"] + (["__pycache__"] if (
        path.parent / "__pycache__").exists() else [])


def test_an_existing_name_and_more_sampling_are_refused(ensemble):
    path, _ = ensemble
    with pytest.raises(ValueError, match="already holds observables/m;"):
        measure(path, "obs:corner", name="m", progress=False)
    measure(path, "obs:corner", progress=False)
    before = digest(path)
    theory = build_theory("phi4", SHAPE, {"kappa": 0.2, "lam": 0.1})
    x = torch.zeros(4, *SHAPE, dtype=torch.float64)
    with EnsembleWriter(path, theory="phi4", couplings={"kappa": 0.2, "lam": 0.1}, shape=SHAPE, field_shape=SHAPE,
                        sampler="hmc", seed=0) as w:
        with pytest.raises(ValueError, match="added by `latticeflow measure`"):
            w.append(x, theory.action(x), chain=np.arange(4), mc_index=np.full(4, 100), accepted=np.ones(4, bool),
                     observables=theory.observables(x))
    assert digest(path) == before


def test_sigkill_mid_measurement_resumes_to_the_same_values(ensemble):
    path, x = ensemble
    before = digest(path)
    side = partial_path(path, "slow")
    cmd = [*LATTICEFLOW, "measure", str(path), "--observable", "obs:slow", "--batch-size", "8", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=path.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, done = time.time() + 60, 0
    while time.time() < deadline and done < 80:
        time.sleep(0.05)
        try:
            with h5py.File(side, "r", locking=False) as f:
                done = int(f.attrs.get("n_done", 0))
        except (OSError, KeyError):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 80 <= done < 400, done
    assert digest(path) == before  # nothing of the measurement is in the ensemble yet
    out = subprocess.run(cmd, cwd=path.parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    resumed = int(out.stdout.split("resumed after ")[1].split()[0])
    assert resumed >= 80
    with open_ensemble(path) as ens:
        assert np.allclose(ens["observables/slow"], x.sum(axis=(1, 2)), rtol=0, atol=1e-12)
    assert verify_ensemble(path).ok and not side.exists()


def test_a_master_file_is_measured_shard_by_shard(tmp_path, monkeypatch):
    (tmp_path / "obs.py").write_text(OBS_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    shards = [tmp_path / f"ensemble.rank{r}.h5" for r in range(2)]
    xs = [make_ensemble(s, n_batches=2, rows=50, seed=r) for r, s in enumerate(shards)]
    master = write_master(tmp_path / "ensemble.h5", shards, seed=0)
    s = measure(master, "obs:corner", progress=False)
    assert s["n_rows"] == 200 and len(s["files"]) == 2
    x = np.concatenate(xs)
    with open_ensemble(master) as ens:
        assert np.array_equal(ens["observables/corner"], x[:, 0, 0] * x[:, 1, 1])
    for shard in shards:
        assert verify_ensemble(shard).ok
