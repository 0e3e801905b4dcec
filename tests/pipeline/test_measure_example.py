"""The README's worked example of `latticeflow measure`: Wilson loops of a U(1) ensemble measured afterwards, the
Creutz ratio by the Gamma method against the exact torus value (3σ, seed 5)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from actions.exact import u1_wilson_loop
from latticeflow.analysis import gamma_method_derived
from latticeflow.config import config_from_dict
from latticeflow.io import open_ensemble
from latticeflow.pipeline import analyze, sample
from latticeflow.pipeline.measure import measure

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "wilson_loops.py"


def test_creutz_ratio_of_measured_wilson_loops_matches_the_exact_torus_value(tmp_path):
    beta, shape = 2.0, (8, 8)
    settings = {"name": "u1", "seed": 5, "action": {"theory": "u1", "shape": list(shape), "beta": beta},
                "sampler": {"n_samples": 4096, "n_chains": 16, "n_thermalize": 100, "batch_size": 1024},
                "output": {"dir": str(tmp_path)}}
    cfg = config_from_dict(settings)
    sample(cfg, "", progress=False)
    path = tmp_path / "ensemble.h5"
    s = measure(path, f"{EXAMPLE}:wilson_loops", progress=False)
    assert s["name"] == "wilson_loops" and s["shape"] == [4]
    with open_ensemble(path) as ens:
        reps = ens.replicas("wilson_loops")
        w11 = ens["observables/wilson_loop_1x1"]
        w22 = ens["observables/wilson_loop_2x2"]
        values = ens["observables/wilson_loops"]
    assert np.allclose(values[:, 0], w11, atol=1e-12) and np.allclose(values[:, 3], w22, atol=1e-12)
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("wilson_loops_example", EXAMPLE)
    example = module_from_spec(spec)
    spec.loader.exec_module(example)
    chi = gamma_method_derived(example.creutz_ratio, [[r[:, k] for r in reps] for k in range(4)])
    v = shape[0] * shape[1]
    w = {a: u1_wilson_loop(beta, v, a) for a in (1, 2, 4)}
    exact = -math.log(w[4] * w[1] / (w[2] * w[2]))
    assert abs(chi.mean - exact) < 3 * chi.error, (chi, exact)
    rows = analyze(str(path), reference=None).extra["measured"]["wilson_loops"]
    assert rows["shape"] == [4] and abs(rows["mean"][1] - w[2]) < 4 * rows["error"][1]
    # more sampling would leave the measured observable short: refused before anything is written
    before = [(p.name, p.read_bytes()) for p in sorted(tmp_path.iterdir()) if p.is_file()]
    more = config_from_dict({**settings, "sampler": {**settings["sampler"], "n_samples": 8192}})
    with pytest.raises(ValueError, match="added by `latticeflow measure`"):
        sample(more, "", progress=False)
    assert [(p.name, p.read_bytes()) for p in sorted(tmp_path.iterdir()) if p.is_file()] == before
