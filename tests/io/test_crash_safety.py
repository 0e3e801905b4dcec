"""Crash safety of EnsembleWriter: SIGKILL a writing process and recover every flushed batch."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import latticeflow.io
from latticeflow.io import EnsembleWriter, open_ensemble

pytestmark = [
    pytest.mark.filterwarnings("error"),
    pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX SIGKILL"),
]

L, B = 8, 64  # lattice side, rows per batch
KW = dict(theory="phi4", couplings={"kappa": 0.3, "lam": 0.02}, shape=(L, L),
          field_shape=(L, L), sampler="hmc", seed=1)

CHILD = f"""
import sys
import numpy as np
from latticeflow.io import EnsembleWriter

L, B = {L}, {B}

def batch(i):
    r = np.arange(i * B, (i + 1) * B)
    samples = r[:, None, None] + np.arange(L * L).reshape(L, L) / 1000.0
    return dict(samples=samples, action=r * 0.5, accepted=r % 3 == 0, chain=r % 4,
                mc_index=r // 4, observables={{"m": r * 2.0}})

with EnsembleWriter(sys.argv[1], **{KW!r}) as w:
    for i in range(w.n_rows // B, 5000):  # bounded in case the kill never comes
        w.append(**batch(i))
        print(i, flush=True)
"""


def batch(i: int) -> dict:
    r = np.arange(i * B, (i + 1) * B)
    samples = r[:, None, None] + np.arange(L * L).reshape(L, L) / 1000.0
    return dict(samples=samples, action=r * 0.5, accepted=r % 3 == 0, chain=r % 4,
                mc_index=r // 4, observables={"m": r * 2.0})


def expected_rows(n: int) -> dict[str, np.ndarray]:
    parts = [batch(i) for i in range(n // B)]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "observables"}
    out["observables/m"] = np.concatenate([p["observables"]["m"] for p in parts])
    return out


def child_env() -> dict[str, str]:
    root = str(Path(latticeflow.io.__file__).resolve().parents[2])
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not old else root + os.pathsep + old}


def test_sigkill_keeps_every_flushed_batch_and_resume_continues(tmp_path: Path) -> None:
    path = tmp_path / "ens.h5"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env())
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    printed = 0
    try:
        deadline = time.monotonic() + 30
        while printed < 3:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                pytest.fail(f"writer exited early: {proc.stderr.read()}")  # type: ignore[union-attr]
            printed += 1
        os.kill(proc.pid, signal.SIGKILL)  # mid-run: the next batch is being written
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        reader.join(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    while (line := lines.get_nowait()) is not None:  # lines flushed before the kill landed
        printed += 1
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    assert printed >= 3

    with open_ensemble(path) as ens:
        n = ens.n_rows
        assert n >= printed * B and n % B == 0
        expected = expected_rows(n)
        assert sorted(ens.keys()) == sorted(expected)
        for name, values in expected.items():
            np.testing.assert_array_equal(ens[name], values, err_msg=name)

    with EnsembleWriter(path, **KW) as w:  # resume: continue after the last complete batch
        assert w.n_rows == n
        w.append(**batch(n // B))
        w.append(**batch(n // B + 1))
    with open_ensemble(path) as ens:
        assert ens.n_rows == n + 2 * B
        for name, values in expected_rows(n + 2 * B).items():
            np.testing.assert_array_equal(ens[name], values, err_msg=name)
