"""`latticeflow measure` on a full disk (a real tmpfs; needs root to mount, skipped otherwise): one line, exit 2,
the ensemble byte for byte unchanged and intact, no temporary file left beside it."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from actions import build_theory
from latticeflow.io import EnsembleWriter, verify_ensemble

from .test_tmpfs import disk  # noqa: F401 (fixture)


def test_measure_on_a_full_disk_is_one_line_and_leaves_the_ensemble_intact(disk):  # noqa: F811
    where = disk("3m")
    path = where / "e.h5"
    theory = build_theory("phi4", (8, 8), {"kappa": 0.2, "lam": 0.1})
    rng = np.random.default_rng(0)
    with EnsembleWriter(path, theory="phi4", couplings={"kappa": 0.2, "lam": 0.1}, shape=(8, 8), field_shape=(8, 8),
                        sampler="hmc", seed=0) as w:
        for b in range(3):  # ~1.9 MB: the rewrite that commits a measurement does not fit beside it
            x = torch.from_numpy(rng.normal(size=(1000, 8, 8)))
            i = np.arange(b * 1000, (b + 1) * 1000)
            w.append(x, theory.action(x), chain=i % 4, mc_index=i // 4, accepted=np.ones(1000, bool),
                     observables={"m": x.mean((1, 2))})
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    (where / "obs.py").write_text("def corner(phi):\n    return phi[:, 0, 0]\n")
    proc = subprocess.run([sys.executable, "-m", "latticeflow", "measure", str(path), "--observable", "obs:corner",
                           "--no-progress"], cwd=where, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "no space left on device" in lines[0] and "committed rows are intact" in lines[0], lines[0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before and verify_ensemble(path).ok
    assert not [p.name for p in where.iterdir() if p.name.endswith(".tmp")]
