"""The n-th write operation of the HDF5 ensemble writer fails (ENOSPC, EIO), for every n of a short run: through
the writer, and through ``latticeflow sample`` (issue 24, S1/S1b by injection).

For every failure point: one line (``OSError`` naming the file and its intact committed rows; exit 2 from the
CLI), the file reopens and verifies, ``n_rows`` is exactly the rows committed before the failure (their values are
those written), no temporary file is left, and a rerun resumes to completion.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

import latticeflow.io.writer as writer_module
from latticeflow.cli import main
from latticeflow.io import EnsembleWriter, open_ensemble, verify_ensemble
from tests.faults.injector import EIO, ENOSPC, count_calls, fail_nth, record

TARGETS = [(h5py.Dataset, "__setitem__"), (h5py.Dataset, "resize"), (h5py.File, "flush"),
           (h5py.AttributeManager, "modify"), (h5py.AttributeManager, "__setitem__"),
           (h5py.AttributeManager, "create"), (h5py.Group, "create_dataset"), (os, "fsync"), (os, "replace")]
#: without the attribute writes of file creation and rewrites (covered through the writer), for the slower CLI runs
WRITE_TARGETS = [t for t in TARGETS if t[0] is not h5py.AttributeManager or t[1] == "modify"]

L, B, N_BATCHES = 4, 8, 2
KW = dict(theory="phi4", couplings={"kappa": 0.2, "lam": 0.0}, shape=(L, L), field_shape=(L, L), sampler="hmc",
          seed=3)


def batch(i: int) -> dict:
    r = np.arange(i * B, (i + 1) * B)
    return dict(samples=np.random.default_rng(i).normal(size=(B, L, L)), action=r * 0.5, accepted=r % 2 == 0,
                chain=r % 4, mc_index=r // 4, observables={"m2": r * 0.25})


def expected(n: int) -> dict:
    rows = [batch(i) for i in range(N_BATCHES)]
    return {"samples": np.concatenate([b["samples"] for b in rows])[:n],
            "action": np.concatenate([b["action"] for b in rows])[:n],
            "observables/m2": np.concatenate([b["observables"]["m2"] for b in rows])[:n]}


def writer_run(path, committed: list[int]) -> None:
    """Create or resume, append the missing batches with sampler-state attributes in between, as the samplers do."""
    with EnsembleWriter(path, **KW) as w:
        if w.n_rows == 0:
            w.set_attrs(n_chains=4, step_size=0.1)  # new attributes: atomic rewrite
        for i in range(w.n_rows // B, N_BATCHES):
            w.append(**batch(i))
            committed.append(w.n_rows)
            w.set_attrs(rng_state=np.full(16, i, np.uint8), step_size=0.1 + i)  # in place


def check_after_failure(path, n_committed: int) -> int:
    """The file verifies and holds exactly the committed rows, with their values; returns rows lost/miscounted."""
    leftovers = [p for p in os.listdir(path.parent) if p.endswith(".tmp")]
    assert not leftovers, leftovers
    if not path.exists():
        assert n_committed == 0
        return 0
    report = verify_ensemble(path)
    assert report.ok, report.lines()
    with open_ensemble(path) as ens:
        lost = abs(ens.n_rows - n_committed)
        for name, values in expected(ens.n_rows).items() if ens.n_rows else ():
            np.testing.assert_array_equal(ens[name], values)
    return lost


@pytest.fixture
def fast_dir(tmp_path):
    """A directory on /dev/shm (tmpfs: fsync costs nothing) where there is one, else ``tmp_path``."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="lf-faults-", dir="/dev/shm"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("err", [ENOSPC, EIO])
def test_S1_every_failed_write_of_the_writer_is_one_line_and_loses_nothing(fast_dir, err):
    tmp_path = fast_dir
    total = count_calls(TARGETS, lambda: writer_run(tmp_path / "count.h5", []))
    assert total > 50
    lost = 0
    for n in range(1, total + 1):
        d = tmp_path / f"{n}"
        d.mkdir()
        path = d / "e.h5"
        committed: list[int] = []
        with fail_nth(TARGETS, n, err) as state, pytest.raises(OSError) as info:
            writer_run(path, committed)
        assert state["fired"]
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg, msg
        assert "committed rows are intact" in msg and ("no space left" in msg) == (err == ENOSPC), msg
        lost += check_after_failure(path, committed[-1] if committed else 0)
        writer_run(path, [])  # the rerun resumes to completion
        assert check_after_failure(path, N_BATCHES * B) == 0
    assert lost == 0
    record(total, lost)


CONFIG = """seed: 2
action: {theory: phi4, shape: [4, 4], kappa: 0.2, lam: 0.0}
sampler: {name: hmc, n_samples: 32, n_chains: 4, n_thermalize: 4, n_leapfrog: 3, batch_size: 16}
output: {dir: OUT}
"""


def test_S1b_every_failed_write_of_sample_exits_2_with_one_line(fast_dir, capsys, monkeypatch):
    """Every failure point of ``latticeflow sample``, ENOSPC at odd and EIO at even points."""
    tmp_path = fast_dir
    def config(out) -> str:
        p = tmp_path / f"{out.name}.yaml"
        p.write_text(CONFIG.replace("OUT", str(out)))
        return str(p)

    ref_cfg = config(tmp_path / "ref")
    total = count_calls(WRITE_TARGETS, lambda: main(["sample", ref_cfg, "--no-progress"]))
    with h5py.File(tmp_path / "ref" / "ensemble.h5", "r") as f:
        reference = {k: f[k][:] for k in ("samples", "action", "mc_index")}
    committed: list[int] = []
    original = writer_module.EnsembleWriter.append

    def counting(self, *args, **kwargs):
        original(self, *args, **kwargs)
        committed.append(self.n_rows)

    monkeypatch.setattr(writer_module.EnsembleWriter, "append", counting)
    lost = 0
    for n in range(1, total + 1):
        err = ENOSPC if n % 2 else EIO
        out = tmp_path / f"run{n}"
        cfg = config(out)
        committed.clear()
        capsys.readouterr()
        with fail_nth(WRITE_TARGETS, n, err) as state:
            code = main(["sample", cfg, "--no-progress"])
        err_lines = capsys.readouterr().err.strip().splitlines()
        assert state["fired"] and code == 2, (n, state, err_lines)
        assert len(err_lines) == 1 and err_lines[0].startswith("latticeflow: error: "), err_lines
        path = out / "ensemble.h5"
        leftovers = [p for p in os.listdir(out) if p.endswith(".tmp")] if out.exists() else []
        assert not leftovers, leftovers
        n_committed = committed[-1] if committed else 0
        if path.exists():
            assert verify_ensemble(path).ok
            with open_ensemble(path) as ens:
                lost += abs(ens.n_rows - n_committed)
                for k, values in reference.items() if ens.n_rows else ():
                    np.testing.assert_array_equal(ens[k], values[: ens.n_rows])
        assert main(["sample", cfg, "--no-progress"]) == 0  # the rerun completes
        with open_ensemble(path) as ens:
            assert ens.n_rows == 32 and verify_ensemble(path).ok
            np.testing.assert_array_equal(ens["samples"][:n_committed], reference["samples"][:n_committed])
    assert lost == 0
    record(total, lost)
