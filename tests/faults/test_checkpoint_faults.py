"""Issue 24, S2 and item 4, and the checkpoint writer under fault injection.

A crafted checkpoint creates no file anywhere by any of the three ways in (``train.init``, ``--checkpoint``,
``checkpoints/latest.pt``); NaN weights, non-checkpoint files and old-format checkpoints give one line and
write nothing; leftovers of a killed save are removed by the next run. With the n-th write operation of a
resumed ``train`` failing (ENOSPC, EIO) for every n: one line, exit 2, the last checkpoint intact and
loadable, no temporary file, and a rerun completes with every step once in ``metrics.csv``.
"""
from __future__ import annotations

import csv
import hashlib
import importlib
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from latticeflow.cli import main
from latticeflow.io import load_checkpoint, save_checkpoint
from latticeflow.io.checkpoint import main as convert_main
from tests.faults.injector import EIO, ENOSPC, count_calls, fail_nth, record

CONFIG = ("name: s\nseed: 1\naction: {theory: phi4, shape: [4, 4], kappa: 0.2, lam: 0.0}\n"
          "flow: {family: z2affine, n_layers: 2, hidden: [4]}\n"
          "train: {steps: 2, batch_size: 8, log_every: 1, checkpoint_every: 2}\n"
          "sampler: {name: nmcmc, n_samples: 64, n_chains: 2, batch_size: 32}\noutput: {dir: out}\n")
TRAIN = importlib.import_module("latticeflow.pipeline.train")  # the module (the package exports its function)


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latticeflow: error:") and "Traceback" not in captured.err, \
        captured.err
    return lines[0]


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Touch:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(TRAIN, "_plot", lambda *a: None)  # matplotlib is not what these tests exercise
    (tmp_path / "c.yaml").write_text(CONFIG)
    return tmp_path


@pytest.mark.parametrize("payload", [_System, _Touch])
@pytest.mark.parametrize("how", ["--checkpoint", "train.init", "latest.pt"])
def test_S2_crafted_checkpoint_creates_no_file_anywhere(workdir, capsys, how, payload):
    marker = workdir / "MARKER"
    with open(workdir / "evil.pt", "wb") as fh:
        pickle.dump({"flow": payload(str(marker))}, fh)
    if how == "latest.pt":
        (workdir / "out" / "checkpoints").mkdir(parents=True)
        shutil.move(workdir / "evil.pt", workdir / "out" / "checkpoints" / "latest.pt")
    before = snapshot(workdir)
    if how == "--checkpoint":
        status = main(["sample", "c.yaml", "--checkpoint", "evil.pt", "--no-progress"])
    elif how == "train.init":
        status = main(["train", "c.yaml", "--set", "train.init=evil.pt", "--no-progress"])
    else:
        status = main(["train", "c.yaml", "--no-progress"])
    assert status == 2 and "not a latticeflow checkpoint" in one_line(capsys)
    assert not marker.exists()
    assert snapshot(workdir) == before  # no file written, none changed
    assert (workdir / "out").exists() == (how == "latest.pt")  # no output directory left behind


def _nan_checkpoint(workdir: Path) -> Path:
    assert main(["train", "c.yaml", "--no-progress", "--set", "output.dir=src"]) == 0
    state = load_checkpoint(workdir / "src" / "checkpoints" / "latest.pt")
    name = next(iter(state["flow"]))
    state["flow"][name] = torch.full_like(state["flow"][name], float("nan"))
    save_checkpoint(workdir / "nan.pt", state)
    return workdir / "nan.pt"


def test_nan_weights_as_train_init_or_checkpoint_give_one_line_and_write_nothing(workdir, capsys):
    _nan_checkpoint(workdir)
    capsys.readouterr()
    before = snapshot(workdir)
    assert main(["train", "c.yaml", "--set", "train.init=nan.pt", "--no-progress"]) == 2
    assert "not finite" in one_line(capsys)
    assert main(["sample", "c.yaml", "--checkpoint", "nan.pt", "--no-progress"]) == 2
    assert "not finite" in one_line(capsys)
    assert snapshot(workdir) == before and not (workdir / "out").exists()


@pytest.mark.parametrize("kind", ["yaml", "hdf5", "empty", "torch list"])
def test_checkpoint_option_on_a_non_checkpoint_file_is_one_line(workdir, capsys, kind):
    path = workdir / f"not_a_checkpoint.{kind.split()[0]}"
    if kind == "yaml":
        path.write_text(CONFIG)
    elif kind == "hdf5":
        with h5py.File(path, "w") as f:
            f["x"] = np.zeros(3)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        torch.save([1, 2], path)
    before = snapshot(workdir)
    assert main(["sample", "c.yaml", "--checkpoint", str(path.name), "--no-progress"]) == 2
    assert "checkpoint" in one_line(capsys)
    assert snapshot(workdir) == before and not (workdir / "out").exists()


def test_old_format_checkpoint_is_refused_with_how_to_convert_and_the_conversion_loads(workdir, capsys):
    assert main(["train", "c.yaml", "--no-progress"]) == 0
    state = load_checkpoint(workdir / "out" / "checkpoints" / "latest.pt")
    state["numpy_rng"] = np.random.default_rng(0).bit_generator.state["state"]["state"]  # a plain int
    state["wall_time"] = np.float64(state["wall_time"])  # older versions stored numpy scalars and arrays
    state["history"] = np.arange(3.0)
    torch.save(state, workdir / "old.pt")  # as an older latticeflow wrote it (full pickle)
    capsys.readouterr()
    assert main(["sample", "c.yaml", "--checkpoint", "old.pt", "--no-progress"]) == 2
    line = one_line(capsys)
    assert "python -m latticeflow.io.checkpoint old.pt NEW.pt" in line
    assert convert_main(["old.pt", "new.pt"]) == 0
    converted = load_checkpoint(workdir / "new.pt")
    assert isinstance(converted["wall_time"], float) and torch.equal(converted["history"], torch.arange(3.0).double())
    assert main(["sample", "c.yaml", "--checkpoint", "new.pt", "--no-progress"]) == 0


def test_leftover_temporaries_of_a_killed_save_are_removed_by_the_next_run(workdir):
    assert main(["train", "c.yaml", "--no-progress"]) == 0
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that is gone: the killed writer
    left = [workdir / "out" / "checkpoints" / f".latest.pt.tmp-{proc.pid}-0123abcd.tmp",
            workdir / "out" / "checkpoints" / f".best.pt.tmp-{proc.pid}-0123abce.tmp"]
    for p in left:
        p.write_bytes(b"half a checkpoint")
    assert main(["train", "c.yaml", "--no-progress", "--set", "train.steps=4"]) == 0
    assert not any(p.exists() for p in left)


#: every write operation of a resumed train: the lock, config.yaml, metrics, checkpoints, train_summary.json
TARGETS = [(os, "open"), (os, "write"), (os, "fsync"), (os, "replace")]


def _metrics_steps(out: Path) -> list[int]:
    with open(out / "metrics.csv", newline="") as fh:
        return [int(float(r["step"])) for r in csv.DictReader(fh)]


def test_checkpoint_writer_fails_at_every_write_op_with_enospc_and_eio(workdir, capsys):
    assert main(["train", "c.yaml", "--no-progress"]) == 0  # the baseline: a checkpoint at step 2
    base = workdir / "base"
    shutil.copytree(workdir / "out", base)
    resume = ["train", "c.yaml", "--no-progress", "--set", "train.steps=4"]
    n_ops = count_calls(TARGETS, lambda: main(resume))
    assert load_checkpoint(workdir / "out" / "checkpoints" / "latest.pt")["step"] == 4
    assert n_ops >= 10
    capsys.readouterr()
    problems: list[str] = []
    points = 0
    for err in (ENOSPC, EIO):
        for n in range(1, n_ops + 1):
            shutil.rmtree(workdir / "out")
            shutil.copytree(base, workdir / "out")
            with fail_nth(TARGETS, n, err) as state:
                status = main(resume)
            points += state["fired"]
            captured = capsys.readouterr()
            where = f"errno {err}, op {n} ({state['at']})"
            lines = captured.err.strip().splitlines()
            if status != 2 or len(lines) != 1 or not lines[0].startswith("latticeflow: error:"):
                problems.append(f"{where}: status {status}, stderr {captured.err!r}")
            step = load_checkpoint(workdir / "out" / "checkpoints" / "latest.pt")["step"]  # intact, loadable
            if step not in (2, 4):
                problems.append(f"{where}: checkpoint at step {step}")
            temps = [p.name for p in (workdir / "out").rglob("*") if p.name.endswith(".tmp") or ".lock" in p.name]
            if temps:
                problems.append(f"{where}: left {temps}")
            if main(resume) != 0 or load_checkpoint(workdir / "out" / "checkpoints" / "latest.pt")["step"] != 4 \
                    or _metrics_steps(workdir / "out") != [1, 2, 3, 4]:
                problems.append(f"{where}: the rerun did not complete cleanly")
            capsys.readouterr()
    record(points, lost=len(problems), cases=2)
    assert points == 2 * n_ops
    assert not problems, "\n".join(problems)
