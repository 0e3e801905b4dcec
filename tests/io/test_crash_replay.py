"""Crash consistency by replay: every state a kill -9 can leave behind during one append.

A killed process cannot reorder or undo the ``write`` calls it completed, so
the files a kill can leave are exactly "file before the append + a prefix of
the append's writes".  The writer's HDF5 file is routed through a logging
Python file object (h5py's ``fileobj`` driver issues the same writes, in the
same order, as the default driver), every prefix is rebuilt, and a separate
process (HDF5 may crash on a damaged file) checks that each one reads with
all committed rows intact and can be resumed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import latticeflow.io
import latticeflow.io.writer as writer_module
from latticeflow.io import EnsembleWriter

L, B = 8, 64
KW: dict[str, Any] = dict(theory="phi4", couplings={"kappa": 0.3}, shape=(L, L),
                          field_shape=(L, L), sampler="hmc", seed=0)

CHECKER = f"""
import sys
import numpy as np
from latticeflow.io import EnsembleWriter, open_ensemble

L, B, KW = {L}, {B}, {KW!r}

def batch(i):
    r = np.arange(i * B, (i + 1) * B)
    return dict(samples=np.broadcast_to(r[:, None, None] * 1.0, (B, L, L)), action=r * 0.5,
                chain=r % 4, observables={{"m": r * 2.0}})

k = int(sys.argv[1])
for path in sys.argv[2:]:
    with open_ensemble(path) as e:
        n = e.n_rows
        assert n in (k * B, (k + 1) * B), (path, n)
        if n:
            assert np.array_equal(e["action"], np.arange(n) * 0.5), path
            assert np.array_equal(e["samples"][:, 0, 0], np.arange(n)), path
            assert np.array_equal(e["observables/m"], np.arange(n) * 2.0), path
    with EnsembleWriter(path, **KW) as w:
        assert w.n_rows == n, (path, w.n_rows, n)
        w.append(**batch(n // B))
    with open_ensemble(path) as e:
        assert np.array_equal(e["action"], np.arange(n + B) * 0.5), path
        assert np.array_equal(e["chain"], np.arange(n + B) % 4), path
    print("ok", path, n, flush=True)
"""


def batch(i: int) -> dict[str, Any]:
    r = np.arange(i * B, (i + 1) * B)
    return dict(samples=np.broadcast_to(r[:, None, None] * 1.0, (B, L, L)), action=r * 0.5,
                chain=r % 4, observables={"m": r * 2.0})


class LoggingFile:
    """Pass-through binary file that records every write and truncate."""

    def __init__(self, path: str, mode: str, log: list[tuple[str, int, bytes]]) -> None:
        self._f = open(path, mode)  # noqa: SIM115 (closed via close())
        self._log = log

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def readinto(self, buf: Any) -> int | None:
        return self._f.readinto(buf)

    def write(self, data: Any) -> int:
        self._log.append(("w", self._f.tell(), bytes(data)))
        return self._f.write(data)

    def truncate(self, size: int | None = None) -> int:
        size = self._f.tell() if size is None else size
        self._log.append(("t", size, b""))
        return self._f.truncate(size)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def child_env() -> dict[str, str]:
    root = str(Path(latticeflow.io.__file__).resolve().parents[2])
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not old else root + os.pathsep + old}


@pytest.mark.parametrize("k", [0, 2, 3])
def test_every_kill_point_of_an_append_is_recoverable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    log: list[tuple[str, int, bytes]] = []
    handles: list[LoggingFile] = []

    def logged_file(path: str, mode: str, **kwargs: Any) -> h5py.File:
        handle = LoggingFile(path, "x+b" if mode == "x" else "r+b", log)
        handles.append(handle)
        return h5py.File(handle, "w" if mode == "x" else "r+", **kwargs)

    public = {n: getattr(h5py, n) for n in dir(h5py) if not n.startswith("__")}
    shim = types.SimpleNamespace(**public)
    shim.File = logged_file
    monkeypatch.setattr(writer_module, "h5py", shim)

    path = tmp_path / "live.h5"
    writer = EnsembleWriter(path, **KW)
    for i in range(k):
        writer.append(**batch(i))
    before = path.read_bytes()
    log.clear()
    writer.append(**batch(k))  # the append whose every kill point we replay
    writes = list(log)
    writer.close()
    for handle in handles:
        handle.close()
    monkeypatch.undo()
    assert len(writes) >= 5  # data, headers, index, superblock, n_rows

    prefixes = []
    for p in range(len(writes) + 1):
        state = bytearray(before)
        for kind, offset, data in writes[:p]:
            if kind == "t":
                del state[offset:]
                state.extend(b"\0" * (offset - len(state)))
            else:
                state.extend(b"\0" * max(0, offset + len(data) - len(state)))
                state[offset : offset + len(data)] = data
        prefix = tmp_path / f"prefix{p:03d}.h5"
        prefix.write_bytes(bytes(state))
        prefixes.append(str(prefix))

    result = subprocess.run([sys.executable, "-c", CHECKER, str(k), *prefixes],
                            capture_output=True, text=True, env=child_env(), timeout=120)
    checked = result.stdout.count("ok ")
    assert result.returncode == 0, (
        f"kill after write {checked} of {len(writes)} is not recoverable "
        f"(exit {result.returncode}):\n{result.stderr[-2000:]}"
    )
    assert checked == len(prefixes)
    # the last state is the committed append
    assert f"prefix{len(writes):03d}.h5 {(k + 1) * B}" in result.stdout
