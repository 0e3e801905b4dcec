"""Damaged ensemble files (issue 24): truncated, bytes flipped in each dataset, ``n_rows`` past the end, a dataset
deleted.  ``latticeflow verify`` names the bad batches or the structure (exit 2), a resume cuts a damaged tail back
to the last good batch (saying how many rows go) or refuses damage in the middle with the file untouched byte for
byte, readers (``analyze``, ``train.data``, the last sweep of a resume) never use damaged rows."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from latticeflow.cli import main
from latticeflow.io import EnsembleWriter, open_ensemble, read_last_sweep, verify_ensemble
from tests.faults.injector import record

L, K, B = 4, 4, 16  # lattice, chains, rows per batch (4 sweeps)
KW = dict(theory="phi4", couplings={"kappa": 0.2, "lam": 0.0}, shape=(L, L), field_shape=(L, L), sampler="hmc",
          seed=1)


def batch(i: int) -> dict:
    r = np.arange(i * B, (i + 1) * B)
    rng = np.random.default_rng(i)
    return dict(samples=rng.normal(size=(B, L, L)), action=r * 0.5, accepted=r % 3 > 0, chain=r % K,
                mc_index=r // K, observables={"m2": r * 0.01, "abs_m": r * 0.02})


def build(path: Path, n_batches: int = 4) -> Path:
    with EnsembleWriter(path, **KW) as w:
        for i in range(n_batches):
            w.append(**batch(i))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip(path: Path, dataset: str, row: int) -> None:
    """Flip bytes of one stored row in place, on disk (as a bad disk would), without HDF5 noticing."""
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        chunk = ds.id.get_chunk_info_by_coord((row - row % ds.chunks[0],) + (0,) * (ds.ndim - 1))
        offset = chunk.byte_offset + (row % ds.chunks[0]) * ds.dtype.itemsize * int(np.prod(ds.shape[1:]))
    with open(path, "r+b") as fh:
        fh.seek(offset)
        raw = bytearray(fh.read(4))
        fh.seek(offset)
        fh.write(bytes(b ^ 0x5A for b in raw))


def verify_cli(path: Path, capsys) -> tuple[int, list[str]]:
    code = main(["verify", str(path)])
    return code, capsys.readouterr().out.strip().splitlines()


@pytest.mark.parametrize("dataset", ["samples", "action", "accepted", "chain", "mc_index", "observables/m2"])
def test_damaged_bytes_flipped_in_each_dataset_are_named_by_verify(tmp_path, capsys, dataset):
    path = build(tmp_path / "e.h5")
    assert verify_cli(path, capsys) == (0, [f"{path}: OK, 64 rows in 4 batches verified"])
    flip(path, dataset, 21)  # batch 1: rows 16-31
    code, lines = verify_cli(path, capsys)
    assert code == 2 and lines == [f"{path}: dataset {dataset!r} rows 16-31: checksum mismatch",
                                   f"{path}: DAMAGED: 1 of 4 batches damaged (64 rows)"]
    with open_ensemble(path) as ens, pytest.raises(ValueError, match=f"{dataset}.*rows 16-31 fail their checksum"):
        ens[dataset]
    record(1)


def test_damaged_bytes_flipped_in_last_sweep_are_cut_back_on_resume(tmp_path, capsys):
    path = build(tmp_path / "e.h5")
    flip(path, "samples", 62)  # the last sweep: resuming from it continued from |phi| ~ 1e5
    with pytest.raises(ValueError, match="'samples' rows 48-63: checksum mismatch: the last sweep cannot be resumed"):
        read_last_sweep(path, 64, K, default_n_chains=K)
    with EnsembleWriter(path, **KW) as w:
        assert w.n_rows == 48
        assert "dropping its last 16 rows (48-63)" in capsys.readouterr().err
        out, _ = read_last_sweep(path, w.n_rows, K, default_n_chains=K)  # what a resumed chain continues from: intact rows
        np.testing.assert_array_equal(out["samples"], batch(2)["samples"][-K:])
        w.append(**batch(3))
    assert verify_ensemble(path).ok
    with open_ensemble(path) as ens:
        np.testing.assert_array_equal(ens["samples"], np.concatenate([batch(i)["samples"] for i in range(4)]))
        assert [h["rows_before"] for h in ens.history] == [0, 48] and ens.history[1]["rows_dropped"] == 16
    record(1)


def test_damaged_middle_batch_refuses_resume_and_touches_nothing(tmp_path, capsys):
    path = build(tmp_path / "e.h5")
    flip(path, "action", 20)
    before = sha(path)
    with pytest.raises(ValueError, match="rows 16-31: checksum mismatch, and later batches are intact; refusing"):
        EnsembleWriter(path, **KW)
    assert sha(path) == before
    record(1)


def test_damaged_analyze_gives_one_line_exit_2(tmp_path, capsys):
    path = build(tmp_path / "e.h5")
    flip(path, "samples", 3)  # analyze does not need the samples, it checks them anyway
    assert main(["analyze", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("latticeflow: error: damaged ensemble") and "rows 0-15" in err[0]
    record(1)


def test_damaged_truncated_file(tmp_path, capsys):
    path = build(tmp_path / "e.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, lines = verify_cli(path, capsys)
    assert code == 2 and len(lines) == 2 and "cannot be opened" in lines[0]
    before = sha(path)
    with pytest.raises((ValueError, OSError)):
        EnsembleWriter(path, **KW)
    assert sha(path) == before
    assert main(["analyze", str(path)]) == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    record(1)


def test_damaged_n_rows_past_the_end(tmp_path, capsys):
    path = build(tmp_path / "e.h5")
    with h5py.File(path, "r+") as f:
        f.attrs.modify("n_rows", np.int64(128))  # what S1 left: rows counted that were never written
    code, lines = verify_cli(path, capsys)
    assert code == 2 and f"{path}: n_rows is 128 but dataset 'samples' holds only 64 rows" in lines
    assert main(["analyze", str(path)]) == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    with EnsembleWriter(path, **KW) as w:  # the uncounted rows are a damaged tail
        assert w.n_rows == 64
        assert "dropping its last 64 rows (64-127)" in capsys.readouterr().err
        w.append(**batch(4))
    assert verify_ensemble(path).ok and verify_ensemble(path).n_rows == 80
    record(1)


def test_damaged_dataset_deleted(tmp_path, capsys):
    path = build(tmp_path / "e.h5")
    with h5py.File(path, "r+") as f:
        del f["action"]
    code, lines = verify_cli(path, capsys)
    assert code == 2 and lines[0] == f"{path}: dataset 'action' is missing (the checksum table lists it)"
    before = sha(path)
    with pytest.raises(ValueError, match="dataset 'action' is missing.*refusing to resume, nothing was changed"):
        EnsembleWriter(path, **KW)
    assert sha(path) == before
    assert main(["analyze", str(path)]) == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    record(1)


def test_format_1_files_read_resume_and_are_upgraded(tmp_path, capsys):
    path = build(tmp_path / "e.h5", 2)
    with h5py.File(path, "r+") as f:  # what latticeflow before checksums wrote
        del f["checksums"], f["history"]
        f.attrs.modify("format_version", np.int64(1))
    assert verify_cli(path, capsys)[1][-1].endswith("OK (structure only: format_version 1 has no checksums), 32 rows")
    with open_ensemble(path) as ens:
        assert ens.n_rows == 32 and ens.history == []
    with EnsembleWriter(path, **{**KW, "seed": 9}) as w:
        w.append(**batch(2))
    assert verify_cli(path, capsys) == (0, [f"{path}: OK, 48 rows in 2 batches verified"])
    with open_ensemble(path) as ens:
        assert ens.attrs["format_version"] == 2
        assert [(h["rows_before"], h["rows_after"], h["seed"]) for h in ens.history] == [(0, 32, 1), (32, 48, 9)]


def test_history_records_every_run(tmp_path):
    path = tmp_path / "e.h5"
    for run, (seed, n) in enumerate([(1, 2), (7, 1), (8, 0), (9, 2)]):
        with EnsembleWriter(path, **{**KW, "seed": seed}, command=f"run {run}", config_text=f"n: {run}") as w:
            start = w.n_rows // B
            for i in range(n):
                w.append(**batch(start + i))
    with open_ensemble(path) as ens:
        hist = ens.history
        assert ens.attrs["command"] == "run 0" and ens.attrs["seed"] == 1  # the creating run, unchanged
    assert [(h["command"], h["seed"], h["rows_before"], h["rows_after"], h["config"]) for h in hist] == [
        ("run 0", 1, 0, 32, "n: 0"), ("run 1", 7, 32, 48, "n: 1"), ("run 3", 9, 48, 80, "n: 3")]
    assert all(h["host"] and h["created"] and h["latticeflow_version"] for h in hist)
    json.dumps(hist)


def test_damaged_master_file_shard_is_named(tmp_path, capsys):
    from latticeflow.io import shard_path, write_master

    master = tmp_path / "ensemble.h5"
    shards = [build(shard_path(master, r), 2) for r in range(2)]
    write_master(master, shards, seed=1)
    assert verify_cli(master, capsys)[0] == 0
    with open_ensemble(master) as ens:
        assert ens["action"].shape == (64,)
    flip(shards[1], "action", 3)
    code, lines = verify_cli(master, capsys)
    assert code == 2 and lines[0] == f"{shards[1]}: dataset 'action' rows 0-15: checksum mismatch"
    assert lines[-1].startswith(f"{master}: DAMAGED (1 of 2 shards)")
    with open_ensemble(master) as ens, pytest.raises(ValueError, match="'action' rows 32-47 fail their checksum"):
        ens["action"]
