"""Tests of the HDF5 ensemble format: round trip, resume, mismatch, truncation, reading."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from latticeflow.io import (
    verify_ensemble,
    FORMAT_VERSION,
    EnsembleMismatchError,
    EnsembleWriter,
    open_ensemble,
)

pytestmark = pytest.mark.filterwarnings("error")

L = 4
KW: dict[str, Any] = dict(
    theory="phi4",
    couplings={"kappa": 0.3, "lam": 0.02},
    shape=(L, L),
    field_shape=(L, L),
    sampler="hmc",
    seed=7,
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows(start: int, n: int, dtype: str = "float64") -> dict[str, np.ndarray]:
    """Deterministic batch of Markov-chain rows ``start .. start+n-1``."""
    r = np.arange(start, start + n)
    grid = np.arange(L * L).reshape(L, L) / 100.0
    return dict(
        samples=(r[:, None, None] + grid).astype(dtype),
        action=r * 0.5,
        accepted=r % 3 == 0,
        chain=r % 4,
        mc_index=r // 4,
    )


def write(path: Path, batches: list[tuple[int, int]], **overrides: Any) -> None:
    with EnsembleWriter(path, **{**KW, **overrides}) as w:
        for start, n in batches:
            w.append(**rows(start, n, overrides.get("dtype", "float64")))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_every_dataset_and_attribute(tmp_path: Path, dtype: str) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "ens.h5"
    rng = np.random.default_rng(0)
    sizes = {"samples": (12, L, L), "action": 12, "log_q": 12, "chi": 12, "corr": (12, L)}
    data = {k: rng.normal(size=s) for k, s in sizes.items()}
    with EnsembleWriter(path, **KW, replica=3, config_text="theory: phi4\nL: 4\n",
                        dtype=dtype, command="latticeflow sample cfg.yaml") as w:
        for sl in (slice(0, 5), slice(5, 12)):
            samples = torch.tensor(data["samples"][sl], requires_grad=True)  # torch input
            w.append(samples, data["action"][sl], log_q=torch.tensor(data["log_q"][sl]),
                     observables={"chi": data["chi"][sl], "corr": data["corr"][sl]})
        w.set_attrs(step_size=0.125, n_leapfrog=10)
        assert w.n_rows == 12

    with open_ensemble(path) as ens:
        assert ens.n_rows == len(ens) == 12
        assert sorted(ens.keys()) == ["action", "log_q", "log_weight", "observables/chi",
                                      "observables/corr", "samples"]
        assert ens["samples"].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(ens["samples"], data["samples"].astype(dtype))
        for name in ("action", "log_q"):
            assert ens[name].dtype == np.float64
            np.testing.assert_array_equal(ens[name], data[name])
        np.testing.assert_allclose(ens["log_weight"], -data["action"] - data["log_q"], rtol=1e-15)
        np.testing.assert_array_equal(ens["observables/chi"], data["chi"])
        np.testing.assert_array_equal(ens["observables/corr"], data["corr"])
        a = ens.attrs
        assert a["format_version"] == FORMAT_VERSION and a["n_rows"] == 12
        assert (a["theory"], a["kappa"], a["lam"]) == ("phi4", 0.3, 0.02)
        assert ens.theory == "phi4" and ens.couplings == {"kappa": 0.3, "lam": 0.02}
        assert ens.shape == a["shape"] == (L, L) and ens.field_shape == (L, L)
        assert (a["sampler"], a["seed"], a["replica"]) == ("hmc", 7, 3)
        assert a["config"] == "theory: phi4\nL: 4\n"
        assert a["command"] == "latticeflow sample cfg.yaml"
        assert (a["step_size"], a["n_leapfrog"]) == (0.125, 10)
        for key in ("latticeflow_version", "torch_version", "git_commit", "host", "created"):
            assert isinstance(a[key], str) and a[key]
    with h5py.File(path, "r") as f:
        for name in ("samples", "action", "log_q", "log_weight", "observables/corr"):
            assert f[name].chunks is not None and f[name].chunks[1:] == f[name].shape[1:]
            assert f[name].maxshape[0] is None


def test_markov_chain_datasets_and_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "mc.h5"
    write(path, [(0, 8)])
    with open_ensemble(path) as ens:
        assert sorted(ens.keys()) == ["accepted", "action", "chain", "mc_index", "samples"]
        expected = rows(0, 8)
        for name, dt in [("accepted", np.bool_), ("chain", np.int64), ("mc_index", np.int64)]:
            assert ens[name].dtype == dt
            np.testing.assert_array_equal(ens[name], expected[name])


def test_chunking(tmp_path: Path) -> None:
    write(tmp_path / "a.h5", [(0, 3)], chunk_rows=7)
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["samples"].chunks == (7, L, L) and f["action"].chunks == (7,)
    write(tmp_path / "b.h5", [(0, 300)])
    with h5py.File(tmp_path / "b.h5", "r") as f:
        for name in ("samples", "action"):
            ds = f[name]
            chunk_bytes = np.prod(ds.chunks) * ds.dtype.itemsize
            assert ds.chunks[0] >= 300 or chunk_bytes >= 64 * 1024  # batch or >= 64 KiB
            assert chunk_bytes <= 1024 * 1024


def test_append_resume(tmp_path: Path) -> None:
    path = tmp_path / "ens.h5"
    write(path, [(0, 5), (5, 5)])
    with EnsembleWriter(path, **{**KW, "seed": 8}, command="resume") as w:
        assert w.n_rows == 10
        w.append(**rows(10, 6))
        assert w.n_rows == 16
    with open_ensemble(path) as ens:
        assert ens.n_rows == 16
        expected = rows(0, 16)
        for name in expected:
            np.testing.assert_array_equal(ens[name], expected[name])
        assert ens.attrs["seed"] == 7  # the original provenance is kept
        assert ens.attrs["command"] != "resume"


def test_dataset_set_must_not_change(tmp_path: Path) -> None:
    path = tmp_path / "ens.h5"
    with EnsembleWriter(path, **KW) as w:
        batch = rows(0, 4)
        w.append(batch["samples"], batch["action"])
        with pytest.raises(ValueError, match="unexpected \\['log_q'"):
            w.append(batch["samples"], batch["action"], log_q=np.zeros(4))
        assert w.n_rows == 4
    with EnsembleWriter(path, **KW) as w:  # also across a reopen
        with pytest.raises(ValueError, match="unexpected \\['chain'\\]"):
            w.append(batch["samples"], batch["action"], chain=np.zeros(4, int))


def test_a_file_without_a_newer_observable_resumes_without_it(tmp_path: Path, capsys) -> None:
    path = tmp_path / "ens.h5"
    with EnsembleWriter(path, **KW) as w:
        batch = rows(0, 4)
        w.append(batch["samples"], batch["action"], observables={"chi": np.zeros(4)})
    with EnsembleWriter(path, **KW) as w:  # a newer version also measures "xi": the older file goes on without it
        w.append(batch["samples"], batch["action"], observables={"chi": np.ones(4), "xi": np.ones(4)})
        with pytest.raises(ValueError, match="missing \\['observables/chi'\\]"):
            w.append(batch["samples"], batch["action"], observables={"xi": np.ones(4)})
    assert "has no observables/xi" in capsys.readouterr().err
    with open_ensemble(path) as ens:
        assert ens.n_rows == 8 and "observables/xi" not in ens.keys()
        np.testing.assert_array_equal(ens["observables/chi"], [0, 0, 0, 0, 1, 1, 1, 1])
    assert verify_ensemble(path).ok


def test_bad_batches_name_the_array(tmp_path: Path) -> None:
    with EnsembleWriter(tmp_path / "ens.h5", **KW) as w:
        b = rows(0, 4)
        with pytest.raises(ValueError, match="'action' has 3 rows but 'samples' has 4"):
            w.append(b["samples"], b["action"][:3])
        with pytest.raises(ValueError, match="'observables/chi' has 5 rows"):
            w.append(b["samples"], b["action"], observables={"chi": np.zeros(5)})
        with pytest.raises(ValueError, match="field_shape"):
            w.append(b["samples"][:, :2], b["action"])
        with pytest.raises(ValueError, match="'chain' has dtype float64"):
            w.append(b["samples"], b["action"], chain=np.zeros(4))
        with pytest.raises(ValueError, match="reserved"):
            w.set_attrs(theory="o3")
        assert w.n_rows == 0
    with open_ensemble(tmp_path / "ens.h5") as ens:
        assert ens.keys() == [] and ens.n_rows == 0


MISMATCHES = [
    ("theory", {"theory": "o3"}, "phi4", "o3"),
    ("kappa", {"couplings": {"kappa": 0.31, "lam": 0.02}}, 0.3, 0.31),
    ("lam", {"couplings": {"kappa": 0.3, "lam": 0.02 * (1 + 1e-9)}}, 0.02, 0.02 * (1 + 1e-9)),
    ("couplings", {"couplings": {"kappa": 0.3}}, ["kappa", "lam"], ["kappa"]),
    ("shape", {"shape": (8, 4), "field_shape": (L, L)}, (L, L), (8, 4)),
    ("field_shape", {"field_shape": (2, L, L)}, (L, L), (2, L, L)),
    ("sampler", {"sampler": "flow"}, "hmc", "flow"),
    ("dtype", {"dtype": "float32"}, "float64", "float32"),
]


@pytest.mark.parametrize("attribute,overrides,file_value,requested", MISMATCHES,
                         ids=[m[0] for m in MISMATCHES])
def test_mismatch_refused_and_file_untouched(
    tmp_path: Path, attribute: str, overrides: dict[str, Any], file_value: Any, requested: Any
) -> None:
    path = tmp_path / "ens.h5"
    write(path, [(0, 5)])
    before = sha256(path)
    with pytest.raises(EnsembleMismatchError) as info:
        EnsembleWriter(path, **{**KW, **overrides})
    message = str(info.value)
    assert f"'{attribute}'" in message
    assert repr(file_value) in message and repr(requested) in message
    assert info.value.attribute == attribute
    assert isinstance(info.value, ValueError)
    assert sha256(path) == before


def test_couplings_compared_with_relative_tolerance(tmp_path: Path) -> None:
    path = tmp_path / "ens.h5"
    write(path, [(0, 5)])
    write(path, [(5, 5)], couplings={"kappa": 0.3 * (1 + 1e-14), "lam": 0.02})
    with open_ensemble(path) as ens:
        assert ens.n_rows == 10


def test_half_written_batch_is_ignored_then_truncated(tmp_path: Path) -> None:
    path = tmp_path / "ens.h5"
    write(path, [(0, 5), (5, 5)], chunk_rows=4)
    with EnsembleWriter(path, **KW) as w:
        w.set_attrs(step_size=0.25)
    with h5py.File(path, "a") as f:  # simulate a kill between resize/write and commit
        for name in ("samples", "action", "accepted", "chain", "mc_index"):
            f[name].resize(13, axis=0)
            f[name][10:] = 1
        assert f.attrs["n_rows"] == 10
    with open_ensemble(path) as ens:
        assert ens.n_rows == 10 and ens["samples"].shape == (10, L, L)
        assert sum(len(b) for b in ens.iter_batches("action", 4)) == 10
        np.testing.assert_array_equal(ens["action"], rows(0, 10)["action"])
    before = sha256(path)
    with EnsembleWriter(path, **KW) as w:
        assert w.n_rows == 10
    assert sha256(path) == before  # a writer that writes nothing leaves the file alone
    with EnsembleWriter(path, **KW) as w:
        w.set_attrs(step_size=0.25)  # the first write drops the half-written batch
    with h5py.File(path, "r") as f:  # rows dropped; layout and attributes kept
        assert all(f[name].shape[0] == 10 for name in ("samples", "action", "chain"))
        assert f["samples"].chunks == (4, L, L) and f["samples"].maxshape == (None, L, L)
        assert f["accepted"].dtype == np.bool_ and f["chain"].dtype == np.int64
        assert f.attrs["step_size"] == 0.25 and f.attrs["theory"] == "phi4"
        assert f.attrs["shape"].tolist() == [L, L]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.h5"]  # no temp file left
    write(path, [(10, 3)])
    with open_ensemble(path) as ens:
        expected = rows(0, 13)
        for name in expected:
            np.testing.assert_array_equal(ens[name], expected[name])


def test_iter_batches_streams_in_bounded_slices(tmp_path: Path) -> None:
    path = tmp_path / "ens.h5"
    write(path, [(0, 10), (10, 13)])
    with open_ensemble(path) as ens:
        batches = list(ens.iter_batches("samples", 5))
        assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
        np.testing.assert_array_equal(np.concatenate(batches), rows(0, 23)["samples"])
        assert [len(b) for b in ens.iter_batches("chain", 100)] == [23]
        with pytest.raises(ValueError, match="batch_rows must be >= 1, got 0"):
            next(ens.iter_batches("samples", 0))
        with pytest.raises(KeyError, match="log_q"):
            ens["log_q"]


def test_foreign_and_missing_files(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("samples", data=np.zeros((3, 2)), dtype="float64")
    before = sha256(foreign)
    with pytest.raises(ValueError, match="not a latticeflow ensemble: .*foreign.h5 "
                                         "\\(no format_version attribute\\)"):
        open_ensemble(foreign)
    with pytest.raises(ValueError, match="no format_version"):
        EnsembleWriter(foreign, **KW)
    assert sha256(foreign) == before
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        open_ensemble(text)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        open_ensemble(tmp_path / "missing.h5")


def test_check_compatible(tmp_path: Path) -> None:
    write(tmp_path / "a.h5", [(0, 3)])
    write(tmp_path / "b.h5", [(0, 4)], seed=8)
    write(tmp_path / "c.h5", [(0, 4)], couplings={"kappa": 0.25, "lam": 0.02})
    with open_ensemble(tmp_path / "a.h5") as a, open_ensemble(tmp_path / "b.h5") as b, \
            open_ensemble(tmp_path / "c.h5") as c:
        a.check_compatible(b)
        with pytest.raises(EnsembleMismatchError, match="'kappa'.*0.3.*0.25"):
            a.check_compatible(c)


def test_unfinished_flush_is_detected_and_repaired(tmp_path: Path) -> None:
    from latticeflow.io._repair import file_is_clean, superblock_eoa

    path = tmp_path / "ens.h5"
    write(path, [(0, 6)])
    size = path.stat().st_size
    assert superblock_eoa(path) == size and file_is_clean(path, [6], 6)
    with open(path, "ab") as fh:  # bytes written past the end of allocation by a killed flush
        fh.write(b"\xff" * 4096)
    assert not file_is_clean(path, [6], 6)
    with open_ensemble(path) as ens:  # readers only need the committed rows
        np.testing.assert_array_equal(ens["action"], rows(0, 6)["action"])
    write(path, [(6, 2)])
    assert superblock_eoa(path) == path.stat().st_size
    with open_ensemble(path) as ens:
        for name, values in rows(0, 8).items():
            np.testing.assert_array_equal(ens[name], values)


def test_set_attrs_in_place_or_by_atomic_rewrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import latticeflow.io._repair as repair_module

    path = tmp_path / "ens.h5"
    with EnsembleWriter(path, **KW) as w:
        w.append(**rows(0, 6))
        before, inode = sha256(path), path.stat().st_ino

        def killed(*args: object) -> None:
            raise KeyboardInterrupt  # dies before the rename

        monkeypatch.setattr(repair_module.os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            w.set_attrs(rng_state=np.arange(600, dtype=np.uint8))
        monkeypatch.undo()
        assert sha256(path) == before  # a new attribute never touches the live file
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.h5"]

        w.set_attrs(rng_state=np.arange(600, dtype=np.uint8), label="run A")
        assert path.stat().st_ino != inode  # added by rewrite + rename
        inode = path.stat().st_ino
        w.set_attrs(rng_state=np.arange(600, dtype=np.uint8)[::-1].copy())
        assert path.stat().st_ino == inode  # same shape and dtype: overwritten in place
        w.append(**rows(6, 2))
    with open_ensemble(path) as ens:
        assert ens.attrs["rng_state"][:2] == [599 % 256, 598 % 256] and ens.attrs["label"] == "run A"
        for name, values in rows(0, 8).items():
            np.testing.assert_array_equal(ens[name], values)
