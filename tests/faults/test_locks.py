"""Issue 24, S3 and item 3: a lock of the package's own on every output directory (independent of HDF5's file
locking). A second ``sample`` or ``train`` into a directory in use is refused in one line naming the holder;
the first completes intact; a stale lock of a dead process is taken over with a message; nested calls of
``run`` re-enter their own lock."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from latticeflow.cli import main
from latticeflow.io import open_ensemble, verify_ensemble
from latticeflow.io.lock import LOCK_NAME, DirectoryLockedError, directory_lock, read_lock

PHI4 = ("name: t\nseed: 3\naction: {theory: phi4, shape: [4, 4], kappa: 0.2, lam: 0.0}\n"
        "sampler: {n_samples: 8000, n_chains: 4, n_thermalize: 10, n_leapfrog: 20, batch_size: 64}\n"
        "output: {dir: out}\n")
FLOW = ("name: f\nseed: 1\naction: {theory: phi4, shape: [4, 4], kappa: 0.2, lam: 0.0}\n"
        "flow: {family: z2affine, n_layers: 2, hidden: [8]}\n"
        "train: {steps: STEPS, batch_size: 64, log_every: 1, checkpoint_every: 5}\n"
        "sampler: {name: nmcmc, n_samples: 128, n_chains: 4, batch_size: 64}\noutput: {dir: out}\n")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_"))}
    env.update(OMP_NUM_THREADS="1", HDF5_USE_FILE_LOCKING="FALSE")
    return env


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "latticeflow", *args, "--no-progress"], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _wait_for_lock(out: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until ``proc`` holds the lock of ``out`` (on a loaded machine its start, torch's import, takes seconds)."""
    t0 = time.monotonic()
    while not (out / LOCK_NAME).exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, f"no lock in {out} after {timeout} s"
        time.sleep(0.05)


def _one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latticeflow: error:") and "Traceback" not in stderr, stderr
    return lines[0]


def test_S3_second_writer_is_refused_naming_the_holder_and_the_first_completes_intact(tmp_path):
    (tmp_path / "c.yaml").write_text(PHI4)
    first = _start(["sample", "c.yaml"], tmp_path)
    _wait_for_lock(tmp_path / "out", first)
    second = _start(["sample", "c.yaml"], tmp_path)
    out2, err2 = second.communicate(timeout=300)
    still_running = first.poll() is None
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert still_running, "the first sample ended before the second started: the test proves nothing"
    assert second.returncode == 2 and out2 == ""
    line = _one_line_error(err2)
    assert f"pid {first.pid}" in line and socket.gethostname() in line and "sample c.yaml" in line
    assert "since" in line and LOCK_NAME in line  # how to clear it
    with open_ensemble(tmp_path / "out" / "ensemble.h5") as ens:
        assert ens.n_rows == 8000
        chain, mc = ens["chain"], ens["mc_index"]
        assert np.isfinite(ens["samples"]).all()
    for c in range(4):  # every chain once per Markov step: nothing written twice
        assert np.array_equal(np.sort(mc[chain == c]), np.arange(2000))
    report = verify_ensemble(tmp_path / "out" / "ensemble.h5")
    assert report.ok, report.lines()
    assert not (tmp_path / "out" / LOCK_NAME).exists()  # released at the end


def test_S3_second_train_is_refused_and_metrics_have_no_duplicate_steps(tmp_path):
    (tmp_path / "c.yaml").write_text(FLOW.replace("STEPS", "150"))
    first = _start(["train", "c.yaml"], tmp_path)
    _wait_for_lock(tmp_path / "out", first)
    second = _start(["train", "c.yaml"], tmp_path)
    _, err2 = second.communicate(timeout=300)
    still_running = first.poll() is None
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert still_running, "the first train ended before the second started: the test proves nothing"
    assert second.returncode == 2 and "is locked by another latticeflow command" in _one_line_error(err2)
    with open(tmp_path / "out" / "metrics.csv", newline="") as fh:
        steps = [int(float(r["step"])) for r in csv.DictReader(fh)]
    assert steps == list(range(1, 151))


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(PHI4.replace("n_samples: 8000", "n_samples: 64"))
    (tmp_path / "out").mkdir()
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "command": "latticeflow sample c.yaml",
             "since": "2020-01-01T00:00:00", "token": "dead"}
    (tmp_path / "out" / LOCK_NAME).write_text(json.dumps(stale))
    assert main(["sample", "c.yaml", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "taking over the stale lock" in err and f"pid {stale['pid']}" in err
    assert not (tmp_path / "out" / LOCK_NAME).exists()
    with open_ensemble(tmp_path / "out" / "ensemble.h5") as ens:
        assert ens.n_rows == 64


def test_lock_of_another_host_is_refused_and_left_in_place(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(PHI4.replace("n_samples: 8000", "n_samples: 64"))
    (tmp_path / "out").mkdir()
    other = {"pid": 1, "host": "node-elsewhere-17", "command": "latticeflow run c.yaml", "since": "2020-01-01T00:00:00",
             "token": "x"}
    lock = tmp_path / "out" / LOCK_NAME
    lock.write_text(json.dumps(other))
    assert main(["sample", "c.yaml", "--no-progress"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "node-elsewhere-17" in line and "pid 1" in line and "latticeflow run c.yaml" in line
    assert json.loads(lock.read_text()) == other
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LOCK_NAME]  # nothing written


def test_lock_with_a_reused_pid_is_stale(tmp_path):
    """The pid of the lock is alive but started at another time: a former process whose pid was reused."""
    info = {"pid": os.getppid(), "host": socket.gethostname(), "command": "x", "since": "2020", "token": "t",
            "pid_start": "1"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(info))
    with directory_lock(tmp_path, "mine"):
        assert read_lock(tmp_path)["command"] == "mine"


def test_empty_lock_file_is_refused_while_young_and_taken_over_when_old(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock.write_bytes(b"")  # its creator is between O_EXCL and its write
    with pytest.raises(DirectoryLockedError, match="a process that is starting"):
        with directory_lock(tmp_path, "mine"):
            pass
    old = time.time() - 3600
    os.utime(lock, (old, old))  # killed between create and write, long ago
    with directory_lock(tmp_path, "mine"):
        assert read_lock(tmp_path)["pid"] == os.getpid()
    assert not lock.exists()


def test_lock_is_reentrant_and_released_on_errors_and_ctrl_c(tmp_path):
    with directory_lock(tmp_path / "a" / "b", "outer"):
        with directory_lock(tmp_path / "a" / "b", "inner"):  # run → train → sample: no deadlock
            assert read_lock(tmp_path / "a" / "b")["command"] == "outer"
        assert (tmp_path / "a" / "b" / LOCK_NAME).exists()
    assert not (tmp_path / "a").exists()  # directories this lock created and nothing else used are removed
    for exc in (ValueError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with directory_lock(tmp_path, "x"):
                raise exc
        assert not (tmp_path / LOCK_NAME).exists()


def test_release_never_removes_a_lock_that_is_not_ours(tmp_path):
    with directory_lock(tmp_path, "x"):
        foreign = {"pid": 1, "host": "elsewhere", "command": "y", "since": "now", "token": "other"}
        (tmp_path / LOCK_NAME).write_text(json.dumps(foreign))  # someone removed ours and took the directory
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == foreign


def test_stale_temporaries_of_a_killed_run_are_removed_by_the_next_locked_run(tmp_path):
    (tmp_path / "checkpoints").mkdir(parents=True)
    dead = _dead_pid()
    stale = [tmp_path / "checkpoints" / f".latest.pt.tmp-{dead}-0a1b2c3d.tmp",
             tmp_path / f".ensemble.h5.master-{dead}-deadbeef.tmp", tmp_path / f".config.yaml.tmp-{dead}-00ff00ff.tmp"]
    live = tmp_path / f".summary.json.tmp-{os.getppid()}-12345678.tmp"  # a live writer's: kept
    for p in (*stale, live):
        p.write_bytes(b"x" * 10)
    with directory_lock(tmp_path, "x"):
        pass
    assert not any(p.exists() for p in stale) and live.exists()


def test_run_holds_one_lock_over_its_nested_train_and_sample(tmp_path, monkeypatch):
    """`run` (train, then sample, then analyse) in one directory: the nested calls re-enter the run's lock."""
    from latticeflow.config import config_from_dict
    from latticeflow.pipeline import run

    seen = []
    import latticeflow.pipeline.sample_chains as sc

    original = sc.EnsembleWriter

    def spy(*args, **kwargs):
        seen.append(read_lock(tmp_path / "out"))
        return original(*args, **kwargs)

    monkeypatch.setattr(sc, "EnsembleWriter", spy)
    cfg = config_from_dict({"name": "r", "seed": 1, "action": {"theory": "phi4", "shape": [4, 4], "kappa": 0.2, "lam": 0.0},
                            "sampler": {"n_samples": 256, "n_chains": 4, "n_thermalize": 10, "batch_size": 64},
                            "output": {"dir": str(tmp_path / "out")}})
    summary = run(cfg, "", command="latticeflow run r.yaml", progress=False)
    assert summary["ensemble"]["n_rows"] == 256
    assert seen and seen[0]["command"] == "latticeflow run r.yaml" and seen[0]["pid"] == os.getpid()
    assert not (tmp_path / "out" / LOCK_NAME).exists()
