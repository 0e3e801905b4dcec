"""The command line end to end: sample → analyze, SIGKILL and resume, refusals, one-line errors."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from latticeflow.io import open_ensemble

ROOT = Path(__file__).resolve().parents[2]
LATTICEFLOW = [sys.executable, "-m", "latticeflow"]


def run(*args, cwd, check=True):
    proc = subprocess.run([*LATTICEFLOW, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"latticeflow {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_config(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


U1 = "name: t\nseed: 3\naction: {theory: u1, shape: [8, 8], beta: 2.0}\n" \
     "sampler: {n_samples: 4096, n_chains: 16, n_thermalize: 100, batch_size: 256}\noutput: {dir: out}\n"


def test_sample_then_analyze_json(tmp_path):
    cfg = write_config(tmp_path, U1)
    out = run("sample", str(cfg), "--no-progress", cwd=tmp_path)
    assert "4096 configurations" in out.stdout
    res = json.loads(run("analyze", "out/ensemble.h5", "--json", cwd=tmp_path).stdout)
    plaq = res["observables"]["<cos P>"]
    assert abs(plaq["mean"] - plaq["exact"]) < 4 * plaq["error"]
    assert res["n_rows"] == 4096 and res["n_chains"] == 16
    with open_ensemble(tmp_path / "out" / "ensemble.h5") as ens:
        assert ens.attrs["theory"] == "u1" and ens.attrs["beta"] == 2.0
        assert "beta: 2.0" in ens.attrs["config"]
        assert ens["samples"].shape == (4096, 2, 8, 8)
        chain, mc = ens["chain"], ens["mc_index"]
        assert np.array_equal(np.bincount(chain), np.full(16, 256))
        assert all(np.array_equal(np.sort(mc[chain == c]), np.arange(256)) for c in range(16))


def test_sigkill_leaves_flushed_batches_and_rerun_resumes(tmp_path):
    cfg = write_config(tmp_path, U1.replace("n_samples: 4096", "n_samples: 200000").replace("batch_size: 256", "batch_size: 64"))
    h5 = tmp_path / "out" / "ensemble.h5"
    proc = subprocess.Popen([*LATTICEFLOW, "sample", str(cfg), "--no-progress"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (h5.exists() and h5.stat().st_size > 3_000_000):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with open_ensemble(h5) as ens:
        n_killed = ens.n_rows
        assert n_killed >= 3 * 64 and n_killed % 64 == 0 and n_killed < 200000
        assert np.isfinite(ens["samples"]).all()
    # the same command, asked for fewer rows than the target but more than exist, resumes
    target = n_killed + 640
    out = run("sample", str(cfg), "--no-progress", "--set", f"sampler.n_samples={target}", cwd=tmp_path)
    assert "resumed" in out.stdout
    with open_ensemble(h5) as ens:
        assert ens.n_rows == target
        chain, mc = ens["chain"], ens["mc_index"]
        for c in range(16):
            assert np.array_equal(np.sort(mc[chain == c]), np.arange(target // 16))
        # the chains continue from their last configuration: acceptance stays physical
        assert 0.5 < ens["accepted"][n_killed:].mean() < 1.0


@pytest.mark.parametrize("override,needle", [
    ("action.beta=3.0", "beta"),
    ("action.shape=[8,4]", "shape"),
    ("action={theory: phi4, shape: [8, 8], kappa: 0.2}", "theory"),
])
def test_appending_to_another_theory_fails_and_leaves_file_untouched(tmp_path, override, needle):
    cfg = write_config(tmp_path, U1.replace("n_samples: 4096", "n_samples: 512"))
    run("sample", str(cfg), "--no-progress", cwd=tmp_path)
    h5 = tmp_path / "out" / "ensemble.h5"
    before = hashlib.sha256(h5.read_bytes()).hexdigest()
    config_before = (tmp_path / "out" / "config.yaml").read_text()
    proc = run("sample", str(cfg), "--no-progress", "--set", override, "--set", "sampler.n_samples=1024",
               cwd=tmp_path, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latticeflow: error:") and needle in lines[0], proc.stderr
    assert hashlib.sha256(h5.read_bytes()).hexdigest() == before
    assert (tmp_path / "out" / "config.yaml").read_text() == config_before


@pytest.mark.parametrize("config,needle", [
    ("action: {theory: u1, shape: [8, 8], beta: 1.0, betta: 2}", "unknown config key 'action.betta'"),
    ("action: {theory: u1, shape: [8, 0], beta: 1.0}", "action.shape must be positive lattice extents, got [8, 0]"),
    ("action: {theory: u1, shape: [8, 8], beta: -1.0}", "action.beta must be > 0, got -1.0"),
    ("action: {theory: phi4, shape: [8, 8], kappa: 0.26, lam: 0.0}", "action.kappa must satisfy |kappa| < 0.25 at lam = 0"),
    (None, "config file not found"),
])
def test_bad_config_is_one_line_and_nonzero(tmp_path, config, needle):
    path = write_config(tmp_path, config) if config else tmp_path / "missing.yaml"
    proc = run("sample", str(path), cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert needle in proc.stderr


def test_analyze_rejects_missing_and_foreign_files(tmp_path):
    import h5py

    proc = run("analyze", "nope.h5", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "nope.h5" in proc.stderr and "Traceback" not in proc.stderr
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    proc = run("analyze", "foreign.h5", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "not a latticeflow ensemble" in proc.stderr


def test_run_writes_table_summary_and_plots(tmp_path):
    cfg = write_config(tmp_path, "name: f\naction: {theory: phi4, shape: [8, 8], kappa: 0.2, lam: 0.0}\n"
                                 "sampler: {n_samples: 2048, n_chains: 16, n_thermalize: 100}\noutput: {dir: out}\n")
    out = run("run", str(cfg), "--no-progress", cwd=tmp_path)
    assert "chi2 = V<m^2>" in out.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["analysis"]["observables"]["chi2 = V<m^2>"]["exact"] == pytest.approx(2.5)
    assert (tmp_path / "out" / "plots" / "correlator.png").stat().st_size > 1000
    # the trust verdict, machine-readable: top level (the run's ensemble) and per analysed ensemble
    v = summary["verdict"]
    assert set(v) == {"reliable", "reasons"} and isinstance(v["reliable"], bool)
    assert all(isinstance(r, str) for r in v["reasons"]) and (v["reliable"] or v["reasons"])
    assert summary["ensembles"]["hmc"]["verdict"] == v
    assert out.stdout.count("verdict: ") == 1


def test_analyze_exports_pyerrors_json_with_chains_as_replicas(tmp_path):
    from latticeflow.analysis import load_pyerrors_json

    cfg = write_config(tmp_path, U1.replace("n_samples: 4096", "n_samples: 512"))
    run("sample", str(cfg), "--no-progress", cwd=tmp_path)
    run("analyze", "out/ensemble.h5", "--pyerrors", "obs.json.gz", cwd=tmp_path)
    data = load_pyerrors_json(tmp_path / "obs.json.gz")
    assert len(data["plaquette"]) == 16 and all(len(r) == 32 for r in data["plaquette"])
    with open_ensemble(tmp_path / "out" / "ensemble.h5") as ens:
        first = ens["observables/plaquette"][ens["chain"] == 0]
    assert np.allclose(data["plaquette"][0], first)


NMCMC = ("name: n\nseed: 4\ndtype: float32\naction: {theory: phi4, shape: [8, 8], kappa: 0.2, lam: 0.0}\n"
         "flow: {family: spline, n_layers: 2}\ntrain: {steps: 5, batch_size: 64, checkpoint_every: 5}\n"
         "sampler: {name: nmcmc, n_samples: 400000, n_chains: 8, batch_size: 512}\noutput: {dir: out}\n")


def test_multichain_nmcmc_sigkill_and_resume_keep_every_chain_complete(tmp_path):
    """8 NMCMC chains: kill mid-run, resume to a target, every chain's mc_index is 0 … n − 1 with no gap."""
    cfg = write_config(tmp_path, NMCMC)
    run("train", str(cfg), "--no-progress", cwd=tmp_path)
    h5 = tmp_path / "out" / "ensemble.h5"
    proc = subprocess.Popen([*LATTICEFLOW, "sample", str(cfg), "--no-progress"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (h5.exists() and h5.stat().st_size > 2_000_000):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open_ensemble(h5) as ens:
        n_killed = ens.n_rows
        assert n_killed >= 512 and n_killed % 512 == 0 and n_killed < 400000
    target = n_killed + 8 * 300
    out = run("sample", str(cfg), "--no-progress", "--set", f"sampler.n_samples={target}", cwd=tmp_path)
    assert "resumed" in out.stdout
    with open_ensemble(h5) as ens:
        assert ens.n_rows == target and int(ens.attrs["n_chains"]) == 8
        chain, mc = ens["chain"], ens["mc_index"]
        for c in range(8):
            assert np.array_equal(mc[chain == c], np.arange(target // 8))
        assert len(np.atleast_1d(ens.attrs["longest_rejection_run"])) == 8
    res = json.loads(run("analyze", "out/ensemble.h5", "--json", cwd=tmp_path).stdout)
    assert res["n_chains"] == 8
    proc = run("sample", str(cfg), "--no-progress", "--set", f"sampler.n_samples={target + 64}",
               "--set", "sampler.n_chains=4", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "n_chains" in proc.stderr


def test_verdict_in_table_json_and_strict_exit_status(tmp_path):
    """Frozen HMC (U(1) 8×8, β = 6, 16 short chains): the verdict is unreliable with reasons (R̂ of Q, too few
    τ_int), in the table footer and in --json; --strict exits 3. A well-mixed β = 1 run is reliable."""
    frozen = ("name: f\nseed: 2\naction: {theory: u1, shape: [8, 8], beta: 6.0}\n"
              "sampler: {n_samples: 4096, n_chains: 16, n_thermalize: 300, batch_size: 1024}\noutput: {dir: frozen}\n")
    cfg = write_config(tmp_path, frozen)
    run("sample", str(cfg), "--no-progress", cwd=tmp_path)
    table = run("analyze", "frozen/ensemble.h5", cwd=tmp_path).stdout
    footer = table.strip().splitlines()[-1]
    assert footer.startswith("verdict: unreliable — ") and "τ_int" in footer, table
    res = json.loads(run("analyze", "frozen/ensemble.h5", "--json", cwd=tmp_path).stdout)
    assert res["verdict"]["reliable"] is False and res["verdict"]["reasons"]
    assert all(isinstance(r, str) for r in res["verdict"]["reasons"])
    assert run("analyze", "frozen/ensemble.h5", "--strict", cwd=tmp_path, check=False).returncode == 3
    loose = run("analyze", "frozen/ensemble.h5", "--json", "--min-tau", "0", "--rhat-max", "100", "--pull-max", "1e9",
                cwd=tmp_path)
    assert json.loads(loose.stdout)["verdict"]["reliable"] is True
    hot = write_config(tmp_path, frozen.replace("beta: 6.0", "beta: 1.0").replace("dir: frozen", "dir: hot"), "h.yaml")
    run("sample", str(hot), "--no-progress", cwd=tmp_path)
    res = json.loads(run("analyze", "hot/ensemble.h5", "--json", cwd=tmp_path).stdout)
    assert res["verdict"] == {"reliable": True, "reasons": []}, res["verdict"]
    assert run("analyze", "hot/ensemble.h5", "--strict", cwd=tmp_path, check=False).returncode == 0
