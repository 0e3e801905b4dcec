"""Tests of atomic checkpoints: round trip, overwrite, and crash while saving."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from latticeflow.io import load_checkpoint, save_checkpoint  # noqa: E402
from latticeflow.io import checkpoint as checkpoint_module  # noqa: E402


def make_state(step: int) -> dict:
    gen = torch.Generator().manual_seed(step)
    return {
        "step": step,
        "model": {"weight": torch.randn(3, 4, generator=gen), "bias": torch.zeros(4)},
        "rng": gen.get_state(),
        "history": [0.5 * step, 1.5],
    }


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    state = make_state(1)
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 1 and loaded["history"] == [0.5, 1.5]
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])
    assert torch.equal(loaded["rng"], state["rng"])
    assert loaded["model"]["weight"].device.type == "cpu"
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_overwrite_replaces_previous(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, make_state(1))
    save_checkpoint(str(path), make_state(2))
    loaded = load_checkpoint(str(path))
    assert loaded["step"] == 2
    assert torch.equal(loaded["model"]["weight"], make_state(2)["model"]["weight"])
    assert os.listdir(tmp_path) == ["ckpt.pt"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_crash_mid_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        error: BaseException) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, make_state(1))
    before = path.read_bytes()
    real_save = torch.save

    def crashing_save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        real_save(obj, f, *args, **kwargs)  # write a full payload, then die before the rename
        f.write(b"garbage")  # type: ignore[attr-defined]
        raise error

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(type(error)):
        save_checkpoint(path, make_state(2))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temp file left behind


def test_permissions_follow_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "ckpt.pt", make_state(0))
    finally:
        os.umask(old)
    if os.name == "posix":
        assert (tmp_path / "ckpt.pt").stat().st_mode & 0o777 == 0o644


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint directory does not exist"):
        save_checkpoint(tmp_path / "missing_dir" / "ckpt.pt", make_state(0))
    with pytest.raises(TypeError, match="must be a dict, got list"):
        save_checkpoint(tmp_path / "ckpt.pt", [1, 2])  # type: ignore[arg-type]
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, expected a dict"):
        load_checkpoint(tmp_path / "list.pt")
    assert checkpoint_module.__all__ == ["save_checkpoint", "load_checkpoint"]
